"""Named crash points, so the crash-matrix test can SIGKILL a run at exact places.

Off (one dict lookup) unless an environment variable asks for it:

- ``REDHEART_CRASH_TRACE=<file>``: append every point reached, one ``label#n`` per line
  (``n``: the n-th time this process reached ``label``), so a test can pick points from
  an unbroken run;
- ``REDHEART_CRASH_AT=<label#n>``: SIGKILL this process when it reaches that point (in a
  torchrun job only in its first attempt, so that a job restarted by ``--max-restarts``
  runs on past the point, as it would after a one-off crash);
- ``REDHEART_STALL_AT=<label#n>=<seconds>``: sleep that long there (an epoch that takes
  longer than other workers' patience), with every other thread running on; several
  points are separated by ``;``.

SIGKILL, not an exception: nothing is flushed, closed or cleaned up, as in a power cut
or the OOM killer. Points sit where a crash hurts most: half-way through writing a file,
between an epoch's training and its report, inside a crossover trial.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

TRACE_ENV = "REDHEART_CRASH_TRACE"
CRASH_ENV = "REDHEART_CRASH_AT"
STALL_ENV = "REDHEART_STALL_AT"

_counts: Counter[str] = Counter()


def crash_point(label: str) -> None:
    trace, target, stall = (os.environ.get(e) for e in (TRACE_ENV, CRASH_ENV, STALL_ENV))
    if not trace and not target and not stall:
        return
    _counts[label] += 1
    key = f"{label}#{_counts[label]}"
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(key + "\n")
    if key == target and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    for point in (stall or "").split(";"):
        if point and point.rpartition("=")[0] == key:
            time.sleep(float(point.rpartition("=")[2]))


__all__ = ["CRASH_ENV", "STALL_ENV", "TRACE_ENV", "crash_point"]
