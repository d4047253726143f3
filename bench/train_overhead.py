"""Overhead of the training engine against a bare PyTorch loop.

One epoch of ``model.training.train_one_epoch`` (extra techniques off) and one of a
bare loop over the same model weights, the same batches and the same optimizer,
alternated ``--rounds`` times in this one process. Prints each time, the median
ratio engine / bare (target <= 1.05), and, for reference, one epoch with every
technique on (R-Drop doubles the forward/backward work).

    python bench/train_overhead.py --rows 9000 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from model import ByteTokenizer, build_model, preset_config
from model.techniques import module_losses, total_loss
from model.training import (
    TrainConfig,
    batch_indices,
    build_engine,
    epoch_generator,
    steps_per_epoch,
    train_one_epoch,
)
from storage import load_embedded


def bare_epoch(model, data, tasks, cfg) -> float:
    """The 15-line loop: what anyone would write by hand."""
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_per_epoch(len(data), cfg))
    model.train()
    for index in batch_indices(len(data), cfg.batch_size, epoch_generator(cfg.seed, 1)):
        ids, mask, targets = data.batch(index, torch.device("cpu"))
        loss = total_loss(module_losses(model(ids, mask), targets, tasks), cfg.aux_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - start


def engine_epoch(model, data, tasks, cfg) -> float:
    start = time.perf_counter()
    engine = build_engine(model, model.group_spec, tasks, cfg, steps_per_epoch(len(data), cfg))
    train_one_epoch(engine, data, 1)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=9000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--preset", default="tiny")
    args = p.parse_args()

    ds = load_embedded(args.rows, seed=0)
    data = ds.encode(ds.records, ByteTokenizer(preset_config(args.preset).max_length))
    torch.manual_seed(0)
    initial = build_model(args.preset, ds.tasks)
    plain = TrainConfig.plain(epochs=1, progress=False)
    print(f"{args.preset}: {sum(p.numel() for p in initial.parameters()):,} parameters, "
          f"{len(data)} rows, batch {plain.batch_size}, torch threads {torch.get_num_threads()}")

    engine_s, bare_s = [], []
    for r in range(args.rounds):
        # Alternate which goes first so drift in machine load hits both alike.
        order = [("engine", engine_epoch), ("bare", bare_epoch)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            torch.manual_seed(0)
            s = fn(copy.deepcopy(initial), data, ds.tasks, plain)
            (engine_s if name == "engine" else bare_s).append(s)
        print(f"round {r + 1}: engine {engine_s[-1]:.2f} s  bare {bare_s[-1]:.2f} s  "
              f"ratio {engine_s[-1] / bare_s[-1]:.3f}")
    ratios = [e / b for e, b in zip(engine_s, bare_s, strict=True)]
    print(f"median seconds per epoch: engine {statistics.median(engine_s):.2f}  "
          f"bare {statistics.median(bare_s):.2f}")
    print(f"median ratio engine / bare: {statistics.median(ratios):.3f}  (target <= 1.05)")

    full = TrainConfig(epochs=1, progress=False)  # R-Drop, EMA, LLRD, smoothing, clipping
    torch.manual_seed(0)
    print(f"every technique on (R-Drop = two passes): "
          f"{engine_epoch(copy.deepcopy(initial), data, ds.tasks, full):.2f} s per epoch")


if __name__ == "__main__":
    main()
