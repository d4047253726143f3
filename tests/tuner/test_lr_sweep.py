"""Grid claims: every worker works out the same owner of each LR from the trial numbers."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner.lr_sweep import claim_order, grid_claims

GRID = (1e-3, 1e-2, 1e-1)


def _trial(number: int, state: TrialState, lr: float | None = None) -> optuna.trial.FrozenTrial:
    params = {} if lr is None else {"lr": lr}
    dists = {} if lr is None else {"lr": FloatDistribution(lr, lr)}
    value = 1.0 if state == TrialState.COMPLETE else None
    t = create_trial(state=state, value=value, params=params, distributions=dists)
    t.number = number
    return t


def _alive(t: optuna.trial.FrozenTrial) -> bool:
    return False  # is_gone: no worker is gone


def test_claims_go_largest_lr_first_in_trial_number_order():
    assert claim_order(GRID) == [1e-1, 1e-2, 1e-3]
    trials = [_trial(0, TrialState.COMPLETE, 1e-1), _trial(1, TrialState.RUNNING),
              _trial(2, TrialState.RUNNING)]
    # Trials 1 and 2 have no LR yet: each takes the next free point in claim order.
    assert grid_claims(trials, GRID, _alive) == {0: 1e-1, 1: 1e-2, 2: 1e-3}


def test_a_trial_asked_after_every_point_was_claimed_gets_none():
    trials = [_trial(i, TrialState.RUNNING) for i in range(4)]
    assert grid_claims(trials, GRID, _alive)[3] is None


def test_a_failed_or_dead_trial_frees_its_point_for_a_later_trial():
    trials = [_trial(0, TrialState.FAIL, 1e-1), _trial(1, TrialState.RUNNING, 1e-2),
              _trial(2, TrialState.RUNNING)]
    assert grid_claims(trials, GRID, _alive)[2] == 1e-1
    dead = {1}
    claims = grid_claims(trials, GRID, lambda t: t.number in dead)
    assert 1 not in claims and claims[2] == 1e-1
    trials.append(_trial(3, TrialState.RUNNING))
    assert grid_claims(trials, GRID, lambda t: t.number in dead)[3] == 1e-2


def test_the_lower_trial_number_owns_a_point_two_trials_have():
    trials = [_trial(0, TrialState.COMPLETE, 1e-2), _trial(1, TrialState.COMPLETE, 1e-2)]
    assert grid_claims(trials, GRID, _alive) == {0: 1e-2, 1: None}


def test_a_pruned_trial_without_an_lr_owns_nothing():
    trials = [_trial(0, TrialState.PRUNED), _trial(1, TrialState.RUNNING)]
    assert grid_claims(trials, GRID, _alive) == {1: 1e-1}
