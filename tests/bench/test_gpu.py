"""bench/gpu.py runs end to end in its CPU dry-run mode (the GPU run needs a lent machine)."""

from __future__ import annotations

import subprocess
import sys

from _runs import ROOT

from model.optimizers import available


def test_the_gpu_bench_dry_run_reports_every_section():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu",
                          "--big", "tiny", "--length", "32", "--accum", "2", "--steps", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.count("state round trip identical") == 2
    assert "| plain AdamW | yes |" in text and "| activation checkpointing | yes |" in text
    assert "4. projected long run (60 epochs x 10,000 rows" in text
    assert "5. activations per layer" in text
    worst = [float(row.split("|")[4].strip().rstrip("%")) for row in text.splitlines()
             if row.startswith(("| tiny |", "| small |", "| base |"))]
    assert len(worst) == 6 and max(worst) < 10.0  # every layer within 10% of the measurement
    if available("adamw8bit"):  # torchao's 8-bit AdamW runs on a CPU too (offload does not)
        assert "tiny adamw8bit: train loss" in text and "bit-identical to the unbroken" in text
        assert "| 8-bit AdamW, bf16 weights | yes |" in text
