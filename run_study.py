#!/usr/bin/env python
"""redheart-tuner command line: parse flags (and a TOML config), set up logging, run the pipeline.

    python run_study.py                      # embedded corpus, ngram preset, the strategy's protocol
    python run_study.py --data-path my.json --label-fields label --device auto
    python run_study.py --smoke              # the whole pipeline's shape at toy size
    python run_study.py --config study.toml  # flags override the file

Rerun the same command after any interruption: it resumes from the storage and folder.
"""

from __future__ import annotations

import os

# One thread for OpenBLAS (numpy's and scipy's BLAS; torch's is MKL and is not affected),
# set before numpy loads it: with its default pool of one thread per core, phase 1 of the
# default run took 54-56 s on 2 cores, with one thread 44.8 s (its pool competes with
# torch's OpenMP threads; limiting it after load did not help). The linear baseline's
# liblinear fits also get one BLAS thread: faster here, and the same digits on any machine.
# An OPENBLAS_NUM_THREADS of the user's own is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import errno
import faulthandler
import gc
import json
import logging
import sys
import threading
from dataclasses import replace
from pathlib import Path

import optuna
from tqdm.contrib.logging import logging_redirect_tqdm

from storage import StorageUnavailable, read_json
from storage.outage import is_connection_error, wait_until_answers
from storage.studies import dashboard_command, mask_url
from tuner import INCARNATION_ENV, incarnation
from tuner.cli import SMOKE, apply_config_file, build_parser, config_from_args
from tuner.config import PipelineConfig, parse_device, storage_url
from tuner.dashboard import ARTIFACT_DIR
from tuner.distributed import exit_rank, launch_from_env
from tuner.pipeline import run
from tuner.report import run_summary

logger = logging.getLogger("run_study")

class _DropRaisedTrialErrors(logging.Filter):
    """Optuna logs a trial whose objective raised (Ctrl-C, a full disk, a bad file) as
    failed, with the traceback; the exception goes on to ``main``, which reports it once:
    one line for what a user can fix, the traceback for a bug."""

    def __init__(self) -> None:
        super().__init__()
        self._trial: str | None = None  # "Trial N" whose interrupt was dropped

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], BaseException):
            self._trial = message.partition(" failed")[0]
            return False
        if self._trial and message.startswith(f"{self._trial} failed with value"):
            self._trial = None  # Optuna's second line about the same trial
            return False
        return True


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Optuna's own line per trial repeats ours: shown only when debugging.
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    optuna.logging.set_verbosity(logging.DEBUG if debug else logging.WARNING)
    # Records of Optuna's modules reach the handlers of its root logger: filter there.
    drop = _DropRaisedTrialErrors()
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(drop)


def _print_summary(cfg: PipelineConfig) -> None:
    root = Path(cfg.backup_dir) / cfg.study

    def load(*parts: str) -> dict | None:
        path = root.joinpath(*parts)
        return read_json(path) if path.is_file() else None

    lines = run_summary(load("lr_sweep", "lr_selection_report.json"),
                        load("analysis", "sweet_spot_analysis.json"),
                        load("final_results.json"), str(root / "final" / "report.md"),
                        dashboard_command(storage_url(cfg), root / ARTIFACT_DIR))
    print("\n".join(lines), file=sys.stderr, flush=True)


def build_predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_study.py predict",
        description="Predict with a session's final model: one JSON line per input row.")
    p.add_argument("--session", required=True, help="the session folder: <backup-dir>/<study>")
    p.add_argument("--data-path", "--data", dest="data", required=True,
                   help="texts to predict: a JSON list, JSONL, CSV, TSV or Parquet file")
    p.add_argument("--output", required=True, help="where the predictions go (JSON lines)")
    p.add_argument("--text-field", help="field holding the text (default: the session's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


def predict_main(argv: list[str]) -> int:
    """``run_study.py predict ...``: the final model of a session on a data file."""
    from storage import atomic_write_bytes, read_texts
    from tuner.predict import load_predictor, predict

    args = build_predict_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predictor = load_predictor(args.session, parse_device(args.device))
        texts = read_texts(args.data, args.text_field or predictor.text_field)
        with logging_redirect_tqdm():
            rows = predict(predictor, texts, args.batch_size, progress=not args.no_progress)
        lines = [json.dumps({"row": i, "text": t, **r}, ensure_ascii=False)
                 for i, (t, r) in enumerate(zip(texts, rows, strict=True))]
        atomic_write_bytes(Path(args.output), ("\n".join(lines) + "\n").encode("utf-8"))
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        message = f"error: {e}"
    else:
        print(f"{len(rows)} predictions written to {args.output}", file=sys.stderr)
        return 0
    return _exit_with(2, message)


def parse_config(argv: list[str]) -> PipelineConfig:
    """The run's config from command-line flags (and a --config file), as main reads them."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        apply_config_file(parser, first.config)
    return config_from_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    previous = threading.excepthook
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        threading.excepthook = previous


def _main(argv: list[str]) -> int:
    if argv[:1] == ["predict"]:
        return predict_main(argv[1:])
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    cfg: PipelineConfig | None = None
    try:
        if first.config:
            apply_config_file(parser, first.config)
        args = parser.parse_args(argv)
        _setup_logging(args.log_level)
        if not args.debug:
            threading.excepthook = _thread_error_in_one_line
        cfg = config_from_args(args)
        in_job = launch_from_env() is not None  # one rank of a torchrun job
        follower = in_job and int(os.environ["RANK"]) > 0
        if follower:  # a torchrun rank > 0: rank 0 shows the run
            cfg = replace(cfg, train=replace(cfg.train, progress=False))
        else:
            artifacts = Path(cfg.backup_dir) / cfg.study / ARTIFACT_DIR
            print(f"watch it live: {dashboard_command(storage_url(cfg), artifacts)}",
                  file=sys.stderr, flush=True)
        # Log lines go through tqdm, so they never land in the middle of a progress bar.
        with logging_redirect_tqdm():
            run(cfg)
        if follower:
            exit_rank(0)  # never returns: see tuner.distributed.exit_rank for why
        _print_summary(cfg)
        if in_job:
            exit_rank(0)  # rank 0 as well: its process group's threads outlive it, too
        return 0
    except (ValueError, OSError) as e:
        # Errors a user can cause: a message and a non-zero exit, not a traceback.
        if first.debug:
            raise
        code, message = 2, f"error: {e}"
    except KeyboardInterrupt:
        code, message = 130, "\ninterrupted: rerun the same command to resume"
    except Exception as e:
        # Optuna's cleanup of a trial can itself fail on the storage error that ended the
        # trial (an UnboundLocalError in its _run_trial): the cause is in the chain.
        gone, full, lost = _in_chain(e, StorageUnavailable), _disk_full(e), is_connection_error(e)
        if (gone is None and not full and not lost) or first.debug:
            raise
        where = mask_url(storage_url(cfg)) if cfg is not None else "the storage"
        if gone is not None:
            message = f"error: {gone}"
        elif full:
            message = (f"error: the Optuna storage {where} ran out of disk space: free some "
                       "space, then rerun the same command to resume")
        else:  # a statement in flight when the server went away (see storage.outage)
            _restart_after_lost_call(cfg)  # returns only when it cannot restart
            message = (f"error: the Optuna storage {where} lost its connection during a call: "
                       "once the database is back, rerun the same command to resume")
        code = 2
    return _exit_with(code, message)


MAX_RESTARTS = 3  # re-executions after lost calls, over a process' life


def _restart_after_lost_call(cfg: PipelineConfig | None) -> None:
    """After a storage call lost mid-statement (its outcome unknown, so not retried): once
    the database answers again, within ``--storage-patience``, run this command again in
    this process (``os.execv``), as a user's rerun would, and resume. Returns when it cannot:
    no config yet, a torchrun rank (torchrun's ``--max-restarts`` restarts the job), the
    restarts used up, or a database that stays away; the caller then exits 2.

    The re-executed process keeps its pid and start time, so ``tuner._workers`` counts
    incarnations: the trial and phase-4 claim of the one before are taken over at once, not
    after the heartbeat's grace period."""
    try:
        if cfg is None or launch_from_env() is not None or incarnation() >= MAX_RESTARTS:
            return
    except ValueError:
        return
    url = storage_url(cfg)
    if not wait_until_answers(url, cfg.storage_patience):
        return
    n = incarnation() + 1
    logger.warning("the Optuna storage %s lost its connection during a call; the database "
                   "answers again: this worker runs its command again to resume (restart %d of "
                   "%d)", mask_url(url), n, MAX_RESTARTS)
    gc.collect()  # progress bars close before the new process draws its own
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[INCARNATION_ENV] = str(n)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _thread_error_in_one_line(args: threading.ExceptHookArgs) -> None:
    """A background thread that dies of a storage error (Optuna's heartbeat thread on a
    full disk or a lost database) is reported in one log line, not a traceback: the main
    thread meets the same error at its next storage call and exits with its own line.
    Any other error of a thread keeps its traceback (Python's own hook)."""
    e = args.exc_value
    if e is None or not (_disk_full(e) or is_connection_error(e)
                         or _in_chain(e, StorageUnavailable) is not None):
        threading.__excepthook__(args)
        return
    what = str(e).strip().splitlines()[0] if str(e).strip() else ""
    logger.warning("background thread %s stopped: %s%s",
                   args.thread.name if args.thread else "?", args.exc_type.__name__,
                   f": {what}" if what else "")


def _exit_with(code: int, message: str) -> int:
    """Print the one line an error exit shows, after the progress bars the error left
    open: they close when the frames of its traceback go, and a bar closed after the
    line would redraw itself under it."""
    gc.collect()
    sys.stderr.flush()
    print(message, file=sys.stderr, flush=True)
    return code


def _in_chain(e: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` among ``e`` and what caused it."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, kind):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _disk_full(e: BaseException) -> bool:
    """SQLite's "database or disk is full", however the storage layers wrap it."""
    while e is not None:
        if "disk is full" in str(e) or getattr(e, "errno", None) == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


__all__ = ["SMOKE", "build_parser", "build_predict_parser", "config_from_args", "main",
           "parse_config", "predict_main"]


if __name__ == "__main__":
    # A crash in native code (torch, gloo, a database driver) prints every thread's Python
    # stack, not a bare "Signal 11" in torchrun's failure report.
    faulthandler.enable()
    sys.exit(main())
