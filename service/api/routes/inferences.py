"""``/api/inferences``: infer the plasticity rule behind an uploaded recording (docs/inference.md).

An inference is a job (a ``jobs`` row whose spec has ``kind = "inference"``): the dispatcher hands it to Ray like
any job and the result is stored as a rule with ``origin = "inferred"``. The body names the recording by id or
says so in a goal ("infer the plasticity rule from recording 3").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.orm import Session

from discovery.inference.job import InferenceSpec, RecordingRef, parse_goal
from service.api.deps import DispatcherDep, IdPath, OwnerDep, SessionDep, SettingsDep, check_active_cap, wake
from service.api.errors import errors
from service.api.inference_schemas import InferenceCreate, InferenceOut
from service.db.models import Job
from service.db.repositories import recordings as repo
from service.db.repositories.events import add_event
from service.recordings import resolve_spec
from service.settings import Settings
from service.uploads import UploadRejected

router = APIRouter(prefix="/api/inferences", tags=["inferences"])

_GOAL_HELP = 'say "infer the plasticity rule from recording <id>"'


def create_inference(session: Session, settings: Settings, who: str, spec: InferenceSpec,
                     goal: str | None = None) -> Job:
    """Validate ``spec`` against the stored recording and queue its job (not committed)."""
    try:
        spec = resolve_spec(session, spec)
    except UploadRejected as exc:
        raise HTTPException(exc.status, detail=[{"loc": ["body", "recording_id"], "msg": exc.detail,
                                                 "type": "recording"}]) from exc
    check_active_cap(session, Job, who, settings, "jobs", "wait for one to finish or cancel one")
    job = Job(status="queued", spec=spec.model_dump(mode="json", exclude_none=True), owner=who, attempts=0,
              name=spec.name or f"inference from recording {spec.recording.id} ({spec.recording.name})", goal=goal)
    session.add(job)
    session.flush()
    add_event(session, "queued", f"inference of the rule behind recording {spec.recording.id} queued",
              job_id=job.id, data={"understood": [f"recording {spec.recording.id}"]} if goal else None)
    return job


def spec_of(body: InferenceCreate) -> InferenceSpec:
    """The spec of a request (its goal read for the recording id)."""
    rid = body.recording_id
    if body.goal is not None:
        rid = parse_goal(body.goal)
        if rid is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{
                "loc": ["body", "goal"], "msg": f"not an inference goal: {_GOAL_HELP}", "type": "goal"}])
    assert rid is not None
    return InferenceSpec(recording=RecordingRef(id=rid), max_terms=body.max_terms, n_bootstrap=body.n_bootstrap,
                         seed=body.seed, name=body.name)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=InferenceOut,
             responses=errors(400, 401, 413, 422, 429, 503, e400="malformed JSON body",
                              e422="no such recording, a bad option or an unread goal",
                              e429="too many active jobs for this token"))
def submit_inference(body: InferenceCreate, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
                     who: OwnerDep, response: Response) -> InferenceOut:
    """Queue the inference of the rule behind a recording (``recording_id`` or ``goal``)."""
    job = create_inference(session, settings, who, spec_of(body), goal=body.goal)
    session.commit()
    wake(dispatcher)
    response.headers["Location"] = f"/api/inferences/{job.id}"
    return InferenceOut.of(job)


@router.get("", response_model=list[InferenceOut], responses=errors(422, 503))
def list_inferences(session: SessionDep, response: Response, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                    offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> list[InferenceOut]:
    """Inference jobs, newest first; ``X-Total-Count`` gives their number."""
    rows, total = repo.inference_jobs(session, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [InferenceOut.of(j) for j in rows]


@router.get("/{job_id}", response_model=InferenceOut, responses=errors(404, 422, 503, e404="no such inference"))
def get_inference(job_id: IdPath, session: SessionDep,
                  events: Annotated[bool, Query(description="include the job's history")] = False) -> InferenceOut:
    """Status, the inferred rule, its coefficients with bootstrap intervals, held-out explained variance and
    warnings (cancel with ``POST /api/jobs/{id}/cancel``)."""
    job = session.get(Job, job_id)
    if job is None or (job.spec or {}).get("kind") != "inference":
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"inference {job_id} does not exist")
    return InferenceOut.of(job, events=events)
