"""The life of a job or a benchmark run: five statuses and the table of allowed transitions.

    queued ──▶ running ──▶ succeeded
      │  ▲        │ ──────▶ failed
      │  └────────┘ ──────▶ cancelled        (running → queued: requeued after a service restart)
      └──────────────────▶ failed | cancelled

:func:`set_status` is the one function that changes a status: a conditional UPDATE (``WHERE status IN`` the
allowed sources), so a cancel written by a request handler is never overwritten by the dispatcher, and the
``job_events`` row that says what happened, in the same transaction. Final statuses have no way out.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, BenchmarkRun, Job, utcnow
from service.db.read_fields import refresh_for_run
from service.db.repositories.events import add_event

#: status → the statuses it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
#: statuses that stamp ``finished_at`` / ``started_at`` when entered
FINISHING = frozenset({SUCCEEDED, FAILED, CANCELLED})

Tracked = type[Job] | type[BenchmarkRun]
CancelOutcome = Literal["cancelled", "already", "finished"]


def sources(status: str) -> tuple[str, ...]:
    """The statuses from which ``status`` may be entered."""
    return tuple(s for s, targets in TRANSITIONS.items() if status in targets)


def allowed(current: str, status: str) -> bool:
    """Whether the table allows ``current`` → ``status``."""
    return status in TRANSITIONS.get(current, frozenset())


def owner_key(model: Tracked) -> str:
    """The ``job_events`` column naming a row of ``model``."""
    return "job_id" if model is Job else "benchmark_id"


def set_status(session: Session, model: Tracked, row_id: int, status: str, *, event: str | None, message: str = "",
               data: dict[str, Any] | None = None, **values: Any) -> bool:
    """Move row ``row_id`` of ``model`` to ``status`` if its stored status allows it (with ``values`` written
    alongside), and append the event ``event`` (none when ``event`` is None); False when the row's status does not
    allow it any more (e.g. it was cancelled meanwhile): then nothing is written."""
    stamps: dict[str, Any] = {"updated_at": utcnow()}
    if status in FINISHING and "finished_at" not in values:
        stamps["finished_at"] = utcnow()
    result = session.execute(
        update(model).where(model.id == row_id, model.status.in_(sources(status)))
        .values(status=status, **stamps, **values)
    )
    session.expire_all()
    if not result.rowcount:
        return False
    if status == SUCCEEDED:   # the scores of its rules count from now: refresh their read fields
        refresh_for_run(session, "job" if model is Job else "bench", row_id)
    if event is not None:
        add_event(session, event, message, data=data, **{owner_key(model): row_id})
    return True


def cancel(session: Session, row: Job | BenchmarkRun) -> CancelOutcome:
    """Cancel a queued or running job or benchmark through the API: 'cancelled' (now), 'already' (it was
    cancelled before) or 'finished' (it ended otherwise: nothing to cancel, the API's 409). Commits."""
    if row.status == CANCELLED:
        return "already"
    if not set_status(session, type(row), row.id, CANCELLED, event="cancelled", message="cancelled through the API",
                      error=None):
        session.rollback()
        session.refresh(row)
        return "already" if row.status == CANCELLED else "finished"
    session.commit()
    session.refresh(row)
    return "cancelled"
