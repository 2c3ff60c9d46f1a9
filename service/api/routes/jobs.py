"""``/api/jobs``: submit a discovery job (a spec or a plain-language goal), list, inspect, cancel.

Nothing numerical happens here: a job is a row in ``queued`` state; the dispatcher hands it to Ray.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from discovery.goal import GoalError, parse_goal
from discovery.inference.job import InferenceSpec, RecordingRef
from discovery.inference.job import parse_goal as parse_inference_goal
from service.api.deps import (
    DispatcherDep,
    IdPath,
    OwnerDep,
    SessionDep,
    SettingsDep,
    check_active_cap,
    get_or_404,
    wake,
)
from service.api.errors import errors
from service.api.limits import fit_defaults, spec_problems
from service.api.schemas import GoalRequest, JobCreate, JobOut, JobStatus
from service.db.models import Job
from service.db.repositories import jobs as job_repo
from service.db.repositories.jobs import create_job
from service.runs.states import cancel
from service.uploads import attach_upload, goal_uploads

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
_JOB_BODY: TypeAdapter[Any] = TypeAdapter(JobCreate)


async def _raw_body(request: Request) -> Any:
    """The request's JSON as sent (None when it is not JSON: the body's own validation then answers)."""
    try:
        return await request.json()
    except ValueError:
        return None


def _strict(raw: Any) -> Any:
    """The body validated again with JSON's own types (the engine's spec models coerce, e.g. 0 to false, when
    built in Python; over HTTP the schema's types are the contract)."""
    try:
        return _JOB_BODY.validate_python(raw, strict=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from exc

_TOTAL = {"X-Total-Count": {"description": "the number of matches", "schema": {"type": "integer"}}}
_SUBMIT = {
    201: {"description": "the job, queued", "headers": {
        "Location": {"description": "/api/jobs/{id}", "schema": {"type": "string"}}}},
    **errors(400, 401, 413, 422, 429, 503, e422=(
        "invalid spec or goal: the fields and reasons, or the goal's unknown words; also what depends on meaning "
        "rather than shape (the goal's words, widths[0] against the data set's input size, ways against the "
        "classes available, the sweep's number of trials, term ids of the family)"), e429=(
        "too many active jobs for this token (PLASTICITY_MAX_CONCURRENT_JOBS)")),
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut, responses=_SUBMIT)
def submit_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    who: OwnerDep,
    response: Response,
    raw: Annotated[Any, Depends(_raw_body)],
) -> JobOut:
    """Queue a discovery job from a full spec, or from ``{"goal": "..."}`` (read by ``discovery.goal``).

    A goal that is not fully understood is a 422 whose detail lists what was understood, the unknown words
    and the vocabulary.
    """
    understood: list[str] | None = None
    goal: str | None = None
    body = _strict(raw)
    if isinstance(body, GoalRequest) and parse_inference_goal(body.goal) is not None:   # docs/inference.md
        from service.api.routes.inferences import create_inference

        spec_i = InferenceSpec(recording=RecordingRef(id=parse_inference_goal(body.goal)))
        job = create_inference(session, settings, who, spec_i, goal=body.goal)
        session.commit()
        wake(dispatcher)
        response.headers["Location"] = f"/api/jobs/{job.id}"
        return JobOut.of(job)
    if isinstance(body, GoalRequest):
        goal = body.goal
        try:
            parsed = parse_goal(goal, goal_uploads(session))
        except GoalError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.to_dict()) from exc
        spec, understood = parsed.spec, parsed.understood
    else:
        spec = fit_defaults(body, settings.limits)
    spec, upload_problems = attach_upload(session, spec)   # "upload:<id>": its checksum, D and classes
    problems = spec_problems(spec, settings.limits) + upload_problems
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problems)
    check_active_cap(session, Job, who, settings, "jobs", "wait for one to finish or cancel one")
    job = create_job(session, spec, who, goal=goal, understood=understood)
    session.commit()
    wake(dispatcher)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=list[JobOut],
            responses={200: {"description": "the jobs", "headers": _TOTAL}, **errors(422, 503)})
def list_jobs(
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    status_: Annotated[JobStatus | None, Query(alias="status", description="filter by status")] = None,
) -> list[JobOut]:
    """Jobs, newest first; ``X-Total-Count`` gives the number of matches."""
    jobs, total = job_repo.list_jobs(session, status=status_, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [JobOut.of(j) for j in jobs]


def _get_job(session: SessionDep, job_id: int) -> Job:
    return get_or_404(session, Job, job_id, "job")


@router.get("/{job_id}", response_model=JobOut, responses=errors(404, 422, 503, e404="no such job"))
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
    responses=errors(401, 404, 409, 413, 422, 503, e404="no such job", e409="the job already finished"),
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
