"""The reference Red Heart model: a byte transformer with many analyzers.

Every module predicts every task it serves; a Kalman-style fusion weighs the
predictions by learned per-task inverse variances. The output is a dict of
module name -> {task: prediction (B, C)}, always with a ``"fused"`` entry, so
training can give each module its own (auxiliary) loss.

Module groups (see ``model.groups``):
  group_a_backbone_heads  backbone (byte embedding + transformer_encoder) + heads
  group_b_neural          neural.<task>: MLP analyzers on backbone features
  group_c_dsp_kalman      dsp (spectrum of the embedded sequence) + kalman (fusion)
  advanced_<task>         advanced.<task>: own small byte encoder, one task each
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .groups import GroupSpec
from .tasks import EMBEDDED_TASKS, TaskSpec
from .tokenizer import PAD_ID, VOCAB_SIZE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedHeartConfig:
    """Sizes of the reference model; the defaults are the ``tiny`` preset."""

    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 64
    max_length: int = 48
    neural_hidden: int = 32
    dsp_bins: int = 16
    dsp_channels: int = 8
    adv_d_model: int = 16
    adv_layers: int = 1
    adv_heads: int = 2
    adv_d_ff: int = 32
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "neural_hidden", "dsp_channels",
                     "adv_d_model", "adv_layers", "adv_heads", "adv_d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model!r} must be divisible by n_heads {self.n_heads!r}")
        if self.adv_d_model % self.adv_heads:
            raise ValueError(
                f"adv_d_model {self.adv_d_model!r} must be divisible by adv_heads {self.adv_heads!r}"
            )
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length!r}")
        if not 1 <= self.dsp_bins <= self.max_length // 2 + 1:
            raise ValueError(
                f"dsp_bins must be in [1, max_length // 2 + 1], got {self.dsp_bins!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


PRESETS: dict[str, RedHeartConfig] = {
    # CPU default, sized so the whole default pipeline (85 epochs over ~7,200 training
    # rows, R-Drop in the long run) stays under 15 minutes on 2 cores.
    "tiny": RedHeartConfig(),
    "small": RedHeartConfig(d_model=128, n_layers=4, n_heads=4, d_ff=512, max_length=64,
                            neural_hidden=128, adv_d_model=64, adv_layers=1, adv_heads=4,
                            adv_d_ff=128),
    "base": RedHeartConfig(d_model=384, n_layers=6, n_heads=6, d_ff=1536, max_length=128,
                           neural_hidden=384, dsp_bins=32, dsp_channels=16, adv_d_model=128,
                           adv_layers=2, adv_heads=4, adv_d_ff=512),
    # The seed's scale: ~730M parameters (tests check within 3% on the meta device).
    "730m": RedHeartConfig(d_model=1536, n_layers=24, n_heads=16, d_ff=6144, max_length=256,
                           neural_hidden=1536, dsp_bins=64, dsp_channels=32, adv_d_model=768,
                           adv_layers=2, adv_heads=12, adv_d_ff=3072),
}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), mask (B, L) bool -> (B, D) mean over the real tokens."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class _ByteEncoder(nn.Module):
    """Byte embedding + learned positions + pre-norm transformer; pooled output."""

    def __init__(self, d: int, layers: int, heads: int, d_ff: int, max_length: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, d, padding_idx=PAD_ID)
        self.position = nn.Parameter(torch.zeros(max_length, d))
        nn.init.normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d, heads, d_ff, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # Dropout only on the two residual branches (B, L, D). Dropping attention
        # probabilities (B*H*L*L draws) and the inner feed-forward activations (B, L, d_ff)
        # made the random draws cost more than the matmuls on CPU (a third of the step).
        layer.self_attn.dropout = 0.0
        layer.dropout = nn.Identity()
        self.transformer_encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> embedded sequence (B, L, D), before the transformer."""
        return self.embedding(ids) + self.position[: ids.shape[1]]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embedded (B, L, D), pooled features (B, D))."""
        emb = self.embed(ids)
        h = self.transformer_encoder(self.dropout(emb), src_key_padding_mask=~mask)
        return emb, _masked_mean(self.norm(h), mask)


class _DSP(nn.Module):
    """Magnitude spectrum of the embedded byte sequence along positions.

    The FFT length is fixed at max_length so a frequency bin means the same
    thing whatever the batch's padded length is.
    """

    def __init__(self, cfg: RedHeartConfig, tasks: Sequence[TaskSpec]):
        super().__init__()
        self.n_fft, self.bins = cfg.max_length, cfg.dsp_bins
        self.channel_proj = nn.Linear(cfg.d_model, cfg.dsp_channels)
        self.mlp = nn.Sequential(nn.GELU(), nn.Flatten(),
                                 nn.Linear(cfg.dsp_bins * cfg.dsp_channels, cfg.neural_hidden),
                                 nn.GELU(), nn.Dropout(cfg.dropout))
        self.out = nn.ModuleDict({t.name: nn.Linear(cfg.neural_hidden, t.num_outputs) for t in tasks})

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (emb * mask.unsqueeze(-1)).float()                        # (B, L, D)
        spec = torch.fft.rfft(x, n=self.n_fft, dim=1).abs()[:, : self.bins]  # (B, bins, D)
        h = self.mlp(self.channel_proj(torch.log1p(spec).to(emb.dtype)))  # (B, hidden)
        return {name: head(h) for name, head in self.out.items()}


class _Kalman(nn.Module):
    """Inverse-variance fusion: fused_t = sum_m softmax(-log_var_t)_m * pred_m,t."""

    def __init__(self, tasks: Sequence[TaskSpec], n_modules: int):
        super().__init__()
        self.log_var = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(n_modules)) for t in tasks})

    def forward(self, preds: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        fused = {}
        for task, stack in preds.items():
            w = torch.softmax(-self.log_var[task], dim=0)             # (M,)
            fused[task] = torch.einsum("m,mbc->bc", w.to(stack[0].dtype), torch.stack(stack))
        return fused


class RedHeart(nn.Module):
    """Reference multi-module model. forward(ids (B, L), mask (B, L)) -> module -> task -> (B, C)."""

    def __init__(self, cfg: RedHeartConfig, tasks: Sequence[TaskSpec]):
        super().__init__()
        if not tasks:
            raise ValueError("RedHeart needs at least one task, got none")
        self.cfg, self.tasks = cfg, tuple(tasks)
        d = cfg.d_model
        self.backbone = _ByteEncoder(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.max_length,
                                     cfg.dropout)
        self.heads = nn.ModuleDict({t.name: nn.Sequential(nn.Dropout(cfg.dropout),
                                                          nn.Linear(d, t.num_outputs))
                                    for t in tasks})
        self.neural = nn.ModuleDict({
            t.name: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.neural_hidden), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.neural_hidden, t.num_outputs))
            for t in tasks})
        self.dsp = _DSP(cfg, tasks)
        self.kalman = _Kalman(tasks, n_modules=4)  # heads, neural, dsp, advanced
        self.advanced = nn.ModuleDict({
            t.name: nn.ModuleDict({
                "encoder": _ByteEncoder(cfg.adv_d_model, cfg.adv_layers, cfg.adv_heads,
                                        cfg.adv_d_ff, cfg.max_length, cfg.dropout),
                "out": nn.Linear(cfg.adv_d_model, t.num_outputs)})
            for t in tasks})

    @property
    def group_spec(self) -> GroupSpec:
        names = [t.name for t in self.tasks]
        groups: dict[str, tuple[str, ...]] = {
            "group_a_backbone_heads": ("backbone.", "heads."),
            "group_b_neural": ("neural.",),
            "group_c_dsp_kalman": ("dsp.", "kalman."),
        }
        losses: dict[str, tuple[str, ...]] = {
            "group_a_backbone_heads": ("heads",),
            "group_b_neural": ("neural",),
            "group_c_dsp_kalman": ("dsp", "fused"),
        }
        for n in names:
            groups[f"advanced_{n}"] = (f"advanced.{n}.",)
            losses[f"advanced_{n}"] = (f"advanced_{n}",)
        return GroupSpec(
            groups=groups,
            group_losses=losses,
            independent=tuple(f"advanced_{n}" for n in names),
            layers=tuple(f"backbone.transformer_encoder.layers.{i}."
                         for i in range(self.cfg.n_layers)),
            below_layers=("backbone.embedding.", "backbone.position"),
            analyzers=("neural.", "dsp.", "kalman.", "advanced."),
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        emb, feat = self.backbone(ids, mask)                          # (B, L, D), (B, D)
        out: dict[str, dict[str, torch.Tensor]] = {
            "heads": {n: h(feat) for n, h in self.heads.items()},
            "neural": {n: m(feat) for n, m in self.neural.items()},
            "dsp": self.dsp(emb, mask),
        }
        for n, adv in self.advanced.items():
            _, adv_feat = adv["encoder"](ids, mask)                   # (B, D_adv)
            out[f"advanced_{n}"] = {n: adv["out"](adv_feat)}
        per_task = {n: [out["heads"][n], out["neural"][n], out["dsp"][n], out[f"advanced_{n}"][n]]
                    for n in self.heads}
        out["fused"] = self.kalman(per_task)
        return out


def preset_config(preset: str, **overrides: object) -> RedHeartConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


def build_model(
    preset: str = "tiny",
    tasks: Sequence[TaskSpec] | None = None,
    device: str | torch.device = "cpu",
    **overrides: object,
) -> RedHeart:
    """Build the reference model. ``tasks=None``: the embedded corpus' tasks.
    ``device="meta"`` allocates nothing (for counting parameters of big presets)."""
    cfg = preset_config(preset, **overrides)
    with torch.device(device):
        model = RedHeart(cfg, EMBEDDED_TASKS if tasks is None else tasks)
    n = sum(p.numel() for p in model.parameters())
    logger.debug("built RedHeart %s with %d parameters on %s", preset, n, device)
    return model
