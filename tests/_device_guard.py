"""A CPU-only guard against tensors made on the wrong device.

On a GPU, a tensor factory that names no device (``torch.zeros(())``) makes a CPU tensor,
and the first op that mixes it with the model's CUDA tensors raises "Expected all tensors
to be on the same device". On a CPU the same code runs, so CI never sees it. This guard
makes the CPU behave like a second device for exactly those calls: inside
``StrayDeviceGuard``, a factory called from this project's packages (``model``, ``tuner``,
``storage``) without ``device=`` makes a *meta* tensor instead. Mixed with the real CPU
tensors of the run it fails as CUDA would ("Tensor on device meta is not on the expected
device cpu"), and where it does not fail (``cpu_tensor += meta_tensor`` is silently a
no-op) the guard still lists the call site in ``redirected``, which the tests require to be
empty.

What it exempts, and why:

- calls made by torch itself (optimizers, GradScaler, ``nn`` layers): torch places its own
  tensors (``p.device``, ``grad.device``) and is tested on GPUs by its maintainers;
- calls inside an ``nn.Module``'s ``__init__``: parameters and buffers move with the
  module's ``.to(device)``, which every engine calls after building the model;
- factories given a tensor argument (``torch.as_tensor(t)``): they keep ``t``'s device.

What it cannot see: branches that run only on a GPU or across ranks (``device.type ==
"cuda"``, ``world > 1``), ``torch.from_numpy`` (always CPU, no ``device=``), tensors moved
to the CPU on purpose and then mixed with device tensors, and code a test does not run.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from types import FrameType

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = tuple(f"{ROOT / name}{os.sep}" for name in ("model", "tuner", "storage"))
_HERE = str(Path(__file__).resolve())

# torch's tensor factories that take a ``device=`` (the public ones this project could call).
FACTORIES = frozenset({
    torch.arange, torch.as_tensor, torch.asarray, torch.empty, torch.empty_strided, torch.eye,
    torch.full, torch.linspace, torch.logspace, torch.ones, torch.rand, torch.randint,
    torch.randn, torch.randperm, torch.scalar_tensor, torch.tensor, torch.zeros,
})


def _has_tensor(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))


def _caller() -> FrameType | None:
    """The innermost frame outside this file: the code that called the factory (every
    factory in FACTORIES is a builtin, so no torch frame sits between the two)."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename == _HERE:
        frame = frame.f_back
    return frame


class StrayDeviceGuard(TorchFunctionMode):
    """Within the ``with`` block, device-less factories in the project's code make meta
    tensors; ``redirected`` lists each call site once, as ``path:line in function``."""

    def __init__(self) -> None:
        super().__init__()
        self.redirected: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in FACTORIES and kwargs.get("device") is None and not _has_tensor(args, kwargs):
            frame = _caller()
            if frame is not None and frame.f_code.co_filename.startswith(_PACKAGES) and not (
                    frame.f_code.co_name == "__init__"
                    and isinstance(frame.f_locals.get("self"), torch.nn.Module)):
                where = (f"{Path(frame.f_code.co_filename).relative_to(ROOT)}:{frame.f_lineno}"
                         f" in {frame.f_code.co_name}")
                if where not in self.redirected:
                    self.redirected.append(where)
                kwargs["device"] = "meta"
        return func(*args, **kwargs)

    def __exit__(self, exc_type, exc, traceback):
        # A meta tensor can fail far from where it was made: name the factories on the error.
        if exc is not None and self.redirected:
            exc.add_note("tensor factories without a device (sent to meta by the guard): "
                         + ", ".join(self.redirected))
        return super().__exit__(exc_type, exc, traceback)
