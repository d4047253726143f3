"""The report for people: final/report.md (the plots beside it are ``tuner.plots``).

Everything here is drawn from what the phases wrote (the selection report, the LR
curves, the long run's epoch reports, the sweet-spot analysis, the crossover trials,
the test table); nothing is recomputed. Plots use matplotlib's object API (no pyplot
state, no display) and are written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from storage import Session, atomic_write_bytes, read_json

from .plots import (
    PLOTS,
    plot_crossover_search,
    plot_learning_curves,
    plot_lr_schedule,
    plot_lr_sweep,
    plot_test_table,
    save_plot,
)
from .uncertainty import verdict

logger = logging.getLogger(__name__)


def fmt(x: Any, digits: int = 4) -> str:
    """A number for tables and logs: 4 decimals; "-" for a missing one."""
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _other_tasks(row: Mapping[str, Any], primary: str, split: str) -> str:
    metrics = row.get(f"{split}_task_metrics") or {}
    parts = [f"{task} {k} {v:.3f}" for task, m in metrics.items() if task != primary
             for k, v in m.items() if k != "accuracy"]
    return "; ".join(parts) or "-"


def data_section(results: Mapping[str, Any]) -> list[str]:
    dup, split = results["data_stats"]["duplicates"], results["data_stats"]["split"]
    return [
        "## Data (phase 0)", "",
        f"- {dup['original_count']} rows in, {dup['cleaned_count']} after near-duplicate removal "
        f"(rapidfuzz ratio >= {dup['threshold_used']}).",
        f"- Split: {split['train_count']} train, {split['val_count']} val, {split['test_count']} "
        f"test; {split['leakage_detected']} near-duplicates across splits removed from val/test.", ""]


def lr_section(best_lr: float, selection: Mapping[str, Any]) -> list[str]:
    lines = ["## Learning rate (phase 1)", "",
             f"**Selected LR {best_lr:g}**: {selection['selection_reason']}.", "",
             "| LR | total | val loss | stability | efficiency | overfit |",
             "|---|---|---|---|---|---|"]
    for lr, d in sorted(selection["detailed_analysis"].items(), key=lambda kv: float(kv[0])):
        lines.append(f"| {float(lr):g} | {d['total_score']:.3f} | {d['val_loss_score']:.3f} | "
                     f"{d['stability_score']:.3f} | {d['efficiency_score']:.3f} | "
                     f"{d['overfit_score']:.3f} |")
    lines += [f"- LR {lr}: not selectable ({why})" for lr, why in selection["excluded"].items()]
    grid = selection.get("grid")
    if grid:
        lines += ["", f"**Grid:** {grid['message']}. Tried: "
                  f"{', '.join(f'{lr:g}' for lr in grid['tried'])}"
                  + (f" (extended by {', '.join(f'{lr:g}' for lr in grid['extended'])})"
                     if grid["extended"] else "") + "."]
    return [*lines, "", "![LR sweep](lr_sweep.png)", "![LR schedule](lr_schedule.png)", ""]


def sweet_spot_section(analysis: Mapping[str, Any]) -> list[str]:
    monitor = analysis.get("monitor", "val_loss")
    lines = ["## Long run, overfitting point and sweet spots (phases 2 and 3)", "",
             f"Monitor: `{monitor}` (every decision of phases 3 and 4). Decided by "
             f"`{analysis['decided_by']}`: overfitting point "
             f"{analysis['overfitting_point'] or 'none (no criterion fired)'}.", "",
             "| criterion | watches | fires at epoch | overfitting point |", "|---|---|---|---|"]
    for name, c in analysis["criteria"].items():
        lines.append(f"| {name} | {c.get('watches', '-')} | {fmt(c['fires_at_epoch'])} | "
                     f"{fmt(c['overfitting_point'])} |")
    lines += ["", f"Sweet spots by `{analysis.get('method', 'module-loss')}` (setting "
                  f"`{analysis.get('method_setting', '-')}`):", "",
              "| group | sweet spot | method | score | why |", "|---|---|---|---|---|"]
    for group, s in analysis["sweet_spots"].items():
        lines.append(f"| {group} | {s['epoch']} | {s.get('method', 'module-loss')} | "
                     f"{s['score']:.4f} | {s['reason']} |")
    lines += splice_table(analysis)
    skipped = analysis.get("skipped_checkpoints") or {}
    lines += [f"- checkpoint epoch {e} skipped: {why}" for e, why in skipped.items()]
    return [*lines, "", "![Learning curves](learning_curves.png)", ""]


def splice_table(analysis: Mapping[str, Any]) -> list[str]:
    """The per-group evidence: the monitor on val per checkpoint, each group spliced into
    the reference checkpoint with every other group held there."""
    spliced = analysis.get("curves", {}).get("spliced") or {}
    if not spliced:
        return []
    epochs = sorted({int(e) for per in spliced.values() for e in per})
    lines = ["", f"Per-group evidence: `{analysis.get('monitor', 'val_loss')}` on val of the "
                 f"reference checkpoint (epoch {analysis.get('reference_epoch')}) with only the "
                 "group's weights taken from each checkpoint (`-`: beyond the overfitting "
                 "point, not evaluated).", "",
             "| group | " + " | ".join(str(e) for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for group, per in spliced.items():
        lines.append(f"| {group} | " + " | ".join(fmt(per.get(str(e))) for e in epochs) + " |")
    return lines


def recipe_text(recipe: Mapping[str, Any]) -> str:
    """A recipe for people: ``group: epoch`` or ``group: soup of epochs a-b (n)``."""
    parts = []
    for group, value in recipe.items():
        if isinstance(value, list | tuple) and len(value) > 1:
            parts.append(f"{group}: soup of epochs {value[0]}-{value[-1]} ({len(value)})")
        else:
            parts.append(f"{group}: {value[0] if isinstance(value, list | tuple) else value}")
    return "; ".join(parts)


def crossover_section(crossover: Mapping[str, Any]) -> list[str]:
    monitor = crossover.get("monitor", "val_loss")
    return ["## Crossover search (phase 4)", "",
            f"Each group takes one checkpoint or a window of consecutive checkpoints averaged "
            f"(a per-group soup). {crossover['n_complete']} completed trials; best `{monitor}` "
            f"{crossover['best_value']:.4f} with {recipe_text(crossover['best_params'])}.", "",
            "![Crossover search](crossover_search.png)", ""]


def _ci(row: Mapping[str, Any], metric: str) -> str:
    ci = (row.get("test_ci") or {}).get(metric)
    return "" if ci is None else f" [{ci['ci'][0]:.3f}, {ci['ci'][1]:.3f}]"


def test_section(results: Mapping[str, Any], primary: str) -> list[str]:
    table = results["test_table"]
    lines = ["## Test table", "",
             "Every candidate is chosen on val; the test split is read only for this table. "
             "Rows marked *reference* (a TF-IDF + logistic-regression baseline and the majority "
             "class, fitted on the same train split, tuned on val) are never candidates for the "
             "final model. Brackets: 95% bootstrap intervals over the test rows.", "",
             "| candidate | val loss | test loss | val acc | test acc | val macro-F1 | "
             "test macro-F1 | other tasks (test) |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        name = f"{r['candidate']} (*reference*)" if r.get("reference") else r["candidate"]
        lines.append(f"| {name} | {fmt(r['val_loss'])} | {fmt(r['test_loss'])} | "
                     f"{fmt(r['val_acc'])} | {fmt(r['test_acc'])}{_ci(r, 'acc')} | "
                     f"{fmt(r['val_macro_f1'])} | {fmt(r['test_macro_f1'])}{_ci(r, 'macro_f1')} | "
                     f"{_other_tasks(r, primary, 'test')} |")
    verdicts = [r["verdict"] for r in table if r.get("verdict") and r is not table[0]]
    if verdicts:
        ci = table[0]["test_ci"]
        lines += ["", f"**Against the best single checkpoint** (test accuracy, paired bootstrap: "
                      f"{ci['resamples']} resamples of the same rows for both, seed {ci['seed']}, "
                      f"{ci['level']:.0%} intervals):", "", *[f"- {v}." for v in verdicts]]
    recipe = results["crossover_recipe"]
    final = next((r for r in table if r["candidate"] == recipe["method"]), None)
    if final is not None and "acc_vs_linear_baseline" in (final.get("test_ci") or {}):
        ci = final["test_ci"]
        lines += ["", "**Final model against the linear baseline** (paired bootstrap): test "
                      f"accuracy, {verdict(final['candidate'], ci, 'linear_baseline')}; test "
                      f"macro-F1, {verdict(final['candidate'], ci, 'linear_baseline', 'macro_f1')}."]
    return [*lines, "", "![Test table](test_table.png)", "", "## Final model", "",
            f"`final/optimal_crossover_model.safetensors`: **{recipe['method']}** (val accuracy "
            f"{recipe['val_acc']:.4f}, val loss {recipe['val_loss']:.4f}; test loss "
            f"{fmt(recipe['test_loss'])}, test accuracy {fmt(recipe['test_acc'])}). A prediction "
            "ensemble is several models, so it is reported but not a candidate for this file. "
            "Recipe in `final/recipe.json`.", "", *final_choice_lines(results)]


def final_choice_lines(results: Mapping[str, Any]) -> list[str]:
    """How the final model was chosen: the rule, the rows, the nominee and its gain."""
    choice = results.get("final_choice")
    if not choice:
        recipe = results["crossover_recipe"]
        return [f"Chosen as the single model best on val under {recipe.get('chosen_on', 'val')}.", ""]
    split = choice["val_split"]
    lines = [f"**How it was chosen.** The rule, fixed before any test score is read: "
             f"{choice['rule']}. Val was split once ({split['rule']}): "
             f"{split['search_rows']} search rows fitted and nominated every candidate (the "
             f"table's val columns), {split['selection_rows']} selection rows were read by this "
             f"choice alone. Monitor: {choice['monitor']}.", ""]
    if choice.get("nominee") is None:
        return [*lines, f"No candidate to nominate: {choice['reason']}.", ""]
    gain = choice["selection_gain"]
    sel = choice["selection_metrics"]
    return [*lines, "| on the selection rows | loss | accuracy |", "|---|---|---|",
            *[f"| {name} | {m['loss']:.4f} | {m['acc']:.4f} |" for name, m in sel.items()], "",
            f"Nominee **{choice['nominee']}**: gain {gain['gain']:+.4g} in {choice['monitor']}, "
            f"one-sided {gain['level']:.0%} lower bound {gain['lower_bound']:+.4g} "
            f"({gain['resamples']} paired resamples of the {gain['rows']} selection rows): "
            f"{'confirmed' if choice['confirmed'] else 'not confirmed'}; final model "
            f"**{choice['final']}**.", ""]


def render_markdown(results: Mapping[str, Any], analysis: Mapping[str, Any],
                    selection: Mapping[str, Any], crossover: Mapping[str, Any],
                    primary: str) -> str:
    return "\n".join([f"# Red Heart study `{results['session_id']}`", "", *data_section(results),
                      *lr_section(results["best_lr"], selection), *sweet_spot_section(analysis),
                      *crossover_section(crossover), *test_section(results, primary)])


def without_images(lines: Sequence[str]) -> str:
    """Markdown for optuna-dashboard notes: local image links do not resolve there."""
    return "\n".join(line for line in lines if not line.startswith("!["))


def write_report(session: Session, results: Mapping[str, Any], analysis: Mapping[str, Any],
                 history: Sequence[Mapping[str, Any]], crossover: Mapping[str, Any],
                 selection: Mapping[str, Any], primary: str) -> list[str]:
    """Write final/report.md and its PNGs; returns the files written (relative to final/)."""
    curves = read_json(session.path("lr_sweep", "lr_curves_data.json"))
    written = [
        save_plot(session, "lr_sweep.png", plot_lr_sweep(curves)),
        save_plot(session, "learning_curves.png", plot_learning_curves(analysis)),
        save_plot(session, "lr_schedule.png", plot_lr_schedule(history)),
        save_plot(session, "crossover_search.png", plot_crossover_search(crossover["trials"])),
        save_plot(session, "test_table.png", plot_test_table(results["test_table"])),
    ]
    text = render_markdown(results, analysis, selection, crossover, primary)
    atomic_write_bytes(session.path("final", "report.md"), text.encode("utf-8"))
    logger.info("report: %s", session.path("final", "report.md"))
    return [*written, "report.md"]


__all__ = [
    "PLOTS",
    "crossover_section",
    "data_section",
    "lr_section",
    "recipe_text",
    "render_markdown",
    "splice_table",
    "sweet_spot_section",
    "test_section",
    "without_images",
    "write_report",
]


def _row_line(label: str, row: Mapping[str, Any] | None) -> str:
    if row is None:
        return f"  {label:<24} -"
    ci = (row.get("test_ci") or {}).get("acc", {}).get("ci")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return (f"  {label:<24} test acc {row['test_acc']:.4f}{interval}   "
            f"macro-F1 {fmt(row.get('test_macro_f1'))}")


def run_summary(selection: Mapping[str, Any] | None, analysis: Mapping[str, Any] | None,
                results: Mapping[str, Any] | None, report_path: str, dashboard: str) -> list[str]:
    """The block printed when a run ends: the decisions of each phase that ran, the final
    model's test row next to the best single checkpoint and the linear baseline, and
    where to look next."""
    lines = ["", "== redheart-tuner: run summary =="]
    if selection:
        lines.append(f"LR           {selection['selected_lr']:g}: {selection['selection_reason']}")
        grid = selection.get("grid") or {}
        if grid.get("message"):
            lines.append(f"             {grid['message']}")
    if analysis:
        spots = {g: v["epoch"] for g, v in analysis["sweet_spots"].items()}
        point = analysis["overfitting_point"]
        where = f"epoch {point}" if point is not None else "none (no criterion fired)"
        lines.append(f"overfitting  {where}, decided by {analysis['decided_by']} on "
                     f"{analysis.get('monitor', 'val_loss')}; sweet spots "
                     f"({analysis.get('method', 'module-loss')}) {spots}")
    if results:
        table = {r["candidate"]: r for r in results["test_table"]}
        final = results["crossover_recipe"]["method"]
        choice = results.get("final_choice")
        how = (f"nominee {choice['nominee']}, {'confirmed' if choice['confirmed'] else 'not confirmed'}"
               f" on the held-out selection rows by {results.get('monitor', 'val_loss')}"
               if choice and choice.get("nominee") else
               f"chosen by {results.get('monitor', 'val_loss')} on val")
        lines += [f"final model  {final} ({how})", _row_line(final, table.get(final))]
        if final != "best_single_checkpoint":
            lines.append(_row_line("best_single_checkpoint", table.get("best_single_checkpoint")))
        lines.append(_row_line("linear_baseline", table.get("linear_baseline")))
        ci = (table.get(final, {}).get("test_ci") or {})
        if "acc_vs_linear_baseline" in ci:
            lines.append(f"             {verdict(final, ci, 'linear_baseline')}")
        lines.append(f"report       {report_path}")
    lines.append(f"dashboard    {dashboard}")
    return lines
