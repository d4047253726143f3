"""Who runs phases 3 and 4 of a study: a claim in the long-run study's user attrs that
the owner renews while it works, so a waiting worker can take the phases over from one
that died (Optuna has a heartbeat for trials, none for a study)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import optuna

from ._workers import Heartbeat, beating, is_gone, worker_id

PHASE4_ATTR = "phase4_worker"  # long-run study user attrs: who runs phases 3 and 4,
PHASE4_SINCE_ATTR = "phase4_since"  # its last sign of life (Unix time, for the liveness check),
PHASE4_SINCE_UTC_ATTR = "phase4_since_utc"  # the same moment, readable in the dashboard,
PHASE4_DONE_ATTR = "phase4_done"  # and whether they finished


def _beat(study: optuna.Study) -> None:
    now = time.time()
    study.set_user_attr(PHASE4_SINCE_ATTR, now)
    study.set_user_attr(PHASE4_SINCE_UTC_ATTR,
                        datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"))


def own_phase4(study: optuna.Study) -> None:
    """Make this process the owner of phases 3 and 4."""
    _beat(study)
    study.set_user_attr(PHASE4_ATTR, worker_id())


def claim_phase4(study: optuna.Study, hb: Heartbeat) -> str | None:
    """Take phases 3 and 4 unless another live worker has them; returns that worker's id,
    or None when this process now owns them. Another host's claim lapses after the grace
    period without a beat of ``phase4_heartbeat``."""
    owner = study.user_attrs.get(PHASE4_ATTR)
    since = study.user_attrs.get(PHASE4_SINCE_ATTR)
    if owner and owner != worker_id() and not is_gone(owner, since, hb.grace_s):
        return owner
    own_phase4(study)
    return None


def phase4_heartbeat(study: optuna.Study, hb: Heartbeat):
    """While phases 3 and 4 run: renew the claim every heartbeat interval."""
    return beating(lambda: _beat(study), hb.interval_s, "phases 3-4")


def release_phase4(study: optuna.Study, done: bool = False) -> None:
    """Give phases 3 and 4 up; ``done``: they finished (workers waiting for them leave)."""
    if done:
        study.set_user_attr(PHASE4_DONE_ATTR, True)
    study.set_user_attr(PHASE4_ATTR, None)


__all__ = ["PHASE4_ATTR", "PHASE4_DONE_ATTR", "PHASE4_SINCE_ATTR", "PHASE4_SINCE_UTC_ATTR",
           "claim_phase4", "own_phase4", "phase4_heartbeat", "release_phase4"]
