"""``/api/benchmarks``, ``/api/suites``, ``/api/leaderboard``: run named suites and rank rules and baselines."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from discovery.spec import RuleFamily
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
from service.api.readpath import Checkpoint, serve_read
from service.api.schemas import BenchmarkCreate, BenchmarkOut, LeaderboardOut
from service.catalog import registered_suites, suites_payload
from service.db.models import ORIGIN_USER, BenchmarkRun, Rule
from service.db.repositories import benchmarks as benchmark_repo
from service.db.repositories.leaderboard import known_suites, leaderboard
from service.db.repositories.rules import upsert_rule
from service.rulebook import InvalidRule, parse_rule, suite_rejects
from service.runs.states import cancel

router = APIRouter(tags=["benchmarks"])


@router.post(
    "/api/benchmarks",
    status_code=status.HTTP_201_CREATED,
    response_model=BenchmarkOut,
    responses=errors(400, 401, 413, 422, 429, 503,
                     e422="unknown suite or rule, an invalid expression, or a suite of another rule family (the "
                          "expression's grammar and shapes, whether rule_id exists and the suite's family are "
                          "meaning, not shape: see docs/http-api.md)",
                     e429="too many active benchmarks for this token (PLASTICITY_MAX_CONCURRENT_JOBS)",
                     e503="no benchmark suites in this deployment, or the database is unavailable"),
)
def submit_benchmark(
    body: BenchmarkCreate,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    who: OwnerDep,
) -> BenchmarkOut:
    """Queue a run of ``suite`` for a stored rule (``rule_id``) or an expression (stored as a rule first)."""
    suites = registered_suites()
    if not suites:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="no benchmark suites are available (discovery.benchmarks.registry is missing)",
        )
    if body.suite not in suites:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown suite {body.suite!r}; known suites: {', '.join(sorted(suites))}",
        )
    rule_id: int | None = getattr(body, "rule_id", None)
    expression: str | None = getattr(body, "expression", None)
    stored = session.get(Rule, rule_id) if rule_id is not None else None
    if rule_id is not None and stored is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"rule {rule_id} does not exist")
    family = stored.family if stored is not None else "feedforward"
    if expression is not None:
        try:
            record = parse_rule(expression)
        except InvalidRule as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.to_dict(expression)
            ) from exc
        family = record.family
    reason = suite_rejects(suites[body.suite], family)
    if reason is not None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail={"field": "suite", "message": reason, "position": None, "token": body.suite},
        )
    check_active_cap(session, BenchmarkRun, who, settings, "benchmarks", "wait for one to finish")
    if expression is not None:
        rule, _ = upsert_rule(
            session,
            record,
            name=expression[:200],
            origin=ORIGIN_USER,
            provenance={"source": "benchmark request", "submitted_by": who},
        )
        rule_id = rule.id
    run = benchmark_repo.create_run(session, suite=body.suite, rule_id=rule_id, expression=expression,
                                    owner=who, tiny=body.tiny or settings.benchmark_tiny, seed=body.seed,
                                    retune=body.retune)
    session.commit()
    wake(dispatcher)
    return BenchmarkOut.model_validate(run)


@router.get("/api/benchmarks", response_model=list[BenchmarkOut], responses={
    200: {"description": "the runs", "headers": {
        "X-Total-Count": {"description": "the number of runs", "schema": {"type": "integer"}}}},
    **errors(422, 503)})
def list_benchmarks(
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[BenchmarkOut]:
    """Benchmark runs, newest first."""
    runs, total = benchmark_repo.list_runs(session, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [BenchmarkOut.model_validate(r) for r in runs]


@router.get(
    "/api/benchmarks/{bench_id}",
    response_model=BenchmarkOut,
    responses=errors(404, 422, 503, e404="no such benchmark run"),
)
def get_benchmark(bench_id: IdPath, session: SessionDep) -> BenchmarkOut:
    """Status, per-learner scores with 95 % CIs, and the suite's diagnostics."""
    run = get_or_404(session, BenchmarkRun, bench_id, "benchmark")
    return BenchmarkOut.model_validate(run)


@router.post(
    "/api/benchmarks/{bench_id}/cancel",
    response_model=BenchmarkOut,
    responses=errors(401, 404, 409, 413, 422, 503, e404="no such benchmark run", e409="the run already finished"),
)
def cancel_benchmark(bench_id: IdPath, session: SessionDep, dispatcher: DispatcherDep,
                     who: OwnerDep) -> BenchmarkOut:
    """Cancel a queued or running benchmark (the dispatcher stops its Ray work). Cancelling twice is harmless."""
    run = get_or_404(session, BenchmarkRun, bench_id, "benchmark")
    outcome = cancel(session, run)
    if outcome == "finished":
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,  # type: ignore[return-value]
            content={"detail": f"benchmark {bench_id} already {run.status}; nothing to cancel"},
        )
    if outcome == "cancelled":
        wake(dispatcher)
    return BenchmarkOut.model_validate(run)


@router.get("/api/suites", responses=errors(503))
def list_suites() -> list[dict]:
    """The named, versioned benchmark suites with their definitions."""
    return suites_payload()


@router.get(
    "/api/leaderboard", response_model=LeaderboardOut,
    responses={304: {"description": "not modified (If-None-Match named the current ETag)"},
               **errors(404, 422, 503, e404="unknown suite")},
)
async def get_leaderboard(
    request: Request,
    suite: Annotated[
        str | None,
        Query(min_length=1, max_length=100,
              description="default: the suite of the latest benchmark run, else 'discovery'"),
    ] = None,
    front: Annotated[bool, Query(description="only rules on a stored Pareto front of an open search")] = False,
    family: Annotated[RuleFamily | None, Query(description="only rules of this family (baselines stay)")] = None,
) -> Response:
    """Ranked entries (rules and baselines): name, origin, score, ci, locality, cost."""
    def build(session: Session, checkpoint: Checkpoint) -> Response:
        if suite is not None and suite not in known_suites(session):
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"unknown suite {suite!r}; known: {', '.join(known_suites(session))}",
            )
        board = LeaderboardOut.model_validate(leaderboard(session, suite, only_front=front, family=family))
        session.close()   # the connection goes back to the pool before the answer is serialized
        checkpoint()
        return Response(board.model_dump_json().encode(), media_type="application/json")

    return await serve_read(request, build)
