"""The training engine: one epoch of training, one pass of evaluation, metric dicts.

``build_engine`` makes the optimizer (AdamW, LLRD groups), the per-step cosine
schedule, the EMA and the fp16 scaler; ``train_one_epoch`` and ``evaluate``
return plain dicts of floats (JSON-ready). On CPU everything runs in fp32 and
no CUDA function is ever called.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import EncodedData, batch_indices
from .groups import GroupSpec
from .optimizers import (
    OPTIMIZERS,
    build_optimizer,
    check_precision,
    check_world,
    clip_targets,
    join_state,
    join_tensors,
    option,
    split_state,
    split_tensors,
    sync_offloaded_weights,
)
from .setting import setting
from .tasks import TaskCounts, TaskSpec, correct_rows, task_loss
from .techniques import (
    build_ema,
    llrd_param_groups,
    module_losses,
    r_drop_consistency,
    split_outputs,
    total_loss,
)

logger = logging.getLogger(__name__)

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the engine; the defaults are the strategy's long-run settings."""

    lr: float = 1e-4
    epochs: int = 60
    batch_size: int = setting(64, flag="--batch-size", group="training", type=int,
                              help="rows per micro-batch")
    grad_accum: int = setting(1, flag="--gradient-accumulation", aliases=("--grad-accum",),
                              group="training", type=int,
                              help="micro-batches per optimizer step")  # effective batch 64
    weight_decay: float = 0.01
    label_smoothing: float = setting(0.05, flag="--label-smoothing", group="training", type=float,
                                     help="label smoothing of single-label losses")
    r_drop: float = setting(1.0, flag="--r-drop", group="training", type=float,
                            help="R-Drop lambda; 0 = off")
    ema_decay: float = setting(0.999, flag="--ema-decay", group="training", type=float,
                               help="decay of the weights' EMA per optimizer step when "
                                    "--ema-half-life is 0; 0 = no EMA")
    # The EMA follows the training, not the step count: a fixed per-step decay of 0.999
    # still carried the pretrained start after 10 epochs of ~50 steps (9.5 points under the
    # best checkpoint on the MiniLM bench), and barely moved on runs of few steps.
    ema_half_life: float = setting(
        1.0, flag="--ema-half-life", group="training", type=float,
        help="the EMA's half-life in epochs: its per-step decay is 0.5 ** (1 / (half-life x "
             "optimizer steps per epoch)); 0 = --ema-decay per step, as before")
    # Where the EMA copy lives: None, the model's device; "cpu" keeps it off the GPU
    # (AveragedModel copies the weights over after each optimizer step).
    ema_device: str | None = setting(
        None, flag="--ema-device", group="training", choices=("cpu",),
        help="keep the EMA copy on the CPU instead of beside the model (GPU memory)")
    # See model.optimizers. "auto": AdamW, unless the pipeline's memory plan switches to
    # another to fit --gpu-memory-gib.
    optimizer: str = setting(
        "auto", flag="--optimizer", group="training", choices=("auto", *OPTIMIZERS),
        help="adamw: torch's AdamW, fp32 weights; adamw8bit: bf16 weights with torchao's "
             "8-bit AdamW; adamw-offload: AdamW's state and step on the CPU (CUDA); auto: "
             "adamw unless --gpu-memory-gib needs another (the last two need pip install -e "
             "'.[gpu]')")
    llrd_decay: float = setting(0.9, flag="--llrd-decay", group="training", type=float,
                                help="layer-wise LR decay; 1 = none (every layer at the base LR)")
    analyzer_lr_scale: float = 0.7
    aux_weight: float = 1.0
    grad_clip: float = 1.0  # 0 turns clipping off (the norm is still measured)
    # Embedding tables a model marks sparse (``nn.Embedding(..., sparse=True)``, as the n-gram
    # presets do) train with sparse gradients and torch's SparseAdam, which updates only the
    # rows a batch touched; False (or an optimizer other than adamw): dense, like the rest.
    sparse_embeddings: bool = setting(
        True, flag="--dense-embeddings", group="training", switch=False,
        help="train embedding tables a model marks sparse (the n-gram presets') densely with "
             "the optimizer of the rest, instead of with sparse gradients and SparseAdam")
    precision: str = setting("auto", flag="--precision", group="training",
                             choices=("auto", "fp32", "bf16", "fp16"),
                             help="autocast on CUDA (auto: bf16 if supported, else fp16 with a "
                                  "GradScaler); always fp32 on the CPU")
    seed: int = setting(0, flag="--seed", group="study", type=int,
                        help="random seed for sampling, splits and training")
    progress: bool = setting(True, flag="--no-progress", group="output", switch=False,
                             help="no progress bars")

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.r_drop < 0:
            raise ValueError(f"r_drop must be >= 0, got {self.r_drop!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not (self.ema_half_life >= 0 and math.isfinite(self.ema_half_life)):
            raise ValueError(f"ema_half_life must be a finite number of epochs >= 0, "
                             f"got {self.ema_half_life!r}")
        if self.ema_device not in (None, "cpu"):
            raise ValueError(f"ema_device must be None or 'cpu', got {self.ema_device!r}")
        if self.optimizer not in ("auto", *OPTIMIZERS):
            raise ValueError(f"optimizer must be auto or one of {OPTIMIZERS}, "
                             f"got {self.optimizer!r}")
        check_precision(self.optimizer, self.precision)
        if not 0.0 < self.llrd_decay <= 1.0:
            raise ValueError(f"llrd_decay must be in (0, 1], got {self.llrd_decay!r}")
        if self.analyzer_lr_scale <= 0:
            raise ValueError(f"analyzer_lr_scale must be > 0, got {self.analyzer_lr_scale!r}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")

    @property
    def resolved_optimizer(self) -> str:
        """The optimizer the engine builds: "auto" is AdamW (the pipeline's memory plan
        names another when a budget needs it)."""
        return "adamw" if self.optimizer == "auto" else self.optimizer

    @classmethod
    def plain(cls, **kw: object) -> TrainConfig:
        """Every extra technique off: AdamW + cosine, fp32, no smoothing/R-Drop/EMA/LLRD/clip."""
        base = dict(label_smoothing=0.0, r_drop=0.0, ema_decay=0.0, llrd_decay=1.0,
                    analyzer_lr_scale=1.0, grad_clip=0.0, precision="fp32")
        return cls(**{**base, **kw})


def ema_decay_per_step(config: TrainConfig, steps_per_epoch: int) -> float:
    """The EMA's decay per optimizer step: from the half-life in epochs (the weight of the
    weights of ``half_life`` epochs ago is one half), or ``ema_decay`` when it is 0."""
    if config.ema_half_life == 0:
        return config.ema_decay
    return 0.5 ** (1.0 / (config.ema_half_life * max(1, steps_per_epoch)))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling RNG of one epoch: depends only on (seed, epoch), so a resumed run
    sees the same batches as an uninterrupted one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def resolve_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32 ("auto": bf16 where the GPU has it, else fp16)."""
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise ValueError(f"precision {requested!r} needs a CUDA device, got {device.type!r}")
        return None
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the embedding tables ``model`` marks sparse (their public ``sparse``
    flag): their gradients are sparse tensors of the rows a batch touched."""
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse
            and m.weight.requires_grad]


def _densify(model: nn.Module) -> None:
    """Train every embedding table with dense gradients (clears the ``sparse`` flags)."""
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            m.sparse = False


def _split_sparse(groups: list[dict], sparse: list[nn.Parameter]) -> tuple[list[dict], list[dict]]:
    """LLRD groups -> (dense groups, sparse groups): each keeps its name and LR."""
    ids = {id(p) for p in sparse}
    dense = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    rows = [{**g, "params": [p for p in g["params"] if id(p) in ids]} for g in groups]
    return [g for g in dense if g["params"]], [g for g in rows if g["params"]]


@dataclass
class Engine:
    """Everything that changes during training, in one place (and in the resume state)."""

    model: nn.Module
    tasks: tuple[TaskSpec, ...]
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None  # enabled for fp16 only
    ema: nn.Module | None = None
    spec: GroupSpec | None = None  # set: per-group gradient stats of each epoch's last step
    history: list[dict] = field(default_factory=list)
    # Data parallel (``distribute``): the DistributedDataParallel wrapper that runs the
    # forward and averages gradients, this process' rank and the number of processes.
    ddp: nn.Module | None = None
    rank: int = 0
    world: int = 1
    # SparseAdam over the sparse embedding tables, with its own cosine schedule (the same
    # horizon as the dense one); None when the model has none or they train densely.
    sparse_optimizer: torch.optim.Optimizer | None = None
    sparse_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.optimizer,) + ((self.sparse_optimizer,) if self.sparse_optimizer else ())

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything training changes, split for safe storage: named tensors (weights,
        optimizer moments, EMA, torch RNG) and plain JSON-able data (optimizer groups and
        step counts, scheduler, scaler)."""
        opt_tensors, opt_plain = split_state(self.optimizer.state_dict())
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        plain = {"optimizer": opt_plain,
                 "scheduler": split_tensors(self.scheduler.state_dict(), "scheduler", tensors),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else {}}
        if self.sparse_optimizer is not None:
            sparse_tensors, plain["sparse_optimizer"] = split_state(
                self.sparse_optimizer.state_dict(), "sparse_optimizer")
            tensors.update(sparse_tensors)
            plain["sparse_scheduler"] = split_tensors(self.sparse_scheduler.state_dict(),
                                                      "sparse_scheduler", tensors)
        return tensors, plain

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned into an engine built the same way."""
        self.model.load_state_dict(_under(tensors, "model."))
        sync_offloaded_weights(self.optimizer)
        self.optimizer.load_state_dict(join_state(plain["optimizer"], tensors))
        self.scheduler.load_state_dict(join_tensors(plain["scheduler"], tensors))
        if (self.sparse_optimizer is not None) != ("sparse_optimizer" in plain):
            raise ValueError("the resume state was written with the embedding tables trained "
                             f"{'sparse' if 'sparse_optimizer' in plain else 'dense'}, this "
                             "engine trains them otherwise")
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.load_state_dict(join_state(plain["sparse_optimizer"], tensors))
            self.sparse_scheduler.load_state_dict(join_tensors(plain["sparse_scheduler"], tensors))
        if self.scaler is not None and plain.get("scaler"):
            self.scaler.load_state_dict(plain["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(_under(tensors, "ema."))
        torch.set_rng_state(tensors["rng.torch"])


def _under(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries named ``prefix...``, with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def build_engine(
    model: nn.Module,
    spec: GroupSpec,
    tasks: Sequence[TaskSpec],
    config: TrainConfig,
    steps_per_epoch: int,
    device: str | torch.device = "cpu",
) -> Engine:
    """The optimizer over LLRD groups, cosine annealing over all optimizer steps, EMA, scaler.

    Embedding tables the model marks sparse train with ``torch.optim.SparseAdam`` (each in
    its LLRD group's LR, on the same cosine schedule) when ``config.sparse_embeddings`` and
    the optimizer is AdamW; SparseAdam has no weight decay, so those tables train without
    it. Gradient clipping takes their norm into the global one.

    An optimizer that trains bf16 weights (``adamw8bit``) casts the model to bf16 here; the
    EMA copy stays fp32, because decay 0.999 moves it by a thousandth of the gap each step,
    far below bf16's resolution of 1/128 relative.
    """
    device = torch.device(device)
    name = config.resolved_optimizer
    weights_dtype = option(name).weights_dtype
    model.to(device=device, dtype=weights_dtype)
    if not config.sparse_embeddings or name != "adamw":
        _densify(model)  # torchao's optimizers take dense gradients only
    groups = llrd_param_groups(model, spec, config.lr, config.llrd_decay, config.analyzer_lr_scale)
    groups, sparse_groups = _split_sparse(groups, sparse_parameters(model))
    optimizer = build_optimizer(name, groups, config.lr, config.weight_decay, device)
    horizon = max(1, steps_per_epoch * config.epochs)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=horizon)
    sparse_optimizer = sparse_scheduler = None
    if sparse_groups:
        sparse_optimizer = torch.optim.SparseAdam(sparse_groups, lr=config.lr)
        sparse_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(sparse_optimizer,
                                                                      T_max=horizon)
    amp_dtype = resolve_precision(config.precision, device)
    if amp_dtype == torch.float16:  # also what "auto" resolved to on this device
        check_precision(name, "fp16")
    # Disabled, every scaler call passes through: one code path for fp16 and the rest.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = (build_ema(model, ema_decay_per_step(config, steps_per_epoch), config.ema_device,
                     dtype=torch.float32)
           if config.ema_decay > 0 else None)
    return Engine(model, tuple(tasks), config, optimizer, scheduler, device, amp_dtype, scaler, ema,
                  spec, sparse_optimizer=sparse_optimizer, sparse_scheduler=sparse_scheduler)


def distribute(engine: Engine) -> None:
    """Train ``engine`` data-parallel over the initialized default process group: every
    micro-batch is split over the ranks and DistributedDataParallel averages gradients, so
    each optimizer step sees the rows and the gradient of the single-process step."""
    from torch.distributed import get_rank, get_world_size
    from torch.nn.parallel import DistributedDataParallel

    check_world(engine.config.resolved_optimizer, get_world_size())
    device_ids = [engine.device.index] if engine.device.type == "cuda" else None
    engine.ddp = DistributedDataParallel(engine.model, device_ids=device_ids)
    engine.rank, engine.world = get_rank(), get_world_size()


def _shard(index: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """This rank's rows of a micro-batch and the weight of its mean loss.

    DDP averages gradients over ranks; weighting each rank's mean loss by its share of the
    rows x world makes that average the gradient of the whole batch's mean loss. A rank
    left without rows (a batch smaller than world) runs one row at weight 0, because every
    rank must take part in the gradient all-reduce.
    """
    if world == 1:
        return index, 1.0
    part = index.tensor_split(world)[rank]
    if part.numel() == 0:
        return index[:1], 0.0
    return part, part.numel() * world / index.numel()


def steps_per_epoch(rows: int, config: TrainConfig) -> int:
    """Optimizer steps in one epoch (a last partial accumulation group still steps)."""
    return math.ceil(math.ceil(rows / config.batch_size) / config.grad_accum)


def _step_rng(engine: Engine, epoch: int, index: int) -> contextlib.AbstractContextManager:
    """The random stream of an optimizer step that draws (8-bit AdamW's stochastic rounding
    of bf16 weights): seeded by (seed, epoch, micro-batch), never by rank, so every
    data-parallel replica rounds the same averaged update the same way and stays equal to
    the single-process run; the training stream outside is left as it was."""
    if engine.config.optimizer != "adamw8bit":
        return contextlib.nullcontext()
    return _seeded(engine.device, engine.config.seed * 1_000_003 + epoch * 100_003 + index)


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _autocast(engine: Engine) -> contextlib.AbstractContextManager:
    if engine.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=engine.device.type, dtype=engine.amp_dtype)


def _peak_memory_bytes(device: torch.device) -> int:
    """CUDA allocator peak on GPU; this process' peak RSS on CPU (never a CUDA call)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:  # VmHWM: ru_maxrss would report a parent's peak carried over an exec
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux: fall back to getrusage
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def tensor_stats(t: torch.Tensor) -> dict[str, float]:
    """mean, std, norm, max, min, sparsity (share of |x| < 1e-6) and count of a tensor."""
    t = t.detach().float().flatten()
    return {"mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0,
            "norm": float(t.norm()), "max": float(t.max()), "min": float(t.min()),
            "sparsity": float((t.abs() < 1e-6).float().mean()), "count": t.numel()}


def _group_grad_stats(model: nn.Module, spec: GroupSpec) -> dict[str, dict[str, float]]:
    """``tensor_stats`` of each group's gradient (before clipping)."""
    out = {}
    for group in spec.groups:
        grads = [(p.grad.to_dense() if p.grad.is_sparse else p.grad).detach().flatten()
                 for _, p in spec.named_parameters_of(model, group) if p.grad is not None]
        if grads:
            out[group] = tensor_stats(torch.cat(grads))
    return out


def _global_norm(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients together. A sparse gradient (an embedding table's: one
    entry per looked-up row, repeats included) is coalesced first, so repeated rows add up
    before they are squared, and stays coalesced for the optimizer."""
    dense, squares = [], []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            squares.append(p.grad.values().float().pow(2).sum())
        else:
            dense.append(p.grad)
    norm = (torch.nn.utils.get_total_norm(dense) if dense
            else torch.zeros((), device=params[0].device))
    if not squares:
        return norm
    return (norm.float().pow(2) + torch.stack(squares).sum()).sqrt()


def _trend_figures(step_losses: torch.Tensor) -> tuple[float, float]:
    """(learning_efficiency, convergence_speed) of one epoch's per-step losses.

    learning_efficiency: relative drop from the first to the last quarter's mean loss.
    convergence_speed: minus the least-squares slope over the epoch (x in [0, 1]),
    divided by the mean loss: the relative loss drop per epoch on the trend line.
    Both are scale-free, so LRs and tasks compare.
    """
    n = step_losses.numel()
    if n < 2:
        return 0.0, 0.0
    q = max(1, n // 4)
    first, last = step_losses[:q].mean(), step_losses[-q:].mean()
    efficiency = float((first - last) / first.clamp(min=1e-12))
    x = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=step_losses.device)
    y = step_losses.double()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return efficiency, float(-slope / y.mean().clamp(min=1e-12))


def _takes_copies(model: nn.Module) -> bool:
    """Whether ``model``'s forward (under a DistributedDataParallel wrapper: its module's)
    has a ``copies`` parameter (``RedHeart.forward``)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return "copies" in inspect.signature(inner.forward).parameters


def step_loss(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    targets: dict[str, torch.Tensor],
    tasks: Sequence[TaskSpec],
    cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """The training objective of one micro-batch.

    ids/mask (B, L). Returns (objective, per-module losses, the first pass' outputs).
    With R-Drop both dropout passes run as one (2B, L) batch; the module losses are
    the mean of the two passes and the objective adds r_drop x their symmetric KL.
    """
    if cfg.r_drop > 0:
        # A model whose forward takes ``copies`` makes the two passes itself (the n-gram
        # backbone looks its n-grams up once); any other gets the batch twice.
        both = (model(ids, mask, copies=2) if _takes_copies(model)
                else model(torch.cat([ids, ids]), torch.cat([mask, mask])))
        first, second = split_outputs(both, ids.shape[0])
        l1 = module_losses(first, targets, tasks, cfg.label_smoothing)
        l2 = module_losses(second, targets, tasks, cfg.label_smoothing)
        losses = {k: 0.5 * (l1[k] + l2[k]) for k in l1}
        consistency = r_drop_consistency(first["fused"], second["fused"], tasks)
        return total_loss(losses, cfg.aux_weight) + cfg.r_drop * consistency, losses, first
    first = model(ids, mask)
    losses = module_losses(first, targets, tasks, cfg.label_smoothing)
    return total_loss(losses, cfg.aux_weight), losses, first


def train_one_epoch(engine: Engine, data: EncodedData, epoch: int) -> dict:
    """Train over ``data`` once (epoch is 1-based). Returns the epoch's train metrics."""
    model, cfg, tasks, device = engine.model, engine.config, engine.tasks, engine.device
    forward = engine.ddp if engine.ddp is not None else model
    primary = tasks[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Dropout masks depend on (seed, epoch, rank) only; rank 0's are the single process' ones.
    torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7_919 * engine.rank)
    batches = list(batch_indices(len(data), cfg.batch_size, epoch_generator(cfg.seed, epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    # The epoch's sums stay on the training device: adding to them never waits for the
    # GPU, and they are read once, after the loop (phase 5).
    correct = torch.zeros((), dtype=torch.long, device=device)
    group_grads: dict[str, dict[str, float]] = {}
    fused_sum = torch.zeros((), dtype=torch.float64, device=device)
    objective_sum = torch.zeros((), dtype=torch.float64, device=device)
    step_losses: list[torch.Tensor] = []   # one per optimizer step (mean over its micro-batches)
    grad_norms: list[torch.Tensor] = []
    group_loss = torch.zeros((), dtype=torch.float64, device=device)
    # LRs of this epoch's first step, per optimizer group (the cosine moves them every step).
    lrs = {g.get("name", str(k)): float(g["lr"])
           for k, g in enumerate(engine.optimizer.param_groups)}
    if engine.sparse_optimizer is not None:
        lrs.update({f"{g.get('name', k)} (sparse)": float(g["lr"])
                    for k, g in enumerate(engine.sparse_optimizer.param_groups)})
    model.train()
    for opt in engine.optimizers:
        opt.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for i, index in enumerate(tqdm(batches, desc=f"epoch {epoch}", leave=False,
                                   disable=not cfg.progress)):
        # -- phase 1: batch, this rank's share. ids/mask (B_r, L_b); targets task -> (B_r, ...)
        part, weight = _shard(index, engine.rank, engine.world)
        ids, mask, targets = data.batch(part, device)
        rows = ids.shape[0] if weight > 0 else 0
        share = rows / index.numel()  # of the micro-batch's rows
        group_start = i - i % cfg.grad_accum
        group_size = min(cfg.grad_accum, len(batches) - group_start)
        # DDP all-reduces gradients on the last micro-batch of an accumulation group only.
        last = i - group_start + 1 == group_size
        sync = (forward.no_sync() if engine.ddp is not None and not last
                else contextlib.nullcontext())

        with sync:
            # -- phase 2: forward and loss (both R-Drop passes in one (2B_r, L_b) batch).
            with _autocast(engine):
                loss, losses, first = step_loss(forward, ids, mask, targets, tasks, cfg)

            # -- phase 3: backward, averaged over the accumulation group (and the ranks).
            scaled = loss * weight / group_size
            engine.scaler.scale(scaled).backward()
        if rows:
            correct += correct_rows(primary, first["fused"][primary.name].detach(),
                                    targets[primary.name])
        fused_sum += losses["fused"].detach().double() * rows
        objective_sum += loss.detach().double() * rows
        group_loss += losses["fused"].detach().double() * share / group_size

        # -- phase 4: optimizer step at the end of each accumulation group.
        if last:
            for opt in engine.optimizers:
                engine.scaler.unscale_(opt)
            norm = _global_norm(params)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(clip_targets(engine.optimizer, params),
                                                     cfg.grad_clip, norm)
            if engine.spec is not None and i == len(batches) - 1:
                group_grads = _group_grad_stats(model, engine.spec)
            with _step_rng(engine, epoch, i):
                for opt in engine.optimizers:
                    engine.scaler.step(opt)
            engine.scaler.update()
            engine.scheduler.step()
            if engine.sparse_scheduler is not None:
                engine.sparse_scheduler.step()
            for opt in engine.optimizers:
                opt.zero_grad(set_to_none=True)
            if engine.ema is not None:
                engine.ema.update_parameters(model)
            grad_norms.append(norm.detach().float().cpu())
            step_losses.append(group_loss.clone())
            group_loss.zero_()

    # -- phase 5: the epoch's figures (sums over every rank's rows).
    losses_per_step = torch.stack(step_losses)
    if engine.world > 1:
        from torch.distributed import all_reduce

        sums = torch.cat([torch.stack([correct.double(), fused_sum, objective_sum]),
                          losses_per_step]).to(device)
        all_reduce(sums)
        sums = sums.cpu()
        correct, fused_sum, objective_sum = sums[0].long(), sums[1], sums[2]
        losses_per_step = sums[3:]
    seconds = time.perf_counter() - start
    norms = torch.stack(grad_norms).double()
    efficiency, speed = _trend_figures(losses_per_step)
    mean_norm = float(norms.mean())
    std_norm = float(norms.std()) if norms.numel() > 1 else 0.0
    return {
        "epoch": epoch,
        "train_loss": float(fused_sum) / len(data),
        "train_objective": float(objective_sum) / len(data),
        "train_acc": int(correct) / len(data),
        "grad_norm": {"mean": mean_norm, "std": std_norm,
                      "min": float(norms.min()), "max": float(norms.max())},
        "learning_efficiency": efficiency,
        "convergence_speed": speed,
        # 1 / (1 + coefficient of variation of grad norms): unit-free, 1 = perfectly steady.
        "stability_score": 1.0 / (1.0 + std_norm / max(mean_norm, 1e-12)),
        "optimizer_steps": len(grad_norms),
        "lr": lrs,
        "seconds": seconds,
        "peak_memory_bytes": _peak_memory_bytes(device),
        **({"group_grad_stats": group_grads} if group_grads else {}),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: EncodedData,
    tasks: Sequence[TaskSpec],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    keep_outputs: bool = False,
) -> dict:
    """Loss (no label smoothing) and metrics of every module and task over ``data``.

    Returns: loss (fused, summed over tasks), acc (primary = first task), task_loss,
    module_loss (each module's own loss), task_metrics (accuracy/macro_f1, micro_f1, mse);
    with ``keep_outputs``, also outputs: task -> (N, C) fused outputs, float32 on the CPU,
    in row order (what ``split_outputs`` returns, without a second pass over the rows).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    module_sum: dict[str, float] = {}
    task_sum = {t.name: 0.0 for t in tasks}
    counts = {t.name: TaskCounts(t) for t in tasks}
    by_name = {t.name: t for t in tasks}
    kept: dict[str, list[torch.Tensor]] = {}  # task -> per-batch (B, C) outputs, if asked
    ctx = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    for index in batch_indices(len(data), batch_size, None):
        ids, mask, targets = data.batch(index, device)   # (B, L_b)
        rows = ids.shape[0]
        with ctx:
            out = model(ids, mask)
        # The fused per-task losses serve twice: per task, and summed as the fused loss.
        fused = {name: task_loss(by_name[name], pred, targets[name])
                 for name, pred in out["fused"].items()}
        losses = module_losses({m: p for m, p in out.items() if m != "fused"}, targets, tasks)
        losses["fused"] = sum(fused.values())
        for module, loss in losses.items():
            module_sum[module] = module_sum.get(module, 0.0) + float(loss) * rows
        for name, pred in out["fused"].items():
            task_sum[name] += float(fused[name]) * rows
            counts[name].update(pred, targets[name])
            if keep_outputs:
                kept.setdefault(name, []).append(pred.float().cpu())
    model.train(was_training)
    n = len(data)
    task_metrics = {name: c.metrics() for name, c in counts.items()}
    primary = task_metrics[tasks[0].name]
    return {
        "loss": module_sum["fused"] / n,
        "acc": primary.get("accuracy", float("nan")),
        "task_loss": {k: v / n for k, v in task_sum.items()},
        "module_loss": {k: v / n for k, v in module_sum.items()},
        "task_metrics": task_metrics,
        **({"outputs": {k: torch.cat(v) for k, v in kept.items()}} if keep_outputs else {}),
    }


def run_epoch(engine: Engine, train: EncodedData, val: EncodedData, epoch: int) -> dict:
    """Train one epoch, evaluate on val, and return the merged metric dict."""
    metrics = train_one_epoch(engine, train, epoch)
    v = evaluate(engine.model, val, engine.tasks, device=engine.device, amp_dtype=engine.amp_dtype)
    metrics.update({
        "val_loss": v["loss"],
        "val_acc": v["acc"],
        "val_task_loss": v["task_loss"],
        "val_module_loss": v["module_loss"],
        "val_task_metrics": v["task_metrics"],
        "overfit_gap": v["loss"] - metrics["train_loss"],
    })
    engine.history.append(metrics)
    return metrics
