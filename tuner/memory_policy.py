"""The GPU memory plan's policy for a run: print the plan (``model.memory``), and over
``--gpu-memory-gib`` switch on the fastest combination of optimizer, activation
checkpointing and EMA placement that fits, or refuse the run with what to change."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from model.activations import ActivationProfile, profile_activations
from model.memory import (
    GIB,
    FitOption,
    TrainShape,
    disk_plan,
    encoders_of,
    estimate_step_seconds,
    fit_options,
    plan_memory,
    plan_table,
    profiled_activation_layers,
)
from model.optimizers import OPTIMIZERS, OPTIONS, available, check_choice
from model.training import resolve_precision
from storage import read_json

from .config import PipelineConfig
from .settings import SETTINGS_FILE

logger = logging.getLogger(__name__)


def _precision(cfg: PipelineConfig) -> str:
    """The autocast the engine will use, by name."""
    if not cfg.device.startswith("cuda"):
        return "fp32"
    amp = resolve_precision(cfg.train.precision, torch.device(cfg.device))
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _shape(cfg: PipelineConfig, max_length: int) -> TrainShape:
    precision = _precision(cfg)
    return TrainShape(cfg.train.batch_size, max_length, precision, cfg.train.r_drop > 0,
                      cfg.train.ema_decay > 0 and cfg.train.ema_device != "cpu",
                      bool(cfg.activation_checkpointing), cfg.train.resolved_optimizer)


def _optimizers_to_try(cfg: PipelineConfig, world: int) -> list[str]:
    """What --gpu-memory-gib may switch to: any optimizer this run can use (installed, on
    this device, at this precision, in ``world`` processes), unless --optimizer names one."""
    if cfg.train.optimizer != "auto":
        return [cfg.train.optimizer]
    usable = []
    for name in OPTIMIZERS:
        try:
            check_choice(name, cfg.device, _precision(cfg), world)
        except ValueError:
            continue
        usable.append(name)
    return usable


def recorded_before_optimizers(cfg: PipelineConfig) -> PipelineConfig:
    """A session recorded before --optimizer existed trained with AdamW: its rerun keeps
    AdamW (with the budget, the plan now might pick another and refuse the resume)."""
    path = Path(cfg.backup_dir) / cfg.study / SETTINGS_FILE
    if cfg.train.optimizer != "auto" or not path.is_file():
        return cfg
    try:
        recorded = read_json(path).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return cfg  # check_settings names what is wrong with it
    if "train.optimizer" in recorded:
        return cfg
    return replace(cfg, train=replace(cfg.train, optimizer="adamw"))


def _with_option(cfg: PipelineConfig, pick: FitOption) -> PipelineConfig:
    train = replace(cfg.train, optimizer=pick.optimizer)
    if cfg.train.ema_decay > 0 and not pick.ema_on_gpu:
        train = replace(train, ema_device="cpu")
    return replace(cfg, train=train,
                   activation_checkpointing=pick.activation_checkpointing or None)


def _activation_profile(model: torch.nn.Module) -> tuple[ActivationProfile | None, str]:
    """The model's activations: from its transformer stacks' shapes where it has them, else
    measured per layer at small shapes on the CPU (``model.activations``)."""
    if encoders_of(model):
        return None, "transformer shapes (Korthikanti et al. 2022)"
    if any(p.is_meta for p in model.parameters()):
        return None, "none: a model on the meta device cannot be measured"
    try:
        return profile_activations(model), "measured per layer at small shapes, scaled"
    except Exception as e:  # a factory model's forward may want other inputs
        logger.warning("memory plan: could not measure the activations of %s (%s: %s); the "
                       "plan counts none", type(model).__name__, type(e).__name__, e)
        return None, f"none: measuring failed ({type(e).__name__})"


def memory_plan(cfg: PipelineConfig, model: torch.nn.Module, max_length: int,
                world: int = 1) -> tuple[PipelineConfig, dict]:
    """The GPU memory plan of this run (``model.memory``), printed on CUDA or with a
    budget. Over ``--gpu-memory-gib``: of every combination of the optimizers (unless
    --optimizer names one), activation checkpointing and the EMA on the CPU, the one with
    the fastest estimated step that fits is switched on, and the log says what it costs
    and whether it changes the numerics; otherwise the run is refused with the smallest
    plan's table and what to change. "auto" is resolved here: the returned config names
    the optimizer the run trains with. ``world``: the processes of a torchrun job."""
    pinned = cfg.train.optimizer != "auto"
    if pinned:
        check_choice(cfg.train.optimizer, cfg.device, _precision(cfg), world)
    shape = _shape(cfg, max_length)
    profile, source = _activation_profile(model)
    parts = plan_memory(model, shape, profile)
    budget = cfg.gpu_memory_gib
    chosen, candidates, pick, configured = "as configured", [], None, parts["total"]
    if budget is not None and parts["total"] > budget * GIB:
        as_is = estimate_step_seconds(model, shape, cfg.train.grad_accum)["total"]
        candidates = fit_options(model, shape, cfg.train.grad_accum,
                                 _optimizers_to_try(cfg, world), profile=profile)
        fitting = [o for o in candidates if o.total_bytes <= budget * GIB]
        pick = fitting[0] if fitting else min(candidates, key=lambda o: o.total_bytes)
        cfg = _with_option(cfg, pick)
        parts = plan_memory(model, _shape(cfg, max_length), profile)
        if fitting:
            numerics = ("the gradients and updates stay those of fp32 AdamW" if pick.exact else
                        "this changes the numerics: bf16 weights with stochastic rounding and "
                        "8-bit moments, compared with AdamW in the README")
            logger.warning("memory plan: %.2f GiB does not fit --gpu-memory-gib %.2f; %s "
                           "brings it to %.2f GiB, the fastest of %d options that fit "
                           "(estimated step %.2f s, %.2f s as configured; %s): switched on",
                           configured / GIB, budget, pick.describe(),
                           parts["total"] / GIB, len(fitting), pick.step_seconds, as_is,
                           numerics)
            chosen = f"{pick.describe()}, the fastest option that fits"
        else:
            chosen = "the smallest plan this installation can make"
    cfg = replace(cfg, train=replace(cfg.train, optimizer=cfg.train.resolved_optimizer))
    table = plan_table(parts, budget)
    if budget is not None or cfg.device.startswith("cuda"):
        logger.info("GPU memory plan (%s; %s, batch %d x %d tokens, %s):\n%s", chosen,
                    cfg.train.optimizer, cfg.train.batch_size, max_length,
                    _shape(cfg, max_length).precision, "\n".join(table))
    if budget is not None and parts["total"] > budget * GIB:
        missing = [n for n in OPTIMIZERS if not available(n)]
        raise ValueError(
            "the memory plan does not fit --gpu-memory-gib {:.2f}, even with {}:\n{}\nLower "
            "--batch-size or --max-length, switch off R-Drop (--r-drop 0) or the EMA "
            "(--ema-decay 0), or pick a smaller --preset{}{}".format(
                budget, pick.describe() if pick else "the run as configured", "\n".join(table),
                "; without --optimizer the plan may switch optimizers" if pinned else "",
                f"; {', '.join(missing)} need pip install -e '.[gpu]'" if missing else ""))
    # Checkpoints keep the training weights' dtype and the EMA its fp32, unless
    # --checkpoint-dtype narrows both.
    narrow = cfg.long_run.narrowed_dtype
    stored = narrow or OPTIONS[cfg.train.optimizer].weights_dtype
    disk = disk_plan(model, cfg.long_run.epochs // cfg.long_run.checkpoint_every,
                     stored.itemsize, cfg.train.ema_decay > 0, optimizer=cfg.train.optimizer,
                     ema_bytes=(narrow or torch.float32).itemsize)
    logger.info("disk plan of the long run: %.2f GiB (%d checkpoints at %s: %.2f GiB, the EMA "
                "once: %.2f GiB, 2 resume states: %.2f GiB)", disk["total"] / GIB,
                cfg.long_run.epochs // cfg.long_run.checkpoint_every,
                str(stored).removeprefix("torch."), disk["checkpoints"] / GIB,
                disk["ema"] / GIB, disk["resume_states"] / GIB)
    layers = (profiled_activation_layers(profile, _shape(cfg, max_length))
              if profile is not None else None)
    return cfg, {"components_bytes": parts, "budget_gib": budget, "chosen": chosen,
                 "activations_from": source, "activation_bytes_by_layer": layers,
                 "optimizer": cfg.train.optimizer,
                 "options": [{**asdict(o), "fits": budget is not None
                              and o.total_bytes <= budget * GIB, "exact": o.exact,
                              "what": o.describe()} for o in candidates],
                 "activation_checkpointing": bool(cfg.activation_checkpointing),
                 "ema_device": cfg.train.ema_device or "with the model", "disk_bytes": disk}


__all__ = ["memory_plan", "recorded_before_optimizers"]
