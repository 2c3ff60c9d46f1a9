"""``/api/jobs``: submit a discovery job (a spec or a plain-language goal), list, inspect, cancel.

Nothing numerical happens here: a job is a row in ``queued`` state; the dispatcher hands it to Ray.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from discovery.goal import GoalError, parse_goal
from service.api.deps import DispatcherDep, IdPath, OwnerDep, SessionDep, SettingsDep, wake
from service.api.limits import spec_problems
from service.api.schemas import GoalRequest, JobCreate, JobOut
from service.db.models import STATUSES, Job
from service.db.repositories import jobs as job_repo
from service.db.repositories.jobs import active_count, create_job
from service.runs.states import cancel
from service.uploads import attach_upload, goal_uploads

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
) -> JobOut:
    """Queue a discovery job from a full spec, or from ``{"goal": "..."}`` (read by ``discovery.goal``).

    A goal that is not fully understood is a 422 whose detail lists what was understood, the unknown words
    and the vocabulary.
    """
    understood: list[str] | None = None
    goal: str | None = None
    if isinstance(body, GoalRequest):
        goal = body.goal
        try:
            parsed = parse_goal(goal, goal_uploads(session))
        except GoalError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.to_dict()) from exc
        spec, understood = parsed.spec, parsed.understood
    else:
        spec = body
    spec, upload_problems = attach_upload(session, spec)   # "upload:<id>": its checksum, D and classes
    problems = spec_problems(spec, settings.limits) + upload_problems
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
    return JobOut.of(job)


@router.get("", response_model=list[JobOut])
def list_jobs(
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    status_: Annotated[str | None, Query(alias="status", description="filter by status")] = None,
) -> list[JobOut]:
    """Jobs, newest first; ``X-Total-Count`` gives the number of matches."""
    if status_ is not None and status_ not in STATUSES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown status {status_!r}; one of {', '.join(STATUSES)}",
        )
    jobs, total = job_repo.list_jobs(session, status=status_, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [JobOut.of(j) for j in jobs]


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
) -> JobOut:
    """Status, progress {episode, total, meta_accuracy, theta}, error, rule ids and the resolved spec."""
    return JobOut.of(_get_job(session, job_id), events=events)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={
        401: _ERRORS[401],
        404: {"description": "no such job"},
        409: {"description": "the job already finished"},
    },
)
def cancel_job(job_id: IdPath, session: SessionDep, dispatcher: DispatcherDep, who: OwnerDep) -> JobOut:
    """Cancel a queued or running job (the dispatcher stops its Ray work). Cancelling twice is harmless."""
    job = _get_job(session, job_id)
    outcome = cancel(session, job)
    if outcome == "finished":
        return JSONResponse(  # type: ignore[return-value]
            status_code=status.HTTP_409_CONFLICT,
            content={"detail": f"job {job_id} already {job.status}; nothing to cancel"},
        )
    if outcome == "cancelled":
        wake(dispatcher)
    return JobOut.of(job)
