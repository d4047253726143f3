"""Modular checkpoints and the rolling resume state, in safetensors (never pickle).

checkpoints/epoch_002/<group>.safetensors   one file per module group (params + buffers)
checkpoints/epoch_002/ema.safetensors       the EMA weights (last checkpoint only)
checkpoints/epoch_002/manifest.json         epoch, metrics, sha256 and bytes per file (last)
checkpoints/resume/state_epoch_XXX.safetensors + state.json   what resuming needs

Every file is written to a temp file, fsynced and renamed into place; a manifest
or pointer is written last, so a crash leaves the previous state intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from model.groups import GroupSpec

from .session import atomic_write_bytes, write_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EMA_FILE = "ema.safetensors"


class CheckpointError(ValueError):
    """A checkpoint or resume file that is missing, cut short or altered."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no storage: what safetensors can store. A
    tensor is copied only when it must be (another device, a view, a storage already
    taken): serialization reads them at once, and a copy of every tensor cost a quarter
    of a second per 160 MB resume state."""
    out, seen = {}, set()
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if (storage.data_ptr(), storage.nbytes()) in seen or t.nbytes != storage.nbytes():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[k] = t
    return out


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    data = st_save(_tensors(tensors))
    atomic_write_bytes(path, data)
    return {"sha256": sha256_bytes(data), "bytes": len(data)}


def checkpoint_dir(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:03d}"


def save_checkpoint(
    root: Path,
    epoch: int,
    model: nn.Module,
    spec: GroupSpec,
    metrics: Mapping[str, Any],
    ema_state: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Write one modular checkpoint; returns its manifest. ``dtype`` (bf16 or fp16)
    stores floating-point tensors at that width (``load_tensors(..., upcast=True)`` reads
    them back as float32)."""
    folder = checkpoint_dir(root, epoch)
    state = _narrow(model.state_dict(), dtype)
    files: dict[str, Any] = {}
    for group, names in spec.partition(model).items():
        files[f"{group}.safetensors"] = {
            "group": group, **_write_tensors(folder / f"{group}.safetensors",
                                             {k: state[k] for k in names})}
    if ema_state is not None:
        files[EMA_FILE] = {"group": "ema",
                           **_write_tensors(folder / EMA_FILE, _narrow(ema_state, dtype))}
    manifest = {"epoch": epoch, "metrics": dict(metrics), "files": files,
                "dtype": str(dtype or next((v.dtype for v in state.values()
                                            if v.is_floating_point()), torch.float32)
                             ).removeprefix("torch.")}
    write_json(folder / MANIFEST, manifest)
    return manifest


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({type(e).__name__})") from None


def _check_file(folder: Path, name: str, info: Mapping[str, Any]) -> None:
    f = folder / name
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (listed in the manifest)")
    if f.stat().st_size != info["bytes"]:
        raise CheckpointError(f"{f}: {f.stat().st_size} bytes, the manifest says {info['bytes']}")
    if sha256_file(f) != info["sha256"]:
        raise CheckpointError(f"{f}: sha256 differs from the manifest")


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """The manifest, after checking every file's size and sha256; CheckpointError if not."""
    manifest = _read_manifest(folder)
    for name, info in manifest.get("files", {}).items():
        _check_file(folder, name, info)
    return manifest


def verify_file(folder: Path, name: str) -> Path:
    """One file of a checkpoint, checked against its manifest (size and sha256)."""
    info = _read_manifest(folder).get("files", {}).get(name)
    if info is None:
        raise CheckpointError(f"{folder / name}: not listed in {folder / MANIFEST}")
    _check_file(folder, name, info)
    return folder / name


def list_checkpoints(root: Path) -> list[int]:
    """Epochs whose checkpoint folder has a manifest (not yet verified), ascending."""
    out = []
    for d in sorted(root.glob("epoch_*")):
        if (d / MANIFEST).is_file() and d.name[6:].isdigit():
            out.append(int(d.name[6:]))
    return out


def load_tensors(path: Path, keys: list[str] | None = None,
                 upcast: bool = False) -> dict[str, torch.Tensor]:
    """Read tensors lazily with safe_open: only ``keys`` (default all) are read;
    ``upcast``: 16-bit floating tensors (a ``dtype`` checkpoint) come back as float32."""
    with safe_open(str(path), framework="pt") as fh:
        out = {k: fh.get_tensor(k) for k in (keys if keys is not None else fh.keys())}
    if upcast:
        out = {k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v
               for k, v in out.items()}
    return out


def _narrow(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return dict(state)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


# ----------------------------------------------------------------------------- resume state

@dataclass
class ResumeState:
    epoch: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


RESUME_KEEP = 2  # the newest state and the one before it, to fall back to


def save_resume(folder: Path, epoch: int, tensors: Mapping[str, torch.Tensor],
                meta: Mapping[str, Any]) -> None:
    """Everything needed to continue after ``epoch`` (an engine's ``state_dict()``: named
    tensors plus plain data, and the caller's extra meta) as ``state_epoch_XXX.safetensors``
    plus its ``.json`` (sha256, bytes, the plain data). The newest two states are kept, so
    a damaged newest one falls back to the one before; ``state.json`` (a copy of the newest
    meta) is written last."""
    name = f"state_epoch_{epoch:03d}.safetensors"
    info = _write_tensors(folder / name, dict(tensors))
    full = {"epoch": epoch, "file": name, **info, **meta}
    write_json(folder / name.replace(".safetensors", ".json"), full)
    write_json(folder / "state.json", full)
    for old in _state_epochs(folder)[RESUME_KEEP:]:
        for suffix in (".safetensors", ".json"):
            (folder / f"state_epoch_{old:03d}{suffix}").unlink(missing_ok=True)


def _state_epochs(folder: Path) -> list[int]:
    """Epochs that have a resume state file or meta, newest first."""
    epochs = {int(p.name[12:15]) for p in folder.glob("state_epoch_[0-9][0-9][0-9].*")}
    return sorted(epochs, reverse=True)


def _read_state(folder: Path, meta_path: Path) -> ResumeState:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        path = folder / meta["file"]
        data = path.read_bytes()
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: resume state unreadable ({type(e).__name__})") from None
    if len(data) != meta["bytes"]:
        raise CheckpointError(f"{path}: {len(data)} bytes, {meta_path.name} says {meta['bytes']}")
    if sha256_bytes(data) != meta["sha256"]:
        raise CheckpointError(f"{path}: sha256 differs from {meta_path.name}")
    try:
        tensors = st_load(data)
    except SafetensorError as e:  # e.g. a pickle where a state belongs: refused, never run
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    return ResumeState(meta["epoch"], tensors, meta)


def read_resume(folder: Path) -> ResumeState | None:
    """The newest intact resume state, or None when there is none.

    A damaged newest state (cut short, altered, its meta unreadable) is named in the log
    and the one before it is used; CheckpointError when states exist but none is intact.
    """
    metas = [folder / f"state_epoch_{e:03d}.json" for e in _state_epochs(folder)]
    if not metas and (folder / "state.json").is_file():
        metas = [folder / "state.json"]  # written by a version that kept one state
    if not metas:
        return None
    errors = []
    for meta_path in metas:
        try:
            state = _read_state(folder, meta_path)
        except CheckpointError as e:
            logger.warning("resume state damaged, skipped: %s", e)
            errors.append(str(e))
            continue
        if errors:
            logger.warning("resuming from the newest intact state, epoch %d", state.epoch)
        return state
    raise CheckpointError("no intact resume state: " + "; ".join(errors))
