"""The long run on several processes: ``torchrun --nproc-per-node N run_study.py ...``.

torchrun starts N copies of run_study.py. Rank 0 runs the pipeline as a single process
would. The other ranks ("followers") never sit in a collective outside the long run:
they poll torchrun's key-value store (the agent's TCPStore) until rank 0 announces the
long run, and only then does every rank join a process group (gloo on CPU, NCCL on CUDA)
that lives for phase 2 alone. In it, rank 0 sends the train split and its engine state
(fresh, or restored from the resume state) as tensors plus a JSON header (nothing is
pickled), each rank trains on its share of every global batch (``model.training``), and
rank 0 alone evaluates, reports to Optuna and writes checkpoints, resume state and
evidence. Followers leave when the long run ends or rank 0 says it is done.

A SIGKILL of the job kills every rank (torchrun's agent); rerunning the same torchrun
command resumes: rank 0 continues the long run from its resume state and the followers
receive that state, so no rank needs the session folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from model.data import EncodedData
from model.tasks import TaskSpec
from model.training import Engine

from ._workers import POLL_S

logger = logging.getLogger(__name__)

# A rank waits this long in a collective of the long run (rank 0 evaluates and writes a
# checkpoint between epochs while the others wait in the next one).
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun job (from the environment torchrun sets)."""

    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int
    run_id: str
    restart: int  # torchrun restarts a failed job as attempt 1, 2, ...

    def __post_init__(self) -> None:
        if self.world < 2:
            raise ValueError(f"a distributed launch needs >= 2 processes, got {self.world!r}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, {self.world}), got {self.rank!r}")

    def key(self, name: str) -> str:
        """A store key of this job attempt (keys of an earlier attempt are not read)."""
        return f"redheart/{self.run_id}/{self.restart}/{name}"


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process belongs to; None for a plain single process
    (no WORLD_SIZE, or WORLD_SIZE 1). Raises ValueError for a multi-process launch
    that is not torchrun's (no agent store to wait on)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if "TORCHELASTIC_RUN_ID" not in env:
        raise ValueError(f"WORLD_SIZE={world} without torchrun: start several processes with "
                         "torchrun --nproc-per-node N run_study.py ...")
    return Launch(rank=int(env["RANK"]), world=world, local_rank=int(env.get("LOCAL_RANK", "0")),
                  master_addr=env["MASTER_ADDR"], master_port=int(env["MASTER_PORT"]),
                  run_id=env["TORCHELASTIC_RUN_ID"],
                  restart=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")))


def rank_device(device: str, launch: Launch | None) -> str:
    """Each rank's device: ``cuda`` becomes ``cuda:<local rank>``."""
    if launch is not None and device == "cuda":
        return f"cuda:{launch.local_rank}"
    return device


def job_store(launch: Launch) -> dist.TCPStore:
    """A client of torchrun's key-value store (its agent serves it at MASTER_ADDR:PORT)."""
    return dist.TCPStore(launch.master_addr, launch.master_port, is_master=False,
                         timeout=timedelta(seconds=300))


GO, DONE = "long_run", "done"


def announce(launch: Launch, name: str, payload: dict) -> None:
    """Rank 0: tell the followers ``name`` (GO with the long run's LR, or DONE)."""
    job_store(launch).set(launch.key(name), json.dumps(payload))


def wait_for_long_run(launch: Launch) -> dict | None:
    """Follower: poll the store (no collective, so no timeout) until rank 0 starts the
    long run (its announcement) or is done without one (None)."""
    store = job_store(launch)
    go, done = launch.key(GO), launch.key(DONE)
    while True:
        if store.check([go]):
            return json.loads(store.get(go))
        if store.check([done]):
            return None
        time.sleep(POLL_S)


@contextmanager
def process_group(launch: Launch, device: str) -> Iterator[None]:
    """The phase-2 process group: gloo on CPU, NCCL on CUDA; destroyed on the way out."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # A store of this job attempt's own: the agent's store outlives a restart
    # (--max-restarts), and with the default one a restarted rank can read the address an
    # earlier attempt's rank published and fail to connect ("Connection refused").
    store = dist.PrefixStore(launch.key("process_group"), job_store(launch))
    dist.init_process_group(backend, store=store, rank=launch.rank, world_size=launch.world,
                            timeout=COLLECTIVE_TIMEOUT)
    logger.info("rank %d of %d joined the long run's process group (%s)", launch.rank,
                launch.world, backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """A torchrun rank's exit once its work is done: logs and streams flushed, then
    ``os._exit`` without the interpreter's teardown.

    DistributedDataParallel keeps its process group alive past
    ``destroy_process_group`` (torch 2.13: a gloo group's worker and TCP-loop threads
    are still running after the wrapper is deleted and collected), and a process that
    tears down while the other end of those connections is still up, or going away,
    now and then aborts in C++ ("terminate called without an active exception",
    SIGABRT), which torchrun reports as a failed job. Followers leave this way as soon
    as the long run is done; rank 0 after its summary, when every write of the session
    (atomic renames) and every storage call (committed) is behind it: nothing it holds
    needs the teardown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _comm_device() -> torch.device:
    return (torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl" else torch.device("cpu"))


def _broadcast_json(payload: object | None) -> object:
    """Rank 0's JSON-able ``payload`` on every rank, as bytes (never pickled)."""
    where = _comm_device()
    if dist.get_rank() == 0:
        data = torch.tensor(list(json.dumps(payload).encode()), dtype=torch.uint8, device=where)
        size = torch.tensor([data.numel()], dtype=torch.long, device=where)
    else:
        size = torch.zeros(1, dtype=torch.long, device=where)
    dist.broadcast(size, 0)
    if dist.get_rank() != 0:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=where)
    dist.broadcast(data, 0)
    return json.loads(bytes(data.cpu().tolist()).decode())


def _broadcast_tensors(tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's named tensors on every rank (CPU): a JSON header of names, shapes and
    dtypes, then one broadcast per tensor."""
    header = None
    if dist.get_rank() == 0:
        header = [[k, list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in tensors.items()]
    header = _broadcast_json(header)
    where, out = _comm_device(), {}
    for name, shape, dtype in header:
        if dist.get_rank() == 0:
            t = tensors[name].detach().to(where).contiguous()
        else:
            t = torch.empty(shape, dtype=getattr(torch, dtype), device=where)
        dist.broadcast(t, 0)
        out[name] = t.cpu()
    return out


def share_split(data: EncodedData | None) -> EncodedData:
    """Rank 0's encoded split on every rank (followers pass None)."""
    named = None
    if data is not None:
        named = {"ids": data.ids, "mask": data.mask.to(torch.uint8),
                 **{f"target.{k}": v for k, v in data.targets.items()}}
    got = _broadcast_tensors(named)
    return EncodedData(got["ids"], got["mask"].bool(),
                       {k.removeprefix("target."): v for k, v in got.items()
                        if k.startswith("target.")})


def share_engine(engine: Engine, start_epoch: int | None) -> int:
    """Rank 0's engine state (weights, optimizer, scheduler, EMA, RNG) loaded into every
    rank's engine; returns the epoch to start from (rank 0 passes it, followers None)."""
    plain, tensors = None, None
    if dist.get_rank() == 0:
        tensors, plain = engine.state_dict()
        plain = {"engine": plain, "start": start_epoch}
    plain = _broadcast_json(plain)
    tensors = _broadcast_tensors(tensors)
    if dist.get_rank() != 0:
        engine.load_state_dict(tensors, plain["engine"])
    return int(plain["start"])


def share_go(go: bool | None) -> bool:
    """Rank 0's word before each long-run epoch (True: train it; False: the run ended),
    received by every follower (which pass None)."""
    flag = torch.tensor([int(bool(go)) if dist.get_rank() == 0 else 0], device=_comm_device())
    dist.broadcast(flag, 0)
    return bool(flag.item())


def check_tasks(tasks: Sequence[TaskSpec]) -> None:
    """Every rank must have read the same tasks (the same data and label fields)."""
    mine = [[t.name, t.kind, t.num_outputs] for t in tasks]
    theirs = _broadcast_json(mine if dist.get_rank() == 0 else None)
    if theirs != mine:
        raise ValueError(f"rank {dist.get_rank()} read tasks {mine} but rank 0 read {theirs}: "
                         "every rank must be given the same --data-path and --label-fields")


__all__ = ["DONE", "GO", "Launch", "announce", "check_tasks", "job_store", "launch_from_env",
           "process_group", "rank_device", "share_engine", "share_go", "share_split", "wait_for_long_run"]
