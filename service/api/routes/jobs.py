"""``/api/jobs``: submit a discovery job (a spec or a plain-language goal), list, inspect, cancel.

Nothing numerical happens here: a job is a row in ``queued`` state; the dispatcher hands it to Ray.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, update

from discovery.goal import GoalError, parse_goal
from discovery.spec import DiscoverySpec
from service.api.deps import DispatcherDep, IdPath, OwnerDep, SessionDep, SettingsDep, wake
from service.api.limits import spec_problems
from service.api.schemas import GoalRequest, JobCreate, JobOut
from service.api.views import job_out
from service.db.models import ACTIVE_STATUSES, CANCELLED, STATUSES, Job, utcnow
from service.db.repositories.store import active_count, add_event, cancel_run, create_job

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_ERRORS = {
    401: {"description": "missing or invalid bearer token"},
    413: {"description": "request body too large"},
    422: {"description": "invalid spec or goal; the detail names the field and the reason"},
    429: {"description": "too many active jobs for this token"},
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut, responses=_ERRORS)
def submit_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    who: OwnerDep,
    response: Response,
) -> dict:
    """Queue a discovery job from a full spec, or from ``{"goal": "..."}`` (read by ``discovery.goal``).

    A goal that is not fully understood is a 422 whose detail lists what was understood, the unknown words
    and the vocabulary.
    """
    understood: list[str] | None = None
    goal: str | None = None
    if isinstance(body, GoalRequest):
        goal = body.goal
        try:
            parsed = parse_goal(goal)
        except GoalError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.to_dict()) from exc
        spec, understood = parsed.spec, parsed.understood
    else:
        spec = body
    assert isinstance(spec, DiscoverySpec)
    problems = spec_problems(spec, settings.limits)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problems)
    cap = settings.limits.max_concurrent_jobs
    if active_count(session, Job, who) >= cap:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"this token already has {cap} queued or running jobs (the limit, "
            "PLASTICITY_MAX_CONCURRENT_JOBS); wait for one to finish or cancel one",
        )
    job = create_job(session, spec, who, goal=goal, understood=understood)
    session.commit()
    wake(dispatcher)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    out = job_out(job)
    out["understood"] = understood
    return out


@router.get("", response_model=list[JobOut])
def list_jobs(
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    status_: Annotated[str | None, Query(alias="status", description="filter by status")] = None,
) -> list[dict]:
    """Jobs, newest first; ``X-Total-Count`` gives the number of matches."""
    stmt = select(Job)
    count = select(func.count()).select_from(Job)
    if status_ is not None:
        if status_ not in STATUSES:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"unknown status {status_!r}; one of {', '.join(STATUSES)}",
            )
        stmt, count = stmt.where(Job.status == status_), count.where(Job.status == status_)
    response.headers["X-Total-Count"] = str(session.scalar(count) or 0)
    jobs = session.scalars(stmt.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return [job_out(j) for j in jobs]


def _get_job(session: SessionDep, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job_id} does not exist")
    return job


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
def get_job(
    job_id: IdPath,
    session: SessionDep,
    events: Annotated[bool, Query(description="include the job's event history")] = False,
) -> dict:
    """Status, progress {episode, total, meta_accuracy, theta}, error, rule ids and the resolved spec."""
    job = _get_job(session, job_id)
    out = job_out(job, events=events)
    if job.goal and job.events:
        out["understood"] = (job.events[0].data or {}).get("understood")
    return out


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={
        401: _ERRORS[401],
        404: {"description": "no such job"},
        409: {"description": "the job already finished"},
    },
)
def cancel_job(job_id: IdPath, session: SessionDep, dispatcher: DispatcherDep, who: OwnerDep) -> dict:
    """Cancel a queued or running job (the dispatcher stops its Ray work). Cancelling twice is harmless."""
    job = _get_job(session, job_id)
    outcome = cancel_run(session, job)
    if outcome == "finished":
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,  # type: ignore[return-value]
            content={"detail": f"job {job_id} already {job.status}; nothing to cancel"},
        )
    if outcome == "cancelled":
        wake(dispatcher)
    return job_out(job)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_STATUSES))
        .values(status=CANCELLED, error=None, finished_at=utcnow())
    )
    if not result.rowcount:
        session.rollback()
        session.refresh(job)
        if job.status == CANCELLED:
            return job_out(job)
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,  # type: ignore[return-value]
            content={"detail": f"job {job_id} already {job.status}; nothing to cancel"},
        )
    add_event(session, "cancelled", "cancelled through the API", job_id=job_id)
    session.commit()
    session.refresh(job)
    wake(dispatcher)
    return job_out(job)
