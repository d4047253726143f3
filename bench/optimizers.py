"""The memory options side by side: planned memory, measured state bytes, step time, loss.

Every option this device can run trains the same model from the same initial weights on the
same batches of the real embedded corpus, one epoch at a time in turn (so a slow patch of
the machine hits them all). Printed per option:

- the planned GPU bytes of this run's shape and of the 730m preset at the strategy's batch
  (4 x 16, length 256, R-Drop, EMA) with that option, and whether 730m fits 7.0 GiB;
- the state bytes measured from the real tensors after training (weights, optimizer state,
  EMA) against the plan's figures for the same parts;
- the median seconds per optimizer step over the epochs after the first (the first
  compiles torchao's step), as a ratio to plain AdamW;
- the validation loss after each epoch, and the largest gap to plain AdamW's.

    python bench/optimizers.py --preset small --rows 2000 --epochs 6

adamw-offload needs CUDA (torchao asserts it) and runs only there; bench/gpu.py measures
the options on a GPU under the 7.0 GiB cap.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from model import ByteTokenizer, build_model, preset_config
from model.memory import (
    GIB,
    TrainShape,
    estimate_step_seconds,
    lowbit_step_temporary_bytes,
    plan_memory,
    tensor_bytes,
)
from model.optimizers import available, state_tensor_bytes
from model.training import (
    EncodedData,
    TrainConfig,
    build_engine,
    run_epoch,
    steps_per_epoch,
)
from storage import load_embedded

# (label, optimizer, activation checkpointing, EMA device)
OPTIONS = (
    ("adamw", "adamw", False, None),
    ("adamw + checkpointing", "adamw", True, None),
    ("adamw + CPU EMA", "adamw", False, "cpu"),
    ("adamw8bit", "adamw8bit", False, None),
    ("adamw8bit + checkpointing", "adamw8bit", True, None),
    ("adamw8bit + checkpointing + CPU EMA", "adamw8bit", True, "cpu"),
    ("adamw-offload", "adamw-offload", False, None),
)


def _split(data: EncodedData, n_train: int) -> tuple[EncodedData, EncodedData]:
    def take(sl: slice) -> EncodedData:
        return EncodedData(data.ids[sl], data.mask[sl], {k: v[sl] for k, v in data.targets.items()})
    return take(slice(0, n_train)), take(slice(n_train, None))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)

    ds = load_embedded(args.rows, seed=0)
    length = preset_config(args.preset).max_length
    train, val = _split(ds.encode(ds.records, ByteTokenizer(length)), int(0.8 * args.rows))
    runnable = [o for o in OPTIONS if available(o[1])
                and (device.type == "cuda" or o[1] != "adamw-offload")
                and (device.type == "cuda" or o[3] is None)]  # on a CPU the CPU EMA is the EMA
    skipped = [o[0] for o in OPTIONS if o not in runnable]

    engines = {}
    for label, opt, ckpt, ema_device in runnable:
        cfg = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                          grad_accum=args.grad_accum, optimizer=opt, ema_device=ema_device,
                          progress=False, seed=0)
        torch.manual_seed(0)
        model = build_model(args.preset, ds.tasks, activation_checkpointing=ckpt)
        engines[label] = build_engine(model, model.group_spec, ds.tasks, cfg,
                                      steps_per_epoch(len(train), cfg), device)
    losses = {k: [] for k in engines}
    step_s = {k: [] for k in engines}
    for epoch in range(1, args.epochs + 1):  # in turn: every option's epoch e, then e + 1
        for label, engine in engines.items():
            m = run_epoch(engine, train, val, epoch)
            losses[label].append(m["val_loss"])
            if epoch > 1:
                step_s[label].append(m["seconds"] / m["optimizer_steps"])

    big = build_model("730m", device="meta")
    print(f"{args.preset} preset, {len(train)} train / {len(val)} val rows of the embedded "
          f"corpus, batch {args.batch_size} x {args.grad_accum}, lr {args.lr}, {args.epochs} "
          f"epochs, {device.type}; 730m planned at 4 x 16, length 256, R-Drop, EMA, bf16\n")
    print("| option | 730m plan GiB (7.0?) | 730m est. step s | state bytes measured / "
          "planned | step time vs adamw (median) | final val loss | max gap to adamw |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(step_s["adamw"]) if step_s["adamw"] else float("nan")
    shape = TrainShape(args.batch_size, length, "fp32" if device.type == "cpu" else "bf16")
    for label, opt, ckpt, ema_device in runnable:
        engine = engines[label]
        big_shape = TrainShape(4, 256, "bf16", True, ema_device is None, ckpt, opt)
        big_gib = plan_memory(big, big_shape)["total"] / GIB
        est = estimate_step_seconds(big, big_shape, 16)["total"]
        planned = plan_memory(build_model(args.preset, ds.tasks, device="meta"),
                              TrainShape(shape.batch_size, shape.seq_len, shape.precision,
                                         True, ema_device is None, ckpt, opt))
        measured = (tensor_bytes(engine.model.state_dict().values())
                    + state_tensor_bytes(engine.optimizer)
                    + (tensor_bytes(engine.ema.module.state_dict().values())
                       if engine.ema is not None and ema_device is None else 0))
        temporaries = (lowbit_step_temporary_bytes(engine.model.parameters())
                       if opt == "adamw8bit" else 0)  # planned, not kept
        plan_state = (planned["weights"] + planned["optimizer_state"] - temporaries
                      + planned["ema"])
        gap = max(abs(a - b) for a, b in zip(losses[label], losses["adamw"], strict=True))
        ratio = statistics.median(step_s[label]) / base if step_s[label] else float("nan")
        print(f"| {label} | {big_gib:.2f} ({'fits' if big_gib <= 7.0 else 'no'}) | {est:.2f} | "
              f"{measured / 2**20:.2f} / {plan_state / 2**20:.2f} MiB | {ratio:.2f} | "
              f"{losses[label][-1]:.4f} | {gap:.4f} |")
    print("\nval loss per epoch:")
    for label, curve in losses.items():
        print(f"  {label:40s} " + " ".join(f"{v:.4f}" for v in curve))
    if skipped:
        print(f"\nnot run on {device.type}: {', '.join(skipped)}")


if __name__ == "__main__":
    main()
