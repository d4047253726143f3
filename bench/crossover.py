"""Cost of assembling one crossover model against loading one whole checkpoint.

Both read the same model's group files from disk (page cache not controlled; the files
sit in it for both) and check each file's size and sha256 against its manifest. Whole:
every group file of one epoch with safetensors load_file. Crossover: each group from a
different epoch via safe_open.

    python bench/crossover.py --preset base --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from model import build_model
from storage.checkpoints import save_checkpoint, verify_file
from tuner import crossover


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model(args.preset)
    spec = model.group_spec
    groups = list(spec.groups)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        epochs = [2 * (i + 1) for i in range(len(groups))]
        for e in epochs:
            save_checkpoint(root, e, model, spec, {})
        recipe = dict(zip(groups, epochs, strict=True))
        whole_s, cross_s = [], []
        for r in range(args.repeats):
            crossover._VERIFIED.clear()
            for name in (("whole", "cross") if r % 2 == 0 else ("cross", "whole")):
                start = time.perf_counter()
                if name == "whole":
                    folder = root / "epoch_002"
                    state = {}
                    for g in groups:  # the same per-file check as assembly does
                        state.update(load_file(verify_file(folder, f"{g}.safetensors")))
                    model.load_state_dict(state)
                    whole_s.append(time.perf_counter() - start)
                else:
                    crossover.load_crossover(model, root, recipe, spec)
                    cross_s.append(time.perf_counter() - start)
    w, c = statistics.median(whole_s), statistics.median(cross_s)
    print(f"{args.preset}: {len(groups)} groups, each from a different epoch")
    print(f"median seconds: whole checkpoint {w:.4f}, crossover {c:.4f}; "
          f"crossover / whole {c / w:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()
