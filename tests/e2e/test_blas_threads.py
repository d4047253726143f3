"""run_study.py gives OpenBLAS one thread before numpy loads it (its pool competed with torch's
OpenMP threads: phase 1 of the default run 54-56 s against 44.8 s on 2 cores), and keeps a
value the user set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _runs import ROOT

_PROBE = """
import json, run_study
from threadpoolctl import threadpool_info
print(json.dumps([i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]))
"""


def _openblas_threads(env: dict) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_run_study_loads_openblas_with_one_thread_unless_the_user_set_a_count():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "2"  # not what OpenBLAS follows once its own variable is set
    assert _openblas_threads(env) == [1]  # numpy's OpenBLAS, loaded by the imports
    assert _openblas_threads({**env, "OPENBLAS_NUM_THREADS": "2"}) == [2]
