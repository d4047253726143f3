from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from model import build_model
from model.training import EncodedData, TrainConfig
from storage import Session
from tuner.context import RunContext
from tuner.lr_sweep import SweepConfig, open_sweep_study, run_lr_sweep, sweep_outcome
from tuner.pruning import PruneRule, prune_reason

RULE = PruneRule(divergence_factor=1.5, margin=0.1, warmup_epochs=2, last_epoch=5)


def test_non_finite_and_diverging_losses_prune_at_once():
    assert "not finite" in prune_reason(math.nan, 1, 5.0, [], RULE)
    assert "not finite" in prune_reason(math.inf, 1, 5.0, [], RULE)
    assert "diverging" in prune_reason(7.6, 1, 5.0, [], RULE)
    assert prune_reason(7.4, 1, 5.0, [], RULE) is None


def test_a_clearly_worse_loss_prunes_after_warmup_and_before_the_last_epoch():
    assert prune_reason(3.0, 1, 5.0, [2.0], RULE) is None      # warm-up
    assert "above the best finished" in prune_reason(2.3, 2, 5.0, [2.0, 2.5], RULE)
    assert prune_reason(2.19, 2, 5.0, [2.0], RULE) is None     # within the 10% margin
    assert prune_reason(3.0, 5, 5.0, [2.0], RULE) is None      # last epoch: let it finish
    assert prune_reason(3.0, 3, 5.0, [], RULE) is None         # nothing to compare with


def test_bad_rules_are_rejected():
    with pytest.raises(ValueError, match="divergence_factor"):
        PruneRule(divergence_factor=1.0)


def _subset(data: EncodedData, sl: slice) -> EncodedData:
    return EncodedData(data.ids[sl], data.mask[sl], {k: v[sl] for k, v in data.targets.items()})


@pytest.mark.slow
def test_a_diverging_lr_and_a_clearly_worse_lr_are_pruned_in_a_real_sweep(tmp_path, embedded_small):
    ds, data = embedded_small
    train, val = _subset(data, slice(0, 480)), _subset(data, slice(480, 600))
    session = Session.create(tmp_path, "s")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    cfg = SweepConfig(lr_grid=(3e-3, 50.0, 1e-7), epochs=3)
    study = open_sweep_study(storage, "s-lr-sweep", cfg, seed=0)

    def build():
        torch.manual_seed(0)
        m = build_model("tiny", ds.tasks)
        return m, m.group_spec

    ctx = RunContext(tasks=ds.tasks, build=build, train=train, val=val, session=session)
    run_lr_sweep(study, cfg, TrainConfig(progress=False, batch_size=32), ctx)
    by_lr = {t.params["lr"]: t for t in study.trials}
    assert by_lr[3e-3].state == TrialState.COMPLETE
    diverged, slow = by_lr[50.0], by_lr[1e-7]
    assert diverged.state == TrialState.PRUNED and diverged.last_step == 1
    assert "diverg" in diverged.user_attrs["pruned_reason"]
    assert slow.state == TrialState.PRUNED and slow.last_step == 2  # before its last epoch
    assert "above the best finished" in slow.user_attrs["pruned_reason"]
    assert "epoch_001" in slow.user_attrs  # pruned trials keep their metrics
    evaluations, excluded, _ = sweep_outcome(study)
    assert list(evaluations) == [3e-3] and set(excluded) == {50.0, 1e-7}
    assert (tmp_path / "s" / "lr_sweep" / "lr_1e-07_metrics.json").is_file()
