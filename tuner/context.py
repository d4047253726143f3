"""What the phases of one run share, passed as one value instead of a dozen arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from model.data import EncodedData
from model.groups import GroupSpec
from model.tasks import TaskSpec
from storage import Session

from ._workers import Heartbeat
from .distributed import Launch


@dataclass(frozen=True)
class RunContext:
    """The tasks, the encoded splits, the model factory (the same initial weights on every
    call), the device, the session folder, and how the run treats other workers."""

    tasks: tuple[TaskSpec, ...]
    build: Callable[[], tuple[nn.Module, GroupSpec]]
    train: EncodedData
    val: EncodedData
    session: Session
    device: str = "cpu"
    test: EncodedData | None = None  # read in phase 4 only
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    progress: bool = True
    settings: dict[str, Any] | None = None  # what the studies must have been run with
    launch: Launch | None = None  # a torchrun job: the long run trains on all its ranks
    planned_memory_bytes: int | None = None  # the memory plan's total, checked on CUDA

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a run needs at least one task, got none")


__all__ = ["RunContext"]
