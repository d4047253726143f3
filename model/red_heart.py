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
from torch.utils.checkpoint import checkpoint

from .groups import GroupSpec
from .tasks import EMBEDDED_TASKS, TaskSpec
from .tokenizer import PAD_ID, VOCAB_SIZE

logger = logging.getLogger(__name__)


_BACKBONES = ("transformer", "ngram")


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
    # The DSP module's FFT length (positions past it are left out): None = max_length. A
    # long max_length for long texts need not make every batch's FFT that long.
    dsp_length: int | None = None
    dsp_channels: int = 8
    adv_d_model: int = 16
    adv_layers: int = 1
    adv_heads: int = 2
    adv_d_ff: int = 32
    dropout: float = 0.1
    # "transformer": byte attention (GPU presets). "ngram": hashed byte n-gram embeddings,
    # cheap on CPU; then n_layers/n_heads/d_ff (and the adv_ ones) are unused.
    backbone: str = "transformer"
    ngram_orders: int = 3  # character n-grams of length 1..ngram_orders
    # Word n-grams of length 1..word_ngrams beside the character ones (0: none); a word is
    # a run of non-space characters, ASCII letters lowercased (fastText's word features).
    word_ngrams: int = 0
    ngram_buckets: int = 2**16  # hash table rows of the backbone (row 0 = padding)
    adv_ngram_buckets: int = 2**14  # hash table rows of each advanced analyzer
    # Keep only each transformer layer's input for backward and recompute the rest
    # (torch.utils.checkpoint): activation memory of one layer instead of all of them.
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {_BACKBONES}, got {self.backbone!r}")
        if self.ngram_orders < 1:
            raise ValueError(f"ngram_orders must be >= 1, got {self.ngram_orders!r}")
        if self.word_ngrams not in (0, 1, 2):
            raise ValueError(f"word_ngrams must be 0, 1 or 2, got {self.word_ngrams!r}")
        if self.ngram_buckets < 2:
            raise ValueError(f"ngram_buckets must be >= 2, got {self.ngram_buckets!r}")
        if self.adv_ngram_buckets < 2:
            raise ValueError(f"adv_ngram_buckets must be >= 2, got {self.adv_ngram_buckets!r}")
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
        if self.dsp_length is not None and self.dsp_length < 2:
            raise ValueError(f"dsp_length must be >= 2, got {self.dsp_length!r}")
        if not 1 <= self.dsp_bins <= self.fft_length // 2 + 1:
            raise ValueError(
                f"dsp_bins must be in [1, fft_length // 2 + 1], got {self.dsp_bins!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def fft_length(self) -> int:
        """The DSP module's FFT length."""
        return self.dsp_length or self.max_length


PRESETS: dict[str, RedHeartConfig] = {
    # CPU default: hashed character 1-4-grams and word 1-2-grams (fastText's features, and
    # the TF-IDF baseline's character range), in the strategy's regime (far more parameters
    # than training rows: 10.1M, ~1,400 per training row of the default 10,000-row sample)
    # and fast on 2 cores (the tables train sparse). max_length 512 bytes keeps 96% of the
    # Rotten Tomatoes snippets whole (128 cut 42% of them) and caps what one huge row can
    # pad a batch to; the DSP module's FFT stays at 128 positions.
    "ngram": RedHeartConfig(backbone="ngram", ngram_orders=4, word_ngrams=2, d_model=64,
                            max_length=512, dsp_length=128, neural_hidden=128, dsp_bins=16,
                            dsp_channels=8, adv_d_model=32, ngram_buckets=2**17,
                            adv_ngram_buckets=2**14),
    # The smallest byte transformer (tests and quick checks).
    "tiny": RedHeartConfig(),
    "small": RedHeartConfig(d_model=128, n_layers=4, n_heads=4, d_ff=512, max_length=64,
                            neural_hidden=128, adv_d_model=64, adv_layers=1, adv_heads=4,
                            adv_d_ff=128),
    "base": RedHeartConfig(d_model=384, n_layers=6, n_heads=6, d_ff=1536, max_length=128,
                           neural_hidden=384, dsp_bins=32, dsp_channels=16, adv_d_model=128,
                           adv_layers=2, adv_heads=4, adv_d_ff=512),
    # The strategy's scale: ~730M parameters (tests check within 3% on the meta device).
    "730m": RedHeartConfig(d_model=1536, n_layers=24, n_heads=16, d_ff=6144, max_length=256,
                           neural_hidden=1536, dsp_bins=64, dsp_channels=32, adv_d_model=768,
                           adv_layers=2, adv_heads=12, adv_d_ff=3072),
}
# The ngram preset at toy size (0.5M parameters; `run_study.py --smoke` and the tests): the
# same modules and groups, with tables small enough that a checkpoint is 2 MB.
PRESETS["ngram-tiny"] = replace(PRESETS["ngram"], ngram_buckets=2**12, adv_ngram_buckets=2**10)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), mask (B, L) bool -> (B, D) mean over the real tokens."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class _ByteEncoder(nn.Module):
    """Byte embedding + learned positions + pre-norm transformer; pooled output."""

    def __init__(self, d: int, layers: int, heads: int, d_ff: int, max_length: int, dropout: float,
                 checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
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
        """-> (embedded (B, L, D), zero past the text, and pooled features (B, D))."""
        emb = self.embed(ids)
        h = self.dropout(emb)
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # The loop TransformerEncoder runs, one checkpoint per layer; the dropout RNG
            # state is replayed on recompute, so gradients equal the plain run's.
            for layer in self.transformer_encoder.layers:
                h = checkpoint(layer, h, None, ~mask, use_reentrant=False)
        else:
            h = self.transformer_encoder(h, src_key_padding_mask=~mask)
        return emb * mask.unsqueeze(-1), _masked_mean(self.norm(h), mask)


_HASH_PRIME = 2_147_483_647  # 2**31 - 1: h * 1_000_003 + a character code stays inside int64
_END_CODE = 1 << 36  # above every packed character (4 bytes x 9 bits)


def _character_codes(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 byte ids (B, L) -> one integer per character (B, W) and its mask (B, W).

    A byte starts a character unless it is a continuation byte (0x80-0xBF); CLS counts
    as a character, so n-grams see where a text starts, and one end-of-text code
    (``_END_CODE``) follows the last character, so they see where it ends (fastText's
    word boundaries; on the kaomoji corpus the end marker alone is +0.9 pt of held-out
    accuracy over three initialisations). A character's code packs its (at most 4)
    bytes, 9 bits each: distinct characters get distinct codes, all below ``_END_CODE``.
    """
    start = mask & ~((ids >= 0x80) & (ids < 0xC0))                  # (B, L)
    char = start.long().cumsum(1) - 1                                # (B, L) char of each byte
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.where(start, pos, 0).cummax(1).values             # (B, L) its first byte
    shift = (9 * (pos - first)).clamp(max=36)
    value = torch.where(mask & (char >= 0), (ids + 1) << shift, 0)  # (B, L)
    n_chars = start.sum(1)                                           # (B,)
    width = int(n_chars.max()) + 1                                   # + the end marker
    codes = torch.zeros(ids.shape[0], width, dtype=torch.long, device=ids.device)
    codes.scatter_add_(1, char.clamp(0, width - 1), value)
    codes.scatter_(1, n_chars.unsqueeze(1), _END_CODE)               # right after the text
    valid = torch.arange(width, device=ids.device) <= n_chars.unsqueeze(1)
    return codes, valid


_SPACES = torch.tensor([0x20, 0x09, 0x0A, 0x0D]) + 1  # character codes of ASCII whitespace
# Position multipliers of the word hash (any distinct odd numbers below the prime will do).
_WORD_MIX = 2 * torch.arange(1, 65, dtype=torch.long) * 2_654_435 + 1
_WORD_TAG = 101  # word n-gram orders hash apart from character n-gram orders (1..orders)


def _word_hashes(codes: torch.Tensor, valid_chars: torch.Tensor, words: int) -> list[torch.Tensor]:
    """Hashed word n-grams of character codes (B, W) -> ``words`` tensors (B, W): at the
    first character of word k, the hash of words k-n+1..k (n = 1..words); -1 elsewhere.

    A word is a run of characters that are not ASCII whitespace, CLS or the end marker.
    Its hash sums each character's code (ASCII letters lowercased) times a multiplier of
    its place in the word, mod the prime: order-sensitive, vectorised, no vocabulary.
    """
    b, w = codes.shape
    pos = torch.arange(w, device=codes.device).expand(b, w)
    lower = codes + 32 * ((codes >= 0x41 + 1) & (codes <= 0x5A + 1))   # A-Z -> a-z (code = byte + 1)
    is_word = (valid_chars & ~torch.isin(codes, _SPACES.to(codes.device)) & (pos > 0)
               & (codes != _END_CODE))                                  # (B, W)
    prev = torch.nn.functional.pad(is_word[:, :-1], (1, 0), value=False)
    start = is_word & ~prev                                             # (B, W) word starts
    k = start.long().cumsum(1) - 1                                      # (B, W) word index
    first = torch.where(start, pos, 0).cummax(1).values                 # its first character
    place = (pos - first).clamp(max=_WORD_MIX.numel() - 1)
    term = torch.where(is_word, (lower % _HASH_PRIME) * _WORD_MIX.to(codes.device)[place]
                       % _HASH_PRIME, 0)
    n_words = int(start.sum(1).max()) if b else 0
    sums = torch.zeros(b, n_words + 1, dtype=torch.long, device=codes.device)
    sums.scatter_add_(1, torch.where(is_word, k, n_words), term)
    word = sums[:, :n_words] % _HASH_PRIME                              # (B, K)
    at = torch.zeros(b, n_words + 1, dtype=torch.long, device=codes.device)
    at.scatter_(1, torch.where(start, k, n_words), pos)                 # (B, K+1) start places
    exists = torch.arange(n_words, device=codes.device) < start.sum(1, keepdim=True)  # (B, K)
    out, h = [], word
    for n in range(1, words + 1):
        if n > 1:  # words k-n+1..k: extend the (n-1)-gram ending at k-1 by word k
            h = torch.nn.functional.pad(h[:, :-1], (1, 0))
            h = (h * 1_000_003 + word) % _HASH_PRIME
        ok = exists & (torch.arange(n_words, device=codes.device) >= n - 1)
        tagged = torch.where(ok, (h * 1_009 + _WORD_TAG + n) % _HASH_PRIME, -1)   # (B, K)
        grid = torch.full((b, w + 1), -1, dtype=torch.long, device=codes.device)
        grid.scatter_(1, torch.where(ok, at[:, :n_words], w), tagged)
        out.append(grid[:, :w])
    return out


def ngram_hashes(ids: torch.Tensor, mask: torch.Tensor, orders: int,
                 words: int = 0) -> torch.Tensor:
    """Hashed character n-grams of UTF-8 byte ids (B, L) -> (B, W, orders + words) int64,
    where [b, i, n-1] hashes the n-gram of characters i..i+n-1 and W is the batch's longest
    text in characters plus its end marker; -1 where the n-gram runs past the marker. The
    last ``words`` slots hold word n-grams (``_word_hashes``) at their words' starts.

    A polynomial rolling hash mod a prime with the order mixed in, so equal hashes of
    different lengths land apart. Pure tensor ops: no vocabulary, any script, any device.
    """
    codes, valid_chars = _character_codes(ids, mask)                 # (B, W)
    h = torch.zeros_like(codes)
    valid = torch.ones_like(valid_chars)
    out = []
    for n in range(1, orders + 1):
        # character i+n-1 for every start i (none past the end): (B, W)
        nxt = torch.nn.functional.pad(codes[:, n - 1:], (0, n - 1))
        valid = valid & torch.nn.functional.pad(valid_chars[:, n - 1:], (0, n - 1), value=False)
        h = (h * 1_000_003 + nxt) % _HASH_PRIME
        out.append(torch.where(valid, (h * 1_009 + n) % _HASH_PRIME, -1))
    if words:
        out += _word_hashes(codes, valid_chars, words)
    return torch.stack(out, dim=-1)


class _NgramEncoder(nn.Module):
    """Hashed character (and word) n-gram embeddings (fastText-style, Joulin et al. 2017).

    Takes the n-gram hashes (``ngram_hashes``, computed once per forward for every
    encoder of the model) and maps them onto rows 1.. of its own table (row 0 is never
    looked up and stays zero). ``per_position``: each character position's vector is the sum
    of the embeddings of the n-grams that start there (B, W, D), for the DSP module; otherwise
    only the pooled feature is made. The pooled feature is the sum over the text divided
    by the square root of the number of n-grams, so long and short texts land on one scale.

    The table is an ``nn.EmbeddingBag`` (one fused lookup-and-sum, no (M, D) intermediate)
    marked ``sparse``: a batch touches a few thousand of its rows, and the engine trains
    them with sparse gradients and SparseAdam (see ``model.training``). It has no
    ``padding_idx``: only n-grams that exist are looked up, and on CPU the padding-aware
    kernel made the lookup about 7x slower (0.33 ms against 0.05 ms for a 2,432-bag batch).
    """

    def __init__(self, d: int, buckets: int, dropout: float, per_position: bool = True):
        super().__init__()
        self.buckets, self.per_position = buckets, per_position
        self.embedding = nn.EmbeddingBag(buckets, d, mode="sum", sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, hashes: torch.Tensor, copies: int = 1
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """hashes (B, W, N) -> (per-character vectors (B, W, D), zero past the text, or
        None when not ``per_position``; pooled features (copies * B, D)).

        ``copies``: the pooled features are repeated that many times before dropout, as
        if the batch had been (copies * B) rows of ``copies`` identical blocks (R-Drop's
        two passes): the lookups and their sparse gradient are made once, and each copy
        still draws its own dropout mask."""
        b, w, _ = hashes.shape
        valid = hashes >= 0                                           # (B, W, N)
        # Only the n-grams that exist (M of them, in (b, w, n) order): a batch is padded to
        # its longest text, about 3x the mean on the kaomoji corpus.
        rows = 1 + hashes[valid] % (self.buckets - 1)                 # (M,)
        total = valid.sum((1, 2))                                     # (B,) n-grams per text
        counts = (valid.sum(-1) if self.per_position else total).flatten()  # one per bag
        offsets = counts.cumsum(0) - counts                           # each bag's first n-gram
        bags = self.embedding(rows, offsets)                          # (B*W, D) or (B, D)
        if self.per_position:
            emb = bags.view(b, w, -1)                                 # (B, W, D)
            pooled = emb.sum(1)
        else:
            emb, pooled = None, bags
        pooled = pooled / total.clamp(min=1).unsqueeze(-1).to(pooled.dtype).sqrt()  # (B, D)
        if copies > 1:
            pooled = pooled.repeat(copies, 1)                         # (copies * B, D)
        return emb, self.norm(self.dropout(pooled))


class _DSP(nn.Module):
    """Magnitude spectrum of the embedded sequence (projected to a few channels) along
    positions.

    The FFT length is fixed (``fft_length``: ``dsp_length`` or max_length) so a frequency
    bin means the same thing whatever the batch's padded length is.
    """

    def __init__(self, cfg: RedHeartConfig, tasks: Sequence[TaskSpec]):
        super().__init__()
        self.n_fft, self.bins = cfg.fft_length, cfg.dsp_bins
        # No bias: positions past the text stay 0 after the projection.
        self.channel_proj = nn.Linear(cfg.d_model, cfg.dsp_channels, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Flatten(),
                                 nn.Linear(cfg.dsp_bins * cfg.dsp_channels, cfg.neural_hidden),
                                 nn.GELU(), nn.Dropout(cfg.dropout))
        self.out = nn.ModuleDict({t.name: nn.Linear(cfg.neural_hidden, t.num_outputs) for t in tasks})

    def forward(self, emb: torch.Tensor, copies: int = 1) -> dict[str, torch.Tensor]:
        """emb (B, L, D) -> task -> (copies * B, C); the spectrum is computed once and
        repeated ``copies`` times before the MLP's dropout (see ``_NgramEncoder``)."""
        # Project to a few channels first, so the FFT runs over C channels instead of D.
        x = self.channel_proj(emb[:, : self.n_fft]).float()           # (B, L', C), 0 past the text
        spec = torch.fft.rfft(x, n=self.n_fft, dim=1).abs()[:, : self.bins]  # (B, bins, C)
        if copies > 1:
            spec = spec.repeat(copies, 1, 1)                          # (copies * B, bins, C)
        h = self.mlp(torch.log1p(spec).to(emb.dtype))                 # (copies * B, hidden)
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
        self.backbone = (
            _NgramEncoder(d, cfg.ngram_buckets, cfg.dropout)
            if cfg.backbone == "ngram"
            else _ByteEncoder(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.max_length, cfg.dropout,
                              cfg.activation_checkpointing))
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
                "encoder": (
                    _NgramEncoder(cfg.adv_d_model, cfg.adv_ngram_buckets, cfg.dropout,
                                  per_position=False)
                    if cfg.backbone == "ngram"
                    else _ByteEncoder(cfg.adv_d_model, cfg.adv_layers, cfg.adv_heads, cfg.adv_d_ff,
                                      cfg.max_length, cfg.dropout, cfg.activation_checkpointing)),
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
                         for i in range(self.cfg.n_layers if self.cfg.backbone == "transformer" else 0)),
            below_layers=("backbone.embedding.", "backbone.position"),
            analyzers=("neural.", "dsp.", "kalman.", "advanced."),
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor,
                copies: int = 1) -> dict[str, dict[str, torch.Tensor]]:
        """ids, mask (B, L) -> module -> task -> (copies * B, C).

        ``copies`` > 1 equals ``forward(ids.repeat(copies, 1), mask.repeat(copies, 1))``
        (R-Drop's passes, each with its own dropout masks, drawn in the same order). The
        n-gram backbone does its deterministic work once (hashing, lookups, the DSP
        spectrum) and repeats the result before the first dropout: on the default run
        the lookups' sparse gradient, coalesced before clipping and again read by
        SparseAdam, is half as long.
        """
        if self.cfg.backbone != "ngram" and copies > 1:
            ids, mask, copies = ids.repeat(copies, 1), mask.repeat(copies, 1), 1
        # The n-gram backbone and analyzers share one hashing of the text: (B, W, N).
        inputs = ((ngram_hashes(ids, mask, self.cfg.ngram_orders, self.cfg.word_ngrams),)
                  if self.cfg.backbone == "ngram" else (ids, mask))
        extra = {"copies": copies} if copies > 1 else {}
        emb, feat = self.backbone(*inputs, **extra)                   # (B, L, D), (copies*B, D)
        out: dict[str, dict[str, torch.Tensor]] = {
            "heads": {n: h(feat) for n, h in self.heads.items()},
            "neural": {n: m(feat) for n, m in self.neural.items()},
            "dsp": self.dsp(emb, copies),
        }
        for n, adv in self.advanced.items():
            _, adv_feat = adv["encoder"](*inputs, **extra)            # (copies * B, D_adv)
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
