"""The honest test table and the final model.

Every candidate is made from the long run's checkpoints and chosen on val; the test split
is read only here, to report. Candidates build their weights on demand, so at most one
candidate's weights (plus a soup's running sum) are in memory at a time.

The final model is the best single checkpoint, or the single-weights candidate best on the
search rows when it beats that checkpoint on the held-out selection rows by more than noise
(``tuner.final_choice``; a prediction ensemble is several models, so it is reported but
cannot be that one file), written as one safetensors file with its recipe; loading it into a
fresh model reproduces the reported metrics exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn
from tqdm.auto import tqdm

from model.data import EncodedData
from model.groups import GroupSpec
from model.tasks import TaskSpec
from model.training import evaluate
from storage import Session, atomic_write_bytes, crash_point, json_safe
from storage.checkpoints import EMA_FILE, checkpoint_dir, load_tensors, verify_file

from .crossover import assemble_state
from .ensembles import (
    State,
    average_states,
    ensemble_predictions,
    greedy_soup,
    greedy_soup_order,
    prediction_metrics,
    split_outputs,
    variant_recipes,
)
from .final_choice import REFERENCE, RULE, ChoiceConfig, decide, nominee, paired_gain
from .holdout import HeldOutRows
from .monitor import VAL_LOSS, Monitor
from .report import fmt
from .uncertainty import BootstrapConfig, confidence, verdict

logger = logging.getLogger(__name__)

FINAL_MODEL = "final/optimal_crossover_model.safetensors"
HF_FINAL = "final/hf_model"  # hf: models, as save_pretrained writes them
SplitPredictions = dict[str, dict[str, torch.Tensor]]  # split -> task -> predictions


@dataclass
class Candidate:
    """One row of the test table: how it was made, and its weights on demand.

    ``state`` builds one model's weights; ``members`` (for a prediction ensemble) yields
    each member's weights in turn. Exactly one of them is set.
    """

    name: str
    how: dict[str, Any]
    state: Callable[[], State] | None = None
    members: Callable[[], Iterable[State]] | None = None
    # The best single model's exact weights, kept in memory for the final file.
    kept_state: State | None = field(default=None, repr=False, init=False)

    def __post_init__(self) -> None:
        if (self.state is None) == (self.members is None):
            raise ValueError(f"candidate {self.name!r} needs exactly one of state or members")

    @property
    def single_model(self) -> bool:
        return self.state is not None


def _row(name: str, how: dict, v: dict, t: dict | None, primary: str, single: bool) -> dict[str, Any]:
    t = t or {}
    return {
        "candidate": name, **how, "single_model": single,
        "val_loss": v["loss"], "test_loss": t.get("loss"),
        "val_acc": v["acc"], "test_acc": t.get("acc"),
        "val_task_loss": v["task_loss"], "test_task_loss": t.get("task_loss"),
        "val_macro_f1": v["task_metrics"][primary].get("macro_f1"),
        "test_macro_f1": t.get("task_metrics", {}).get(primary, {}).get("macro_f1"),
        "val_task_metrics": v["task_metrics"], "test_task_metrics": t.get("task_metrics"),
    }


def _same_epoch(spec: GroupSpec, epoch: int) -> dict[str, int]:
    return {g: epoch for g in spec.groups}


def build_candidates(root: Path, spec: GroupSpec, history: Sequence[Mapping[str, Any]],
                     checkpoints: Sequence[int], best_single: int, sweet: Mapping[str, int],
                     optimized: Mapping[str, Any], model: nn.Module, val: EncodedData,
                     tasks: Sequence[TaskSpec], device: str = "cpu",
                     monitor: Monitor = VAL_LOSS) -> list[Candidate]:
    """The eight candidates of the issue, in the order of the test table. ``optimized``:
    the crossover's recipe (a group's entry may be a window of epochs)."""
    last = checkpoints[-1]
    by_epoch = {h["epoch"]: h for h in history}
    primary = tasks[0].name

    def whole(epoch: int) -> State:
        return assemble_state(root, _same_epoch(spec, epoch), spec)

    def val_score(state: State) -> float:  # higher is better
        model.load_state_dict(state, strict=True)
        return -monitor.signed(evaluate(model, val, tasks, device=device), primary)

    variants = variant_recipes(optimized, checkpoints)
    order = greedy_soup_order({c: -monitor.signed(by_epoch[c], primary) for c in checkpoints},
                              {c: by_epoch[c]["val_loss"] for c in checkpoints})
    soup_info: dict[str, Any] = {"monitor": monitor.name}

    def greedy() -> State:
        out = greedy_soup(order, whole, val_score)
        soup_info.update(members=out["members"], decisions=out["decisions"])
        return out["state"]

    out = [
        Candidate("best_single_checkpoint", {"recipe": _same_epoch(spec, best_single)},
                  state=lambda: whole(best_single)),
        Candidate("last_epoch", {"recipe": _same_epoch(spec, last)}, state=lambda: whole(last)),
    ]
    ema = checkpoint_dir(root, last) / EMA_FILE
    if ema.is_file():
        out.append(Candidate("ema", {"ema_of_epoch": last},
                             state=lambda: load_tensors(verify_file(ema.parent, ema.name),
                                                        upcast=True)))
    out += [
        Candidate("sweet_spot_crossover", {"recipe": dict(sweet)},
                  state=lambda: assemble_state(root, sweet, spec)),
        Candidate("optimized_crossover", {"recipe": dict(optimized)},
                  state=lambda: assemble_state(root, optimized, spec)),
        Candidate("variant_ensemble", {"around": dict(optimized), "variants": variants},
                  members=lambda: (assemble_state(root, v["recipe"], spec) for v in variants)),
        Candidate("uniform_soup", {"members": list(checkpoints)},
                  state=lambda: average_states(whole(c) for c in checkpoints)),
        Candidate("greedy_soup", {"order": order, "soup": soup_info}, state=greedy),
    ]
    return out


def build_test_table(model: nn.Module, candidates: Sequence[Candidate], val: EncodedData,
                     test: EncodedData, tasks: Sequence[TaskSpec], device: str = "cpu",
                     progress: bool = False,
                     references: Mapping[str, tuple[dict, SplitPredictions]] | None = None,
                     bootstrap: BootstrapConfig | None = None,
                     monitor: Monitor = VAL_LOSS,
                     predictions: dict[str, Any] | None = None) -> list[dict]:
    """Val and test metrics of every candidate (test only when the split is not empty),
    then the reference rows (name -> (how, split -> task -> predictions)), each marked
    ``reference: true``. With a single-label primary task and a test split, every row
    carries ``test_ci``: accuracy and macro-F1 with 95% bootstrap intervals and the
    paired difference against ``best_single_checkpoint`` (same resampled rows).
    ``predictions``, when given, receives the test rows' targets and every row's predicted
    classes (``test_predictions``), so paired differences can be pooled across runs."""
    primary = tasks[0]
    splits = {"val": val, **({"test": test} if len(test) else {})}
    rows = []
    test_guess: dict[str, torch.Tensor] = {}  # candidate -> (N, C) primary-task outputs on test
    for cand in tqdm(candidates, desc="test table", unit="candidate", disable=not progress):
        crash_point(f"final:{cand.name}")
        if cand.single_model:
            state = cand.state()
            model.load_state_dict(state, strict=True)
            # The test pass keeps its outputs: the paired comparisons need them, and a second
            # pass over the test rows (split_outputs) computed the same numbers again.
            metrics = {k: evaluate(model, d, tasks, device=device, keep_outputs=k == "test")
                       for k, d in splits.items()}
            if "test" in splits:
                test_guess[cand.name] = metrics["test"].pop("outputs")[primary.name]
        else:
            out = ensemble_predictions(model, cand.members(), splits, tasks, device)
            metrics = {k: prediction_metrics(p, t, tasks) for k, (p, t) in out.items()}
            if "test" in splits:
                test_guess[cand.name] = out["test"][0][primary.name]
        rows.append(json_safe(_row(cand.name, cand.how, metrics["val"], metrics.get("test"),
                                   primary.name, cand.single_model)))
        if cand.single_model and (cand.name == REFERENCE
                                  or nominee(rows, monitor, primary.name) == cand.name):
            # Keep the exact weights of the two models the final choice compares (the best
            # single checkpoint and the best other single model so far); drop the rest.
            for other in candidates:
                if other.name not in (REFERENCE, cand.name):
                    other.kept_state = None
            cand.kept_state = state
        _log_row(rows[-1])
    for name, (how, preds) in (references or {}).items():
        metrics = {k: prediction_metrics(preds[k], d.targets, tasks) for k, d in splits.items()}
        if "test" in splits:
            test_guess[name] = preds["test"][primary.name]
        rows.append(json_safe(_row(name, how, metrics["val"], metrics.get("test"), primary.name,
                                   single=False) | {"reference": True}))
        _log_row(rows[-1])
    reference = "best_single_checkpoint" if "best_single_checkpoint" in test_guess else next(
        iter(test_guess), None)
    if primary.kind == "single" and "test" in splits and reference in test_guess:
        guesses = {k: v.argmax(-1).numpy() for k, v in test_guess.items()}
        target = test.targets[primary.name].numpy()
        if predictions is not None:
            predictions.update(test_predictions(guesses, target, primary.name))
        ci = confidence(guesses, target, reference, bootstrap or BootstrapConfig())
        # Every row against the linear baseline too (same resampled rows), for the verdict
        # on the final model.
        vs_base = (confidence(guesses, target, "linear_baseline", bootstrap or BootstrapConfig())
                   if "linear_baseline" in guesses else {})
        for r in rows:
            name = r["candidate"]
            r["test_ci"] = ci[name] | {k: v for k, v in vs_base.get(name, {}).items()
                                       if k.endswith("_vs_linear_baseline")}
            r["verdict"] = verdict(name, ci[name], reference)
    return rows


def test_predictions(guesses: Mapping[str, Any], target: Any, task: str) -> dict[str, Any]:
    """The primary task's predicted class per test row, per candidate, with the targets:
    what ``final/test_predictions.json`` keeps, for paired comparisons pooled over runs."""
    return {"task": task, "rows": len(target), "target": [int(t) for t in target],
            "predicted": {k: [int(x) for x in v] for k, v in guesses.items()}}


def _log_row(r: dict) -> None:
    logger.info("%s: val loss %.4f acc %.4f; test loss %s acc %s", r["candidate"], r["val_loss"],
                r["val_acc"], fmt(r["test_loss"]), fmt(r["test_acc"]))


def selection_key(row: Mapping[str, Any], monitor: Monitor = VAL_LOSS,
                  primary: str = "") -> tuple[float, float]:
    """How the final model is chosen among single models, on val only: the monitor, ties
    broken by the lower val loss."""
    return monitor.key(row, primary)


def _best_single(rows: Sequence[dict], monitor: Monitor, primary: str) -> dict:
    return min((r for r in rows if r["single_model"] and not r.get("reference")),
               key=lambda r: selection_key(r, monitor, primary))


def choose_final(model: nn.Module, candidates: Sequence[Candidate], table: Sequence[dict],
                 selection: HeldOutRows, tasks: Sequence[TaskSpec], device: str = "cpu",
                 monitor: Monitor = VAL_LOSS, cfg: ChoiceConfig | None = None) -> dict[str, Any]:
    """The final choice (``tuner.final_choice``): the nominee of the search rows against the
    best single checkpoint on the held-out selection rows, the only read of those rows."""
    primary = tasks[0].name
    nominated = nominee(table, monitor, primary)
    by_name = {c.name: c for c in candidates}
    if nominated is None or REFERENCE not in by_name:
        return decide(None, None) | {"rule": RULE, "monitor": monitor.name}
    outputs, metrics = {}, {}
    with selection.opened("final choice") as rows:
        for name in (REFERENCE, nominated):
            cand = by_name[name]
            model.load_state_dict(cand.kept_state if cand.kept_state is not None else cand.state(),
                                  strict=True)
            outputs[name] = split_outputs(model, rows, device=device)
            metrics[name] = prediction_metrics(*outputs[name], tasks)
    gain = paired_gain(monitor, outputs[REFERENCE], outputs[nominated], tasks,
                       cfg or ChoiceConfig())
    decision = decide(nominated, gain)
    logger.info("final choice: %s", decision["reason"])
    return decision | {"rule": RULE, "monitor": monitor.name,
                       "selection_metrics": {k: {"loss": m["loss"], "acc": m["acc"],
                                                 "task_metrics": m["task_metrics"]}
                                             for k, m in metrics.items()}}


def write_final_model(session: Session, table: Sequence[dict],
                      candidates: Sequence[Candidate], monitor: Monitor = VAL_LOSS,
                      primary: str = "", decision: Mapping[str, Any] | None = None,
                      ) -> dict[str, Any]:
    """The final model as final/optimal_crossover_model.safetensors + final/recipe.json:
    ``decision["final"]`` (``choose_final``); without a decision, the best single-model
    candidate on val under the monitor (``selection_key``)."""
    best = (next(r for r in table if r["candidate"] == decision["final"]) if decision
            else _best_single(table, monitor, primary))
    cand = next(c for c in candidates if c.name == best["candidate"])
    state = cand.kept_state if cand.kept_state is not None else cand.state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(session.path(FINAL_MODEL), st_save(tensors))
    chosen_on = (f"{decision['rule']}; monitor {monitor.describe()}" if decision
                 else f"{monitor.describe()}, among single models")
    recipe = {"method": best["candidate"], **cand.how, "chosen_on": chosen_on,
              "monitor": monitor.name,
              "val_loss": best["val_loss"], "test_loss": best["test_loss"],
              "val_acc": best["val_acc"], "test_acc": best["test_acc"]}
    session.write_json("final/recipe.json", json_safe(recipe))
    logger.info("final model: %s (val loss %.4f, test loss %s)", best["candidate"],
                best["val_loss"], fmt(best["test_loss"]))
    return recipe


def load_final_model(model: nn.Module, session_root: Path) -> nn.Module:
    model.load_state_dict(load_tensors(session_root / FINAL_MODEL), strict=True)
    return model


__all__ = ["FINAL_MODEL", "HF_FINAL", "Candidate", "build_candidates", "build_test_table",
           "choose_final", "load_final_model", "test_predictions", "write_final_model"]
