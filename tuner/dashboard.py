"""The evidence in optuna-dashboard: notes, plotly figures and artifacts on each study.

- Notes (``optuna_dashboard.save_note``): the report's sections, on the study they are about.
- Figures (``optuna_dashboard.save_plotly_graph_object`` with fixed ids, so a rerun
  replaces them instead of adding copies): the LR selection scores and Optuna's own
  crossover optimization history, which the report has no picture of.
- Artifacts (``optuna.artifacts.FileSystemArtifactStore`` under ``<session>/artifacts``):
  the PNG and JSON files. The learning curves and the test table are drawn once, by
  ``tuner.report`` (matplotlib), and shown here as those PNGs. A file is uploaded again
  only when its sha256 changed; the study's ``artifacts`` user attr records name ->
  sha256 and artifact id.

Watch with ``optuna-dashboard <storage> --artifact-dir <session>/artifacts --host 127.0.0.1``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from storage import Session
from storage.checkpoints import sha256_file

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "artifacts"
_MIMETYPES = {".png": "image/png", ".json": "application/json", ".md": "text/markdown"}


def artifact_store(session: Session) -> FileSystemArtifactStore:
    path = session.path(ARTIFACT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def upload_files(study: optuna.Study, store: FileSystemArtifactStore, files: Sequence[Path]) -> int:
    """Attach ``files`` to ``study`` as artifacts; unchanged ones are skipped. Returns uploads."""
    known: dict[str, Any] = dict(study.user_attrs.get("artifacts", {}))
    uploaded = 0
    for path in files:
        digest = sha256_file(path)
        if known.get(path.name, {}).get("sha256") == digest:
            continue
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                                      mimetype=_MIMETYPES.get(path.suffix, "application/octet-stream"))
        known[path.name] = {"sha256": digest, "artifact_id": artifact_id}
        uploaded += 1
    study.set_user_attr("artifacts", known)
    return uploaded


# ----------------------------------------------------------------------------- figures

def selection_figure(selection: Mapping[str, Any]):
    """The multi-criterion LR scores, stacked by weighted criterion."""
    import plotly.graph_objects as go

    rows = sorted(selection["detailed_analysis"].items(), key=lambda kv: float(kv[0]))
    lrs = [f"{float(lr):g}" for lr, _ in rows]
    weights = {k.removesuffix("_weight"): v for k, v in selection["selection_criteria"].items()}
    bars = []
    for key, name in (("val_loss_score", "val_loss"), ("stability_score", "stability"),
                      ("efficiency_score", "efficiency"), ("overfit_score", "overfit")):
        w = weights.get(name, 1.0)
        bars.append(go.Bar(x=lrs, y=[d[key] * w for _, d in rows], name=f"{name} x {w:g}"))
    fig = go.Figure(bars)
    fig.update_layout(title=f"LR selection (selected {selection['selected_lr']:g})", barmode="stack",
                      xaxis_title="LR", yaxis_title="weighted score")
    return fig


# ----------------------------------------------------------------------------- publishing

def publish(session: Session, sweep: optuna.Study, long_run: optuna.Study, crossover: optuna.Study,
            notes: Mapping[str, str], selection: Mapping[str, Any], analysis: Mapping[str, Any],
            table: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Notes, figures and artifacts on the three studies. Returns uploads per study."""
    # Imported here: optuna_dashboard pulls in scikit-learn (~0.9 s), which every process
    # that never publishes (a worker, a resumed run past phase 4) would pay at startup.
    from optuna_dashboard import save_note, save_plotly_graph_object

    save_note(long_run, notes["long_run"])
    save_note(crossover, notes["crossover"])
    save_plotly_graph_object(sweep, selection_figure(selection), graph_object_id="lr-selection")
    save_plotly_graph_object(crossover, optuna.visualization.plot_optimization_history(crossover),
                             graph_object_id="crossover-history")
    store = artifact_store(session)
    final = session.path("final")
    uploads = {
        sweep.study_name: upload_files(sweep, store, [
            session.path("lr_sweep", "lr_selection_report.json"),
            session.path("lr_sweep", "lr_curves_data.json"), final / "lr_sweep.png"]),
        long_run.study_name: upload_files(long_run, store, [
            session.path("checkpoints", "long_run_summary.json"),
            session.path("analysis", "sweet_spot_analysis.json"),
            final / "learning_curves.png", final / "lr_schedule.png"]),
        crossover.study_name: upload_files(crossover, store, [
            final / "recipe.json", final / "report.md", final / "crossover_search.png",
            final / "test_table.png", session.path("final_results.json")]),
    }
    logger.info("dashboard: notes, figures and artifacts published (%s new uploads)", uploads)
    return uploads


__all__ = ["ARTIFACT_DIR", "artifact_store", "publish", "selection_figure", "upload_files"]
