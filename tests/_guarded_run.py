"""``python tests/_guarded_run.py <run_study.py arguments>``: the whole run under
``StrayDeviceGuard``; exits 3 and lists the call sites when any factory was redirected."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]

from _device_guard import StrayDeviceGuard  # noqa: E402

import run_study  # noqa: E402

if __name__ == "__main__":
    with StrayDeviceGuard() as guard:
        code = run_study.main(sys.argv[1:])
    if guard.redirected:
        print("tensor factories without a device:", *guard.redirected, sep="\n  ", file=sys.stderr)
        sys.exit(3)
    sys.exit(code)
