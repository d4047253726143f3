"""How often a torchrun follower's exit aborts after DistributedDataParallel, with and
without ``tuner.distributed.exit_rank``.

Each job is two gloo ranks: both wrap a small linear layer in DDP, take three steps,
delete the wrapper and destroy the process group; rank 1 then leaves (a plain return
through the interpreter's teardown, or ``exit_rank``) while rank 0 stays up for
``--linger`` seconds, as rank 0 of a study goes on to phases 3 and 4. The two kinds of
exit alternate, job by job, in one run. A job counts as aborted when a rank dies of a
signal (torchrun's "terminate called without an active exception", SIGABRT).

    python bench/ddp_exit.py --jobs 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(exit_kind: str, linger: float) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tuner.distributed import exit_rank

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(torch.nn.Linear(4, 2))
    for _ in range(3):
        model(torch.randn(3, 4)).sum().backward()  # (3, 4) -> (3, 2); gradients all-reduced
    del model
    dist.destroy_process_group()
    if rank == 0:
        time.sleep(linger)
    elif exit_kind == "exit_rank":
        exit_rank(0)


def _job(exit_kind: str, linger: float) -> tuple[int, bool]:
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", __file__, "--worker", exit_kind,
                          "--linger", str(linger)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out.returncode, "terminate called" in out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per kind of exit")
    parser.add_argument("--linger", type=float, default=0.5)
    parser.add_argument("--worker", choices=["teardown", "exit_rank"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.linger)
        return
    kinds = ["teardown", "exit_rank"]
    failed = {k: 0 for k in kinds}
    aborted = {k: 0 for k in kinds}
    for i in range(args.jobs):
        for kind in kinds:
            rc, abort = _job(kind, args.linger)
            failed[kind] += rc != 0
            aborted[kind] += abort
        print(f"\r{i + 1}/{args.jobs} job pairs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"two gloo ranks, DDP, rank 1 leaves first ({args.jobs} jobs per kind, alternating)")
    for kind in kinds:
        print(f"  {kind:13s} failed jobs {failed[kind]:3d}/{args.jobs}   "
              f"'terminate called' {aborted[kind]:3d}/{args.jobs}")


if __name__ == "__main__":
    main()
