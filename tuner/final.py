"""The honest test table and the final model.

Every candidate is chosen on val; the test split is read only here, to report. The
final model is the candidate with the lowest val loss, written as one safetensors
file with its recipe; loading it into a fresh model reproduces the reported metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save
from torch import nn

from model.tasks import TaskSpec
from model.training import EncodedData, evaluate
from storage import Session, atomic_write_bytes, json_safe
from storage.checkpoints import EMA_FILE, checkpoint_dir, load_tensors, verify_file

from .crossover import assemble_state

logger = logging.getLogger(__name__)

FINAL_MODEL = "final/optimal_crossover_model.safetensors"


def _row(name: str, how: dict, v: dict, t: dict, primary: str) -> dict[str, Any]:
    return {
        "candidate": name, **how,
        "val_loss": v["loss"], "test_loss": t["loss"],
        "val_acc": v["acc"], "test_acc": t["acc"],
        "val_macro_f1": v["task_metrics"][primary].get("macro_f1"),
        "test_macro_f1": t["task_metrics"][primary].get("macro_f1"),
        "val_task_metrics": v["task_metrics"], "test_task_metrics": t["task_metrics"],
    }


def candidate_states(root: Path, spec: Any, best_single: int, last: int,
                     sweet: Mapping[str, int], optimized: Mapping[str, int]) -> dict[str, tuple]:
    """name -> (how it was made, state dict)."""
    out = {
        "best_single_checkpoint": ({"recipe": {g: best_single for g in spec.groups}},
                                   assemble_state(root, {g: best_single for g in spec.groups}, spec)),
        "last_epoch": ({"recipe": {g: last for g in spec.groups}},
                       assemble_state(root, {g: last for g in spec.groups}, spec)),
        "sweet_spot_crossover": ({"recipe": dict(sweet)}, assemble_state(root, sweet, spec)),
        "optimized_crossover": ({"recipe": dict(optimized)}, assemble_state(root, optimized, spec)),
    }
    ema = checkpoint_dir(root, last) / EMA_FILE
    if ema.is_file():
        out["ema"] = ({"ema_of_epoch": last}, load_tensors(verify_file(ema.parent, ema.name)))
    return out


def build_test_table(model: nn.Module, candidates: Mapping[str, tuple], val: EncodedData,
               test: EncodedData, tasks: Sequence[TaskSpec], device: str = "cpu") -> list[dict]:
    primary = tasks[0].name
    rows = []
    for name, (how, state) in candidates.items():
        model.load_state_dict(state, strict=True)
        v = evaluate(model, val, tasks, device=device)
        t = evaluate(model, test, tasks, device=device) if len(test) else v | {"loss": None,
                                                                                 "acc": None}
        rows.append(json_safe(_row(name, how, v, t, primary)))
    return rows


def write_final_model(session: Session, table: Sequence[dict],
                      candidates: Mapping[str, tuple]) -> dict[str, Any]:
    """The lowest-val-loss candidate as final/optimal_crossover_model.safetensors + recipe.json."""
    best = min(table, key=lambda r: r["val_loss"])
    how, state = candidates[best["candidate"]]
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(session.path(FINAL_MODEL), st_save(tensors))
    recipe = {"method": best["candidate"], **how, "chosen_on": "val loss",
              "val_loss": best["val_loss"], "test_loss": best["test_loss"],
              "val_acc": best["val_acc"], "test_acc": best["test_acc"]}
    session.write_json("final/recipe.json", recipe)
    logger.info("final model: %s (val loss %.4f, test loss %s)", best["candidate"],
                best["val_loss"], best["test_loss"])
    return recipe


def load_final_model(model: nn.Module, session_root: Path) -> nn.Module:
    model.load_state_dict(load_tensors(session_root / FINAL_MODEL), strict=True)
    return model


__all__ = ["FINAL_MODEL", "build_test_table", "candidate_states", "load_final_model",
           "write_final_model"]
