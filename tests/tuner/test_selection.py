from __future__ import annotations

import pytest

from tuner.selection import SelectionWeights, criterion_scores, final_evaluation, select_lr


def _ev(avg_val_loss, stability=0.9, improvement=0.3, gap=0.0, total=0.5):
    return {"avg_val_loss": avg_val_loss, "stability_overall": stability,
            "relative_improvement": improvement, "overfit_gap": gap, "total_improvement": total,
            "convergence_rate": 0.1, "epochs": 5}


def test_final_evaluation_follows_the_seeds_definitions():
    history = [{"train_loss": t, "val_loss": v, "stability_score": s}
               for t, v, s in [(3.0, 3.1, 0.8), (2.5, 2.8, 0.9), (2.0, 2.6, 1.0), (1.8, 2.5, 0.7)]]
    ev = final_evaluation(history)
    assert ev["avg_val_loss"] == pytest.approx((2.8 + 2.6 + 2.5) / 3)
    assert ev["overfit_gap"] == pytest.approx(2.5 - 1.8)
    assert ev["total_improvement"] == pytest.approx(1.2)
    assert ev["relative_improvement"] == pytest.approx(0.4)
    assert ev["stability_overall"] == pytest.approx(0.85)
    assert ev["convergence_rate"] == pytest.approx((0.5 + 0.5 + 0.2) / 3)


def test_normalized_scores_are_scale_free():
    evs = {1e-4: _ev(2.0, 0.8, 0.2, 0.1), 2e-4: _ev(1.5, 0.9, 0.4, 0.3), 5e-4: _ev(1.8, 0.7, 0.3, 0.0)}
    scaled = {lr: {**ev, "avg_val_loss": ev["avg_val_loss"] * 100,
                   "overfit_gap": ev["overfit_gap"] * 100} for lr, ev in evs.items()}
    a, b = criterion_scores(evs), criterion_scores(scaled)
    for lr in evs:
        assert a[lr] == pytest.approx(b[lr])
    assert select_lr(evs)["selected_lr"] == select_lr(scaled)["selected_lr"]


def test_the_seeds_literal_formulas_depend_on_the_loss_scale():
    evs = {1e-4: _ev(0.5), 2e-4: _ev(0.4)}
    seed = criterion_scores(evs, "strategy")
    assert seed[1e-4]["val_loss"] == pytest.approx(1 / 1.5)
    assert seed[1e-4]["efficiency"] == pytest.approx(min(1.0, 0.5))
    assert seed[1e-4]["overfit"] == pytest.approx(1.0)


def test_the_best_candidate_on_every_criterion_wins_and_the_reason_says_so():
    evs = {1e-4: _ev(2.0, 0.8, 0.2, 0.2), 2e-4: _ev(1.5, 0.95, 0.5, 0.0), 5e-4: _ev(1.9, 0.9, 0.3, 0.1)}
    report = select_lr(evs)
    assert report["selected_lr"] == 2e-4
    assert report["selection_score"] == pytest.approx(1.0)
    assert "val loss" in report["selection_reason"]
    assert report["reasons"]["0.0002"].startswith("LR 0.0002: score 1.000 (best of 3)")
    assert set(report) >= {"selected_lr", "all_scores", "detailed_analysis", "selection_criteria",
                           "selection_reason", "timestamp"}
    assert report["selection_criteria"] == {"val_loss_weight": 0.4, "stability_weight": 0.2,
                                            "efficiency_weight": 0.2, "overfit_weight": 0.2}


def test_weights_decide_between_trade_offs():
    evs = {1e-4: _ev(1.0, stability=0.5), 2e-4: _ev(1.1, stability=1.0)}
    assert select_lr(evs)["selected_lr"] == 1e-4
    assert select_lr(evs, SelectionWeights(val_loss=0.1, stability=0.9))["selected_lr"] == 2e-4


def test_excluded_lrs_are_reported_and_never_selected():
    report = select_lr({1e-4: _ev(2.0)}, excluded={5e-4: "pruned: diverged"})
    assert report["selected_lr"] == 1e-4
    assert report["excluded"] == {"0.0005": "pruned: diverged"}


def test_equal_candidates_all_score_one_and_ties_go_to_the_lower_val_loss():
    scores = criterion_scores({1e-4: _ev(1.0), 2e-4: _ev(1.0)})
    assert all(v == 1.0 for s in scores.values() for v in s.values())


def test_nothing_to_select_and_bad_weights_are_errors():
    with pytest.raises(ValueError, match="no LR finished its sweep"):
        select_lr({})
    with pytest.raises(ValueError, match="weight val_loss must be >= 0"):
        SelectionWeights(val_loss=-1)
    with pytest.raises(ValueError, match="method must be"):
        criterion_scores({1e-4: _ev(1.0)}, "median")


def test_grid_edge_says_where_the_selected_lr_sits():
    from tuner.selection import grid_edge

    tried = [1e-3, 2e-3, 5e-3]
    assert grid_edge(5e-3, tried) == "upper"
    assert grid_edge(1e-3, tried) == "lower"
    assert grid_edge(2e-3, tried) is None


def test_the_next_lr_beyond_an_edge_is_one_geometric_step():
    from tuner.selection import next_lr_beyond

    assert next_lr_beyond([1e-3, 2e-3, 5e-3, 1e-2, 2e-2], "upper") == pytest.approx(4e-2)
    assert next_lr_beyond([1e-5, 5e-5, 1e-4], "lower") == pytest.approx(2e-6)
    assert next_lr_beyond([1e-3], "upper") == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="edge must be"):
        next_lr_beyond([1e-3], "middle")


def test_grid_verdict_names_an_edge_and_a_bracketed_optimum():
    from tuner.selection import grid_verdict

    # The largest completed LR with a pruned (diverging) one above it is bracketed.
    bracketed = grid_verdict(4e-2, [1e-2, 2e-2, 4e-2, 8e-2], [1e-2, 2e-2, 4e-2], [4e-2, 8e-2], 2)
    assert bracketed["interior"] and "0.08 pruned" in bracketed["message"]
    inside = grid_verdict(2e-2, [1e-2, 2e-2, 4e-2], [1e-2, 2e-2], [4e-2], 2)
    assert inside["interior"] and "interior" in inside["message"] and "0.04 pruned" in inside["message"]
    top = grid_verdict(4e-2, [1e-2, 2e-2, 4e-2], [1e-2, 2e-2, 4e-2], [4e-2], 1)
    assert top["edge"] == "upper" and not top["interior"]
    assert "largest LR tried" in top["message"] and "may lie above" in top["message"]
    assert "after 1 extension point(s)" in top["message"]
