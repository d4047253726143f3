"""A real server stop during the long run, repeated: does every run end with exit 0?

    python bench/outage_repeat.py --repeats 4 --outage 25 --patience 120   # as root, Debian

On a PostgreSQL cluster of its own (``bench/_pg_cluster.py``), the smoke study runs once
unbroken, then ``--repeats`` times with ``pg_ctlcluster stop`` as soon as the long run has
trained its second epoch (whatever storage call is in flight then; ``--point`` names another
moment) and ``start`` after
``--outage`` seconds. Each run is compared with the unbroken one (final_results.json less
its timestamp, the final model's sha256). Prints one row per run: exit code, the outage lines
the worker logged, its restarts after a lost call, and whether it ended identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _pg_cluster  # noqa: E402

STUDY = "c"
SMOKE = ["--smoke", "--no-progress", "--study", STUDY, "--seed", "3", "--epochs", "6",
         "--patience", "1", "--min-checkpoints", "2", "--min-delta", "100"]
POINT = "long:epoch=2#1"  # the long run, its second epoch trained


def command(backup: Path, url: str, patience: float) -> list[str]:
    return [sys.executable, str(ROOT / "run_study.py"), *SMOKE, "--backup-dir", str(backup),
            "--storage", url, "--storage-patience", str(patience)]


def result(backup: Path) -> dict:
    session = backup / STUDY
    results = json.loads((session / "final_results.json").read_text())
    del results["timestamp"]
    model = (session / "final" / "optimal_crossover_model.safetensors").read_bytes()
    return {"results": results, "model": hashlib.sha256(model).hexdigest()}


def stopped_run(cluster, backup: Path, outage_s: float, patience: float, point: str
                ) -> tuple[int, str]:
    trace = backup.parent / f"{backup.name}-trace.txt"
    env = {**os.environ, "REDHEART_CRASH_TRACE": str(trace), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(backup, cluster.fresh_db(), patience), env=env, text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None and point not in (trace.read_text().split() if trace.exists()
                                                else []):
        time.sleep(0.02)
    cluster.stop()
    time.sleep(outage_s)
    cluster.start()
    proc.wait(timeout=900)
    reader.join(timeout=60)
    return proc.returncode, "".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--outage", type=float, default=25.0, help="seconds the server is stopped")
    p.add_argument("--patience", type=float, default=120.0, help="--storage-patience")
    p.add_argument("--point", default=POINT,
                   help="the crash point (storage.faults) at which the server stops; "
                        "crossover:trial:0#1 stops it just before a crossover trial is created")
    args = p.parse_args(argv)
    why = _pg_cluster.available()
    if why is not None:
        print(f"bench/outage_repeat.py {why}", file=sys.stderr)
        return 2
    failed = 0
    with _pg_cluster.cluster("repeat") as cluster, tempfile.TemporaryDirectory() as tmp:
        unbroken = Path(tmp) / "unbroken"
        out = subprocess.run(command(unbroken, cluster.fresh_db(), args.patience), text=True,
                             capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        reference = result(unbroken)
        print(f"server stopped for {args.outage:g} s at {args.point}, --storage-patience "
              f"{args.patience:g}\n")
        print("| run | exit | 'connection is lost' lines | restarts after a lost call | "
              "identical to the unbroken run | seconds |")
        print("|---:|---:|---:|---:|---|---:|")
        for i in range(1, args.repeats + 1):
            backup = Path(tmp) / f"run{i}"
            start = time.monotonic()
            code, stderr = stopped_run(cluster, backup, args.outage, args.patience, args.point)
            same = code == 0 and result(backup) == reference
            failed += not same
            print(f"| {i} | {code} | {stderr.count('the database connection is lost')} | "
                  f"{stderr.count('this worker runs its command again')} | "
                  f"{'yes' if same else 'NO'} | {time.monotonic() - start:.0f} |", flush=True)
            if not same:
                print(stderr[-2000:], file=sys.stderr)
    print(f"\n{args.repeats - failed} of {args.repeats} runs ended with exit 0 and the unbroken "
          "result")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
