"""The GPU check: one prepared script for a lent GPU machine, six minutes at most.

1. A smoke run on the device (``run_study.py --smoke``), unbroken, with its crash-point trace.
2. The same run again, unbroken: how far two runs differ on this device (the noise floor).
3. The same run SIGKILLed at three crash points taken from the first run's trace (mid
   phase 1, mid phase 2, inside the phase-4 crossover study), rerun after each kill, and
   finished by a last rerun.
4. The resumed outcome against the unbroken one: the LR sweep's and the long run's reported
   values, the crossover trials, final_results.json and the final model's sha256.
5. ``bench/gpu.py`` with fixed flags, in the time that is left (every CUDA path, the 730m
   memory options, the activation profile).

Every run_study.py child runs with ``torch.use_deterministic_algorithms(True,
warn_only=True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: kernels with a deterministic
version use it, and those without one are listed (torch warns once per call site) instead of
stopping the run. The check ends with one summary (each step: ok, FAILED or skipped, its
seconds and figures) and writes it with every child's log to ``--out``; it exits 1 when a
step failed.

    python bench/gpu_check.py                  # on the GPU machine
    python bench/gpu_check.py --dry-run        # the same steps on the CPU, small bench flags

On a machine without a package registry, install the wheelhouse first (docs/memory.md,
"An air-gapped GPU node"); without optuna the smoke steps are reported as failed and the
bench (torch only) still runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = "check"
SMOKE = ["--smoke", "--no-progress", "--study", STUDY, "--seed", "3"]
# The bench as run on the lent machine, and its CPU dry run (the flags of tests/bench).
BENCH_GPU = ["--device", "cuda"]
BENCH_CPU = ["--device", "cpu", "--big", "tiny", "--length", "32", "--accum", "2", "--steps", "1"]
BUDGET_S = 360  # the whole check
NEEDED = ("optuna", "optuna_dashboard", "rapidfuzz", "sqlalchemy", "safetensors", "sklearn")
# Runs the pipeline with deterministic kernels where torch has them (argv[1:]: its arguments).
DETERMINISTIC = ("import runpy, sys, torch; torch.use_deterministic_algorithms(True, "
                 "warn_only=True); sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
NONDETERMINISTIC = re.compile(r"UserWarning: (\S+) does not have a deterministic implementation")


@dataclass
class Step:
    name: str
    result: str = "skipped"
    seconds: float = 0.0
    figures: str = ""

    def row(self) -> str:
        return f"| {self.name} | {self.result} | {self.seconds:.0f} | {self.figures} |"


@dataclass
class Check:
    device: str
    out: Path
    deadline: float
    steps: list[Step] = field(default_factory=list)
    nondeterministic: set[str] = field(default_factory=set)

    def step(self, name: str) -> Step:
        self.steps.append(Step(name))
        return self.steps[-1]

    def run(self, step: Step, log: str, argv: list[str], env: dict | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a child, keep its output in ``out/<log>``, time it into ``step``."""
        start = time.perf_counter()
        left = max(1.0, self.deadline - time.monotonic())
        try:
            proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, **(env or {})},
                                  timeout=min(timeout or left, left))
        except subprocess.TimeoutExpired as e:
            proc = subprocess.CompletedProcess(argv, -1, _text(e.stdout),
                                               _text(e.stderr) + f"\n(timed out after {e.timeout:.0f} s)")
        step.seconds += time.perf_counter() - start
        (self.out / log).write_text(proc.stdout + proc.stderr, encoding="utf-8")
        self.nondeterministic |= set(NONDETERMINISTIC.findall(proc.stderr))
        return proc

    def smoke(self, step: Step, backup: Path, log: str, env: dict | None = None,
              ) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", DETERMINISTIC, str(ROOT / "run_study.py"), *SMOKE,
                "--device", self.device, "--backup-dir", str(backup)]
        return self.run(step, log, argv, {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", **(env or {})})


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1][:160] if lines else f"exit {proc.returncode}"


# ------------------------------------------------------------------------- the outcome

def outcome(backup: Path) -> dict:
    """What a run reports, for comparing runs: each study's reported values (per trial
    that finished, keyed by what it did, not its number: a killed trial leaves a failed one
    behind and its work is redone under the next number), final_results.json without its
    timestamp, and the final model's sha256."""
    import optuna
    from optuna.trial import TrialState

    session = backup / STUDY
    results = json.loads((session / "final_results.json").read_text())
    results.pop("timestamp", None)
    model = session / "final" / "optimal_crossover_model.safetensors"
    storage = f"sqlite:///{backup / STUDY}.db"
    studies = {}
    for suffix in ("lr-sweep", "long-run", "crossover"):
        study = optuna.load_study(study_name=f"{STUDY}-{suffix}", storage=storage)
        studies[suffix] = sorted(
            (json.dumps(t.params, sort_keys=True), t.state.name, t.value,
             sorted(t.intermediate_values.items()))
            for t in study.get_trials(deepcopy=False,
                                      states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return {"final_results": results, "studies": studies,
            "final_model_sha256": hashlib.sha256(model.read_bytes()).hexdigest()}


def _leaves(value, path: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{path}/{key}").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}[{i}]").items()}
    return {path: value}


def compare(a: dict, b: dict) -> dict:
    """How far two outcomes differ: the differing leaves, the largest absolute difference
    of numbers, and the first few paths."""
    la, lb = _leaves(a), _leaves(b)
    differ = sorted(k for k in la.keys() | lb.keys() if la.get(k, object()) != lb.get(k, object()))
    gaps = [abs(la[k] - lb[k]) for k in differ if k in la and k in lb
            and isinstance(la[k], int | float) and isinstance(lb[k], int | float)
            and math.isfinite(la[k]) and math.isfinite(lb[k])]
    return {"values": len(la), "differ": len(differ), "max_abs_diff": max(gaps, default=0.0),
            "first": differ[:5],
            "same_decisions": all(la.get(k) == lb.get(k) for k in la
                                  if k.startswith(("/final_results/best_lr",
                                                   "/final_results/crossover_recipe/method",
                                                   "/final_results/sweet_spots")))}


def _said(c: dict) -> str:
    if not c["differ"]:
        return f"identical ({c['values']} values and the final model's sha256)"
    return (f"{c['differ']} of {c['values']} values differ, max |diff| {c['max_abs_diff']:.3g}, "
            f"same LR, sweet spots and final candidate: {'yes' if c['same_decisions'] else 'NO'}"
            f" (first: {', '.join(c['first'][:3])})")


def kill_points(trace: list[str]) -> list[str]:
    """Three crash points in pipeline order: the first epoch of the second LR tried, the
    middle epoch of the long run, the second crossover trial (those that exist)."""
    lrs = list(dict.fromkeys(p.split(":epoch=")[0] for p in trace if p.startswith("sweep:")))
    long = [p for p in trace if p.startswith("long:epoch=")]
    cross = [p for p in trace if p.startswith("crossover:trial:")]
    picks = [next((p for p in trace if p.startswith(f"{lrs[1]}:epoch=")), None) if len(lrs) > 1
             else None, long[len(long) // 2] if long else None, cross[1] if len(cross) > 1 else None]
    return [p for p in picks if p]


# ---------------------------------------------------------------------------- the steps

def check_smoke(check: Check, work: Path) -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    first, repeat = check.step("smoke run, unbroken"), check.step("smoke run, again (noise floor)")
    killed, versus = check.step("smoke run, killed 3 times and resumed"), check.step(
        "resumed vs unbroken")
    if missing:
        for s in (first, repeat, killed, versus):
            s.result, s.figures = "FAILED", f"not installed: {', '.join(missing)} (wheelhouse)"
        return
    trace = work / "trace.txt"
    proc = check.smoke(first, work / "a", "smoke_unbroken.log", {"REDHEART_CRASH_TRACE": str(trace)})
    if proc.returncode != 0:
        first.result, first.figures = "FAILED", _tail(proc)
        return
    unbroken = outcome(work / "a")
    row = next(r for r in unbroken["final_results"]["test_table"]
               if r["candidate"] == unbroken["final_results"]["crossover_recipe"]["method"])
    first.result = "ok"
    first.figures = (f"LR {unbroken['final_results']['best_lr']:g}, final model "
                     f"{row['candidate']}, test acc {row['test_acc']:.4f}, sha256 "
                     f"{unbroken['final_model_sha256'][:12]}")

    proc = check.smoke(repeat, work / "b", "smoke_again.log")
    floor = None
    if proc.returncode != 0:
        repeat.result, repeat.figures = "FAILED", _tail(proc)
    else:
        floor = compare(unbroken, outcome(work / "b"))
        repeat.result, repeat.figures = "ok", _said(floor)

    points = kill_points(trace.read_text().split())
    for i, point in enumerate(points):
        proc = check.smoke(killed, work / "c", f"smoke_killed_{i + 1}.log",
                           {"REDHEART_CRASH_AT": point})
        if proc.returncode != -signal.SIGKILL:
            killed.result = "FAILED"
            killed.figures = f"not killed at {point}: {_tail(proc)}"
            return
    proc = check.smoke(killed, work / "c", "smoke_resumed.log")
    if proc.returncode != 0:
        killed.result, killed.figures = "FAILED", f"the last rerun: {_tail(proc)}"
        return
    killed.result, killed.figures = "ok", f"killed at {', '.join(points)}; the rerun finished"
    got = compare(unbroken, outcome(work / "c"))
    versus.figures = _said(got)
    if not got["differ"]:
        versus.result = "ok"
    elif floor is not None and floor["differ"]:
        versus.result = "ok"  # two unbroken runs differ too: the kernels, not the resume
        versus.figures += "; two unbroken runs differ as well"
    else:
        versus.result = "FAILED"


def check_bench(check: Check, dry_run: bool) -> None:
    step = check.step("bench/gpu.py")
    left = check.deadline - time.monotonic()
    if left < 30:
        step.figures = f"not run: {max(left, 0):.0f} s of the {BUDGET_S} s budget left"
        return
    flags = BENCH_CPU if dry_run else BENCH_GPU
    proc = check.run(step, "bench_gpu.log", [sys.executable, str(ROOT / "bench" / "gpu.py"),
                                             *flags, "--json", str(check.out / "bench_gpu.json")])
    if proc.returncode != 0:
        step.result, step.figures = "FAILED", _tail(proc)
        return
    bench = json.loads((check.out / "bench_gpu.json").read_text())
    fits = [r for r in bench["capped"] if r["fits"]]
    figures = [f"{len(fits)} of {len(bench['capped'])} options fit"
               + (f" under {bench['budget_gib']:g} GiB" if bench["budget_gib"] else "")]
    for r in [*bench["capped"], bench["uncapped"]]:
        if r["fits"] and r.get("peak_gib") is not None:
            figures.append(f"{r['option']}: peak {r['peak_gib']:.2f} GiB / planned "
                           f"{r['planned_gib']:.2f}"
                           + (f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""))
    if bench["projected_hours"] is not None:
        figures.append(f"projected long run {bench['projected_hours']:.1f} h")
    figures.append(f"worst activation layer {bench['worst_activation_layer_pct']:.1f}% off")
    step.result, step.figures = "ok", "; ".join(figures)


def _device_line(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}")
    return f"cpu (dry run), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true",
                   help="run every step on the CPU with the bench's small flags")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the summary and the logs (default: a new temp folder)")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    check = Check(device, out, time.monotonic() + BUDGET_S)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_runs_") as work:
        check_smoke(check, Path(work))
    check_bench(check, args.dry_run)

    failed = [s for s in check.steps if s.result != "ok"]
    lines = [f"== GPU check: {_device_line(device)} ==",
             "determinism: torch.use_deterministic_algorithms(True, warn_only=True), "
             "CUBLAS_WORKSPACE_CONFIG=:4096:8; ops without a deterministic kernel: "
             + (", ".join(sorted(check.nondeterministic)) or "none seen"),
             "| step | result | seconds | figures |", "|---|---|---|---|",
             *(s.row() for s in check.steps),
             f"RESULT: {len(check.steps) - len(failed)} ok, {len(failed)} failed or not run, "
             f"{time.perf_counter() - started:.0f} s; logs in {out}"]
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(
        {"device": _device_line(device), "nondeterministic_ops": sorted(check.nondeterministic),
         "steps": [vars(s) for s in check.steps]}, indent=2), encoding="utf-8")
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
