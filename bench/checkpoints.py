"""Checkpoint cost: our modular safetensors checkpoint against the strategy's scheme.

Seed (section 4.1): torch.save of the model states by group, the full optimizer state
and the metrics, plus a gzip copy of the same. Ours: one safetensors file per module
group plus the EMA weights and a manifest; optimizer state only in the rolling resume
state (not counted per checkpoint, it is overwritten). Same model, same optimizer
state, alternated ``--repeats`` times in one process; medians and ratios.

    python bench/checkpoints.py --preset base --repeats 5
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from model import build_model
from model.techniques import build_ema
from storage.checkpoints import save_checkpoint


def seed_save(folder: Path, epoch: int, model, optimizer, spec, metrics) -> int:
    checkpoint = {
        "epoch": epoch, "timestamp": datetime.now().isoformat(),
        "optimizer_state": optimizer.state_dict(), "metrics": metrics,
        "model_states": {g: spec.group_state(model, g) for g in spec.groups},
    }
    main = folder / f"epoch_{epoch:03d}.pt"
    torch.save(checkpoint, main)
    backup = folder / f"epoch_{epoch:03d}_backup.pt.gz"
    with gzip.open(backup, "wb") as fh:
        torch.save(checkpoint, fh)
    return main.stat().st_size + backup.stat().st_size


def ours_save(folder: Path, epoch: int, model, ema, spec, metrics) -> int:
    save_checkpoint(folder, epoch, model, spec, metrics, ema.module.state_dict())
    return sum(p.stat().st_size for p in (folder / f"epoch_{epoch:03d}").iterdir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_model(args.preset)
    spec = model.group_spec
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (8, 32))
    out = model(ids, torch.ones_like(ids, dtype=torch.bool))
    sum(v.float().pow(2).mean() for d in out.values() for v in d.values()).backward()
    optimizer.step()  # fills exp_avg / exp_avg_sq, as in a real run
    ema = build_ema(model, 0.999)
    ema.update_parameters(model)
    metrics = {"train_loss": 1.0, "val_loss": 1.1}
    param_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    ours_s, seed_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in (("ours", "seed") if r % 2 == 0 else ("seed", "ours")):
                folder = Path(tmp) / f"{name}_{r}"
                folder.mkdir()
                start = time.perf_counter()
                if name == "ours":
                    ours_bytes = ours_save(folder, 2, model, ema, spec, metrics)
                    ours_s.append(time.perf_counter() - start)
                else:
                    seed_bytes = seed_save(folder, 2, model, optimizer, spec, metrics)
                    seed_s.append(time.perf_counter() - start)

    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{param_bytes / 2**20:.2f} MiB of parameters and buffers")
    print(f"ours: {ours_bytes / 2**20:.2f} MiB per checkpoint (groups + EMA + manifest) = "
          f"{ours_bytes / (2 * param_bytes):.4f} x the bytes of the tensors it stores (target <= 1.05)")
    print(f"seed: {seed_bytes / 2**20:.2f} MiB per checkpoint (.pt with optimizer + gzip copy) = "
          f"{seed_bytes / param_bytes:.2f} x the parameter bytes")
    print(f"bytes per checkpoint, seed / ours: {seed_bytes / ours_bytes:.2f}x")
    ours_med, seed_med = statistics.median(ours_s), statistics.median(seed_s)
    print(f"median seconds to save: ours {ours_med:.3f}, seed {seed_med:.3f}; "
          f"seed / ours {seed_med / ours_med:.2f}x")


if __name__ == "__main__":
    main()
