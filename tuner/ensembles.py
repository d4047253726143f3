"""Phase 4, beside the crossover: prediction ensembles and weight soups over checkpoints.

- Variant ensemble (the strategy's section 6): the chosen recipe shifted by -4, -2, 0, +2, +4
  epochs per group (clamped to the saved checkpoints; a window moves as a whole); the
  members' fused predictions are averaged (class probabilities, label probabilities,
  regression values).
- Uniform soup: the average of the weights of every saved checkpoint.
- Greedy soup (Wortsman et al. 2022, "Model soups"): checkpoints sorted by the run's monitor
  on val, each one kept in the average only if the averaged weights do not score worse.

Soups stream: at most a running sum, one checkpoint and one candidate are in memory,
never all checkpoints at once (30 checkpoints of a 730M model would not fit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from model.data import EncodedData, batch_indices
from model.tasks import TaskCounts, TaskSpec, task_loss

logger = logging.getLogger(__name__)

VARIANT_OFFSETS = (-4, -2, 0, 2, 4)
_EPS = 1e-7  # keeps averaged probabilities off 0 and 1 before taking logs

State = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- recipes (pure)

def _nearest(epoch: int, checkpoints: Sequence[int]) -> int:
    """The saved checkpoint closest to ``epoch`` (the earlier one on a tie)."""
    return min(checkpoints, key=lambda c: (abs(c - epoch), c))


def _shift(value: int | Sequence[int], offset: int, checkpoints: Sequence[int]) -> int | list[int]:
    """One group's epoch (or window) moved by ``offset``, clamped to the checkpoints."""
    if isinstance(value, int):
        return _nearest(value + offset, checkpoints)
    # A window moves as a whole: its end moves, its length stays (shorter only at the start).
    ordered = sorted(checkpoints)
    end = ordered.index(_nearest(value[-1] + offset, ordered))
    return ordered[max(0, end - len(value) + 1): end + 1]


def variant_recipes(recipe: Mapping[str, int | Sequence[int]], checkpoints: Sequence[int],
                    offsets: Sequence[int] = VARIANT_OFFSETS) -> list[dict[str, Any]]:
    """The strategy's ensemble variants: every group's epoch (or window) moved by each
    offset, clamped to the saved checkpoints. Offsets that land on the same recipe count
    once."""
    if not checkpoints:
        raise ValueError("no checkpoints to build variants from")
    seen: dict[tuple, dict[str, Any]] = {}
    for offset in offsets:
        shifted = {g: _shift(e, offset, checkpoints) for g, e in recipe.items()}
        key = tuple(sorted((g, str(v)) for g, v in shifted.items()))
        if key in seen:
            seen[key]["offsets"].append(offset)
        else:
            seen[key] = {"offsets": [offset], "recipe": shifted}
    return list(seen.values())


def greedy_soup_order(scores: Mapping[int, float], losses: Mapping[int, float]) -> list[int]:
    """Checkpoints by val score (higher is better: an accuracy, or a negated loss), best
    first (ties: lower val loss, then earlier)."""
    return sorted(scores, key=lambda e: (-scores[e], losses.get(e, float("inf")), e))


# ----------------------------------------------------------------------------- weights

def _is_averaged(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def average_states(states: Iterable[Mapping[str, torch.Tensor]]) -> State:
    """The uniform average of the states, accumulated one at a time in float64.

    Floating tensors are averaged; integer buffers (counters, ids) are taken from the first.
    """
    total: State = {}
    dtypes: dict[str, torch.dtype] = {}
    n = 0
    for state in states:
        n += 1
        for k, v in state.items():
            dtypes.setdefault(k, v.dtype)
            if k not in total:
                total[k] = v.double().clone() if _is_averaged(v) else v.clone()
            elif _is_averaged(v):
                total[k] += v.double()
    if n == 0:
        raise ValueError("no states to average")
    return _finish(total, n, dtypes)


def _finish(total: Mapping[str, torch.Tensor], n: int, dtypes: Mapping[str, torch.dtype]) -> State:
    return {k: (v / n).to(dtypes[k]) if v.is_floating_point() else v.clone()
            for k, v in total.items()}


def greedy_soup(order: Sequence[int], load: Callable[[int], State],
                score: Callable[[State], float]) -> dict[str, Any]:
    """Wortsman et al.'s greedy soup over ``order`` (best first).

    ``load(epoch)`` gives a checkpoint's state, ``score(state)`` its val score (higher is
    better). A checkpoint joins when the soup with it scores at least as well as the soup
    without.
    Returns the soup's state, its members and every decision taken.
    """
    if not order:
        raise ValueError("no checkpoints for a greedy soup")
    first = load(order[0])
    dtypes = {k: v.dtype for k, v in first.items()}
    total = {k: v.double() if _is_averaged(v) else v.clone() for k, v in first.items()}
    members, best = [order[0]], score(first)
    decisions = [{"epoch": order[0], "soup_val_score": best, "kept": True}]
    for epoch in order[1:]:
        state = load(epoch)
        trial = {k: total[k] + state[k].double() if _is_averaged(state[k]) else total[k]
                 for k in total}
        acc = score(_finish(trial, len(members) + 1, dtypes))
        kept = acc >= best
        decisions.append({"epoch": epoch, "soup_val_score": acc, "kept": kept})
        if kept:
            total, best = trial, acc
            members.append(epoch)
    logger.info("greedy soup: %d of %d checkpoints kept (%s), val score %.4f", len(members),
                len(order), members, best)
    return {"state": _finish(total, len(members), dtypes), "members": members,
            "val_score": best, "decisions": decisions}


# ----------------------------------------------------------------------------- predictions

@torch.no_grad()
def split_outputs(model: nn.Module, data: EncodedData, batch_size: int = 256,
                  device: str | torch.device = "cpu",
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The fused outputs and the targets of every row of ``data`` in order.

    Returns (outputs, targets): task -> (N, C) float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    targets: dict[str, list[torch.Tensor]] = {}
    for index in batch_indices(len(data), batch_size, None):
        ids, mask, target = data.batch(index, device)  # (B, L_b)
        for name, pred in model(ids, mask)["fused"].items():
            outputs.setdefault(name, []).append(pred.float().cpu())
            targets.setdefault(name, []).append(target[name].cpu())
    model.train(was_training)
    return ({k: torch.cat(v) for k, v in outputs.items()},
            {k: torch.cat(v) for k, v in targets.items()})


def combine_predictions(members: Sequence[Mapping[str, torch.Tensor]],
                        tasks: Sequence[TaskSpec]) -> dict[str, torch.Tensor]:
    """Average the members' predictions and return them as logits (what task_loss takes).

    Single-label: mean of softmax probabilities, returned as log-probabilities (softmax
    of them gives the mean back); multi-label: mean of sigmoids, returned as their logit;
    regression: the mean value.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    out = {}
    for spec in tasks:
        preds = torch.stack([m[spec.name] for m in members])  # (M, N, C)
        if spec.kind == "single":
            out[spec.name] = preds.softmax(-1).mean(0).clamp_min(_EPS).log()
        elif spec.kind == "multi":
            out[spec.name] = preds.sigmoid().mean(0).clamp(_EPS, 1 - _EPS).logit()
        else:
            out[spec.name] = preds.mean(0)
    return out


def prediction_metrics(preds: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                       tasks: Sequence[TaskSpec]) -> dict[str, Any]:
    """The fused loss and task metrics of predictions, in the shape ``evaluate`` returns."""
    task_losses, task_metrics = {}, {}
    for spec in tasks:
        task_losses[spec.name] = float(task_loss(spec, preds[spec.name], targets[spec.name]))
        counts = TaskCounts(spec)
        counts.update(preds[spec.name], targets[spec.name])
        task_metrics[spec.name] = counts.metrics()
    return {
        "loss": sum(task_losses.values()),
        "acc": task_metrics[tasks[0].name].get("accuracy", float("nan")),
        "task_loss": task_losses,
        "task_metrics": task_metrics,
    }


def ensemble_predictions(model: nn.Module, states: Iterable[Mapping[str, torch.Tensor]],
                         datasets: Mapping[str, EncodedData], tasks: Sequence[TaskSpec],
                         device: str | torch.device = "cpu",
                         ) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The averaged predictions and the targets of the ensemble of ``states`` on each named
    dataset. One state is in the model at a time; only the predictions are kept."""
    members: dict[str, list[dict[str, torch.Tensor]]] = {name: [] for name in datasets}
    targets: dict[str, dict[str, torch.Tensor]] = {}
    for state in states:
        model.load_state_dict(state, strict=True)
        for name, data in datasets.items():
            preds, targets[name] = split_outputs(model, data, device=device)
            members[name].append(preds)
    return {name: (combine_predictions(members[name], tasks), targets[name]) for name in datasets}


def evaluate_ensemble(model: nn.Module, states: Iterable[Mapping[str, torch.Tensor]],
                      datasets: Mapping[str, EncodedData], tasks: Sequence[TaskSpec],
                      device: str | torch.device = "cpu") -> dict[str, dict[str, Any]]:
    """Metrics of the prediction ensemble of ``states`` on each named dataset."""
    out = ensemble_predictions(model, states, datasets, tasks, device)
    return {name: prediction_metrics(preds, targets, tasks) for name, (preds, targets) in out.items()}


__all__ = ["VARIANT_OFFSETS", "average_states", "combine_predictions", "ensemble_predictions",
           "evaluate_ensemble",
           "greedy_soup", "greedy_soup_order", "prediction_metrics", "split_outputs", "variant_recipes"]
