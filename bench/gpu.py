"""One prepared GPU benchmark for a lent machine (torch only, plus this repository's model/).

1. Every CUDA path once: a few training and evaluation steps of the ``tiny`` and ``small``
   presets in bf16 autocast and in fp16 with the GradScaler, and an engine state round trip
   (save on the GPU, load into a fresh engine, same weights).
2. The ``730m`` preset at the strategy's batch (4 rows x 16 accumulation, 256 bytes, R-Drop)
   with the memory capped at ``--budget-gib`` (``torch.cuda.set_per_process_memory_fraction``),
   for each option: fits or not, peak GiB measured against the plan, time per micro-batch,
   tokens/s and model-FLOPs utilisation against the device's bf16 peak; then without the cap,
   and the projected wall time of the strategy's 60-epoch long run on 10,000 rows.
5. Activations per layer: the profile (``model.activations``: measured at three small
   shapes on the device, scaled) against a measurement at the run's shape, for the ``tiny``,
   ``small`` and ``base`` presets, without and with activation checkpointing.

    python bench/gpu.py                       # on the lent GPU (about 3-4 minutes)
    python bench/gpu.py --device cpu --big tiny --length 32 --accum 2   # a dry run anywhere

bench/gpu_check.py runs it as its last step, after a smoke run killed and resumed on the device.

The options: plain AdamW, activation checkpointing, the EMA on the CPU, and with torchao
installed (the lent machine has no registry: install from a wheelhouse, docs/memory.md,
"An air-gapped GPU node") bf16 weights with 8-bit AdamW and AdamW
offloaded to the CPU, each alone and with checkpointing and the CPU EMA. With torchao, step 1
also trains both of its optimizers on the GPU, resumes them from a state round trip and
checks the next epoch is bit-identical to an unbroken run's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:  # the lent machine has torch only: model/training.py's progress bars become no-ops
    import tqdm.auto  # noqa: F401
except ImportError:
    _stub = types.ModuleType("tqdm.auto")
    _stub.tqdm = lambda it=None, *a, **k: it
    sys.modules.update({"tqdm": types.ModuleType("tqdm"), "tqdm.auto": _stub})

from model import build_model, preset_config
from model.activations import OUTSIDE, is_stacked, measure_saved, profile_activations
from model.memory import GIB, TrainShape, encoders_of, plan_memory
from model.optimizers import available
from model.tasks import EMBEDDED_TASKS
from model.training import (
    EncodedData,
    TrainConfig,
    build_engine,
    evaluate,
    train_one_epoch,
)

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), by device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "V100": 125.0}


def _data(rows: int, length: int, device: str) -> EncodedData:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 256, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.bool)  # every row full: the worst case
    targets = {t.name: (torch.randint(0, t.num_outputs, (rows,), generator=g) if t.kind == "single"
                        else (torch.rand(rows, t.num_outputs, generator=g) < 0.05).float())
               for t in EMBEDDED_TASKS}
    return EncodedData(ids, mask, targets)


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def check_paths(device: str, steps: int) -> None:
    """tiny and small: bf16 and fp16 training, evaluation, and a state round trip."""
    precisions = ("bf16", "fp16") if _cuda(device) else ("fp32",)
    for preset in ("tiny", "small"):
        for precision in precisions:
            torch.manual_seed(0)
            model = build_model(preset)
            cfg = TrainConfig(batch_size=8, epochs=2, precision=precision, progress=False)
            data = _data(8 * steps, model.cfg.max_length, device)
            engine = build_engine(model, model.group_spec, model.tasks, cfg, steps, device)
            m = train_one_epoch(engine, data, 1)
            v = evaluate(model, data, model.tasks, device=engine.device, amp_dtype=engine.amp_dtype)
            tensors, plain = engine.state_dict()
            saved = {k: t.detach().cpu().clone() for k, t in tensors.items()}
            again = build_engine(build_model(preset), model.group_spec, model.tasks, cfg, steps,
                                 device)
            again.load_state_dict({k: t.to(engine.device) if k != "rng.torch" else t
                                   for k, t in saved.items()}, plain)
            same = all(torch.equal(a.cpu(), b.cpu()) for a, b in
                       zip(model.state_dict().values(), again.model.state_dict().values(),
                           strict=True))
            scaler = engine.scaler.is_enabled()
            print(f"  {preset:5s} {precision}: train loss {m['train_loss']:.4f}, val loss "
                  f"{v['loss']:.4f}, GradScaler {'on' if scaler else 'off'}, state round trip "
                  f"{'identical' if same else 'DIFFERS'}")


def check_optimizers(device: str, steps: int) -> None:
    """torchao's optimizers on the device: two epochs unbroken against one epoch, a state
    round trip through the CPU (as a resume file stores it) and the second epoch."""
    names = [n for n in ("adamw8bit", "adamw-offload") if available(n)
             and (_cuda(device) or n != "adamw-offload")]
    if not names:
        print("  torchao not installed: 8-bit AdamW and the offload optimizer not checked")
    for name in names:
        cfg = TrainConfig(batch_size=8, epochs=2, precision="bf16" if _cuda(device) else "fp32",
                          progress=False, optimizer=name)

        def engine(cfg: TrainConfig = cfg):
            torch.manual_seed(0)
            model = build_model("tiny")
            return build_engine(model, model.group_spec, model.tasks, cfg, steps, device)

        data = _data(8 * steps, build_model("tiny", device="meta").cfg.max_length, device)
        unbroken = engine()
        for epoch in (1, 2):
            train_one_epoch(unbroken, data, epoch)
        first = engine()
        train_one_epoch(first, data, 1)
        tensors, plain = first.state_dict()
        saved = {k: t.detach().cpu().clone() for k, t in tensors.items()}
        resumed = engine()
        resumed.load_state_dict(saved, plain)
        m = train_one_epoch(resumed, data, 2)
        same = all(torch.equal(a.cpu(), b.cpu()) for a, b in
                   zip(unbroken.model.state_dict().values(),
                       resumed.model.state_dict().values(), strict=True))
        print(f"  tiny {name}: train loss {m['train_loss']:.4f}, resumed from a state round "
              f"trip: {'bit-identical' if same else 'DIFFERS'} to the unbroken run")


def _flops_per_micro_batch(model: torch.nn.Module, rows: int, length: int) -> float:
    """Training FLOPs of one micro-batch: 6 x parameters x tokens (forward and backward)
    plus attention's 12 x layers x width x length per token (Chowdhery et al. 2022)."""
    n = sum(p.numel() for p in model.parameters())
    attention = sum(12 * e.layers * e.d_model * length for e in encoders_of(model))
    return rows * length * (6 * n + attention)


def bench_option(name: str, preset: str, shape: TrainShape, accum: int, device: str,
                 budget_gib: float | None, steps: int) -> dict:
    """(``shape.optimizer`` and ``shape.ema_on_gpu`` pick the optimizer and the EMA's place.)"""
    """One option on the big preset; 'fits' is False when building or a step runs out of
    memory under the cap."""
    if _cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, budget_gib * GIB / total) if budget_gib else 1.0)
    meta = build_model(preset, device="meta",
                       activation_checkpointing=shape.activation_checkpointing)
    planned = plan_memory(meta, shape)["total"] / GIB
    result = {"option": name, "planned_gib": planned, "fits": False}
    try:
        torch.manual_seed(0)
        model = build_model(preset, activation_checkpointing=shape.activation_checkpointing)
        cfg = TrainConfig(batch_size=shape.batch_size, grad_accum=accum, epochs=2,
                          precision="bf16" if _cuda(device) else "fp32", progress=False,
                          r_drop=1.0 if shape.r_drop else 0.0, ema_decay=0.999,
                          optimizer=shape.optimizer,
                          ema_device=None if shape.ema_on_gpu else "cpu")
        data = _data(shape.batch_size * accum, shape.seq_len, device)
        engine = build_engine(model, model.group_spec, model.tasks, cfg, 1, device)
        engine.spec = None
        train_one_epoch(engine, data, 1)  # warm-up: allocator, kernels, optimizer state
        times = []
        for step in range(steps):
            if _cuda(device):
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_one_epoch(engine, data, 2 + step)
            if _cuda(device):
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / accum)
        micro = statistics.median(times)
        tokens = shape.batch_size * shape.seq_len * (2 if shape.r_drop else 1)
        flops = _flops_per_micro_batch(model, shape.batch_size * (2 if shape.r_drop else 1),
                                       shape.seq_len)
        name_ = torch.cuda.get_device_name(device) if _cuda(device) else "cpu"
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name_), None)
        result.update(fits=True, micro_batch_s=micro, tokens_per_s=tokens / micro,
                      mfu=(flops / micro / (peak * 1e12)) if peak else None,
                      peak_gib=(torch.cuda.max_memory_allocated(device) / GIB
                                if _cuda(device) else None))
        del engine, model
    except torch.OutOfMemoryError:
        result["error"] = "out of memory"
    finally:
        if _cuda(device):
            torch.cuda.empty_cache()
    return result


def _row(r: dict) -> str:
    if not r["fits"]:
        return f"| {r['option']} | no ({r.get('error', '')}) | - | {r['planned_gib']:.2f} | - | - | - |"
    peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    return (f"| {r['option']} | yes | {peak} | {r['planned_gib']:.2f} | "
            f"{1000 * r['micro_batch_s']:.0f} ms | {r['tokens_per_s']:,.0f} | {mfu} |")


def check_activations(device: str, rows: int, length: int) -> list[str]:
    """Per preset: the largest per-layer difference of the scaled profile from a measurement
    at ``rows`` x ``length``, and both totals, without and with checkpointing."""
    from model.plugin import build

    def batch(r: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(5, 200, (r, s), generator=torch.Generator().manual_seed(0))
        return ids.to(device), torch.ones(r, s, dtype=torch.bool, device=device)

    lines = ["| preset | checkpointing | layers | worst layer | planned MiB | measured MiB |",
             "|---|---|---|---|---|---|"]
    for preset in ("tiny", "small", "base"):
        limit = preset_config(preset).max_length
        for ckpt in (False, True):
            model, _ = build(None, preset, EMBEDDED_TASKS, limit, activation_checkpointing=ckpt)
            model.to(device)
            plain, _ = build(None, preset, EMBEDDED_TASKS, limit)
            estimate = profile_activations(plain.to(device), batch).estimate(
                rows, min(length, limit), checkpointing=ckpt)
            measured = measure_saved(model, rows, min(length, limit), batch)
            kept = {n: (m.inputs if ckpt and is_stacked(n) else m.saved)
                    for n, m in measured.items() if not (ckpt and n == OUTSIDE)}
            worst = max(abs(estimate[n] - b) / b for n, b in kept.items() if b > 0)
            lines.append(f"| {preset} | {'yes' if ckpt else 'no'} | {len(kept)} | "
                         f"{100 * worst:.1f}% | {sum(estimate[n] for n in kept) / 2**20:.1f} | "
                         f"{sum(kept.values()) / 2**20:.1f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--big", default="730m", help="the preset to fit (default: 730m)")
    p.add_argument("--budget-gib", type=float, default=7.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per option")
    p.add_argument("--rows", type=int, default=10_000, help="rows of the projected long run")
    p.add_argument("--epochs", type=int, default=60, help="epochs of the projected long run")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the options' results and the activation table here")
    args = p.parse_args()
    started = time.perf_counter()
    name = torch.cuda.get_device_name(args.device) if _cuda(args.device) else "cpu"
    print(f"device: {name}; torch {torch.__version__}")

    print("1. CUDA paths (tiny, small):" if _cuda(args.device) else "1. paths (tiny, small):")
    check_paths(args.device, steps=2)
    check_optimizers(args.device, steps=2)

    shape = TrainShape(args.batch, args.length, "bf16" if _cuda(args.device) else "fp32")
    budget = args.budget_gib if _cuda(args.device) else None
    header = ["| option | fits | peak GiB | planned GiB | per micro-batch | tokens/s | MFU |",
              "|---|---|---|---|---|---|---|"]
    lean = {"activation_checkpointing": True, "ema_on_gpu": False}
    options = [("plain AdamW", shape),
               ("activation checkpointing", replace(shape, activation_checkpointing=True)),
               ("checkpointing + CPU EMA", replace(shape, **lean))]
    if available("adamw8bit"):
        options += [("8-bit AdamW, bf16 weights", replace(shape, optimizer="adamw8bit")),
                    ("8-bit AdamW + checkpointing + CPU EMA",
                     replace(shape, optimizer="adamw8bit", **lean))]
    if available("adamw-offload") and _cuda(args.device):
        options.append(("offloaded AdamW + checkpointing + CPU EMA",
                        replace(shape, optimizer="adamw-offload", **lean)))
    capped = [bench_option(label, args.big, s, args.accum, args.device, budget, args.steps)
              for label, s in options]
    print(f"\n2. {args.big}, batch {args.batch} x {args.accum}, length {args.length}, R-Drop, "
          f"budget {f'{budget:.1f} GiB' if budget else 'none (CPU)'}:")
    print("\n".join(header + [_row(r) for r in capped]))
    uncapped = bench_option("plain AdamW, no cap", args.big, shape, args.accum, args.device,
                            None, args.steps)
    print("\n3. without the cap:")
    print("\n".join([*header, _row(uncapped)]))
    for r in [*capped, uncapped]:
        if r["fits"] and r.get("peak_gib") is not None:
            print(f"   {r['option']}: measured / planned peak = {r['peak_gib'] / r['planned_gib']:.3f}")
    best = min((r for r in [*capped, uncapped] if r["fits"]), key=lambda r: r["micro_batch_s"],
               default=None)
    hours = None
    if best is not None:
        hours = best["micro_batch_s"] * (args.rows / args.batch) * args.epochs / 3600
        print(f"\n4. projected long run ({args.epochs} epochs x {args.rows:,} rows, "
              f"{best['option']}, training only): {hours:.1f} h")
    print(f"\n5. activations per layer, the scaled profile against a measurement "
          f"({args.batch} x {min(args.length, 128)}):")
    activations = check_activations(args.device, args.batch, min(args.length, 128))
    print("\n".join(activations))
    if args.json is not None:
        worst = [float(row.split("|")[4].strip().rstrip("%")) for row in activations[2:]]
        args.json.write_text(json.dumps({
            "device": name, "capped": capped, "uncapped": uncapped, "budget_gib": budget,
            "projected_hours": hours, "worst_activation_layer_pct": max(worst, default=None)},
            indent=2), encoding="utf-8")
    print(f"\nbench/gpu.py finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
