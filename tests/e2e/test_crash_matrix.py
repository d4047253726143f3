"""The crash matrix: SIGKILL `run_study.py --smoke` at 12 points drawn by a seeded generator
from everything an unbroken run passes through (phases 0 to 4: half-written files, trained
but unreported epochs, half-written checkpoints, either side of the long run's early stop,
evaluated but unrecorded crossover trials, the test table), restarting after each kill; the
end result equals the unbroken run's."""

from __future__ import annotations

import random

import pytest
from _runs import STOP_EPOCH, crash_at, finish, outcome

KILLS = 12
SEED = 2026


def phase_of(trace: list[str]) -> dict[str, int]:
    """Each point's phase: the last ``phase:N`` marker before it."""
    phase, out = 0, {}
    for p in trace:
        if p.startswith("phase:"):
            phase = int(p.split(":")[1].split("#")[0])
        out.setdefault(p, phase)
    return out


def choose_points(trace: list[str], seed: int = SEED, k: int = KILLS) -> list[str]:
    """``k`` distinct first-time points of the trace, in trace order: one in each phase 0-4,
    a half-written checkpoint file, a crossover trial, both sides of the early stop (the
    stop epoch trained but not recorded; recorded, the loop not yet left), the rest
    anywhere."""
    firsts = [p for p in trace if p.endswith("#1")]
    phases = phase_of(trace)
    rng = random.Random(seed)
    chosen = {f"long:epoch={STOP_EPOCH}#1", f"long:decided={STOP_EPOCH}#1"}
    chosen.update(rng.choice([p for p in firsts if phases[p] == n]) for n in range(5))
    chosen.add(rng.choice([p for p in firsts if p.startswith("write:epoch_")]))
    chosen.add(rng.choice([p for p in firsts if p.startswith("crossover:trial:")]))
    chosen.update(rng.sample([p for p in firsts if p not in chosen], k - len(chosen)))
    return sorted(chosen, key=trace.index)


@pytest.mark.slow
def test_twelve_seeded_kills_across_every_phase_end_in_the_unbroken_result(tmp_path, unbroken_smoke):
    trace = unbroken_smoke["trace"]
    points = choose_points(trace)
    phases = phase_of(trace)
    assert len(points) == KILLS and {phases[p] for p in points} == {0, 1, 2, 3, 4}, points
    assert any(p.startswith("write:epoch_") for p in points)      # mid-checkpoint
    assert any(p.startswith("crossover:trial:") for p in points)  # mid-crossover trial
    assert f"long:decided={STOP_EPOCH}#1" in points and f"long:epoch={STOP_EPOCH}#1" in points
    assert f"long:epoch={STOP_EPOCH + 1}#1" not in trace          # the stop fired

    backup = tmp_path / "crashed"
    for point in points:
        crash_at(backup, point)          # asserts the process died by SIGKILL at that point
    finish(backup)
    assert outcome(backup) == unbroken_smoke["outcome"]
