"""The history of a job or a benchmark run (``job_events``): every status change, submission, progress mark."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from discovery.results import jsonable
from service.db.models import JobEvent


def add_event(
    session: Session,
    kind: str,
    message: str = "",
    *,
    job_id: int | None = None,
    benchmark_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to a job's (or a benchmark run's) history."""
    event = JobEvent(job_id=job_id, benchmark_id=benchmark_id, kind=kind, message=message,
                     data=jsonable(data) if data is not None else None)
    session.add(event)
    return event
