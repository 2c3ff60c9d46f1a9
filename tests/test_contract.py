"""The typed contract from request to row (docs/architecture.md, "Contracts").

* The public functions at the layer boundaries (service ↔ workers ↔ discovery) take and return typed models:
  no parameter or return is ``dict[str, Any]``, ``Mapping[str, Any]``, a bare ``dict`` or ``Any``
  (``typing.get_type_hints``), apart from the named exemptions.
* One discovery job's spec, walked with real objects from the route to the engine: the spec the engine receives
  equals, field for field, the one the route validated.
* A tiny goal job run by the real engine in-process: every front rule's ``discovery`` score for that job equals
  its own front point's held-out accuracy (not the job's).
* The state machine: final statuses have no way out; a refused transition writes nothing.
"""

from __future__ import annotations

import collections.abc as cabc
import importlib
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from discovery.results import DiscoveryResult
from discovery.spec import DiscoverySpec
from service.db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from service.db.session import session_scope
from service.runs.dispatcher import Dispatcher
from service.runs.states import TRANSITIONS, allowed, set_status
from workers.actors import JobActor
from workers.contract import DiscoveryTask, JobState, Workers

#: The modules at the boundaries: what the service calls in workers, what workers call in discovery, and the
#: service's side of the hand-over (the dispatcher and what records results).
BOUNDARY_MODULES = (
    "workers.contract", "workers.ray_jobs", "workers.actors", "workers.progress", "workers.sweep",
    "workers.baseline_tasks", "discovery.router", "discovery.results", "discovery.benchmarks.report",
    "service.runs.dispatcher", "service.runs.recording", "service.runs.states",
)
#: Named exemptions, each with its reason.
EXEMPT = {
    # the project's one JSON serializer takes and returns any JSON-able value (a JSON-schema helper)
    ("discovery.results", "jsonable"),
    # the database edge: set_status writes the column values given by keyword, and an event's JSON data
    ("service.runs.states", "set_status"),
}


def _untyped(hint: Any) -> bool:
    """Whether a type hint is, or contains, Any, a bare dict, or a str → Any mapping."""
    if hint is Any or hint is dict or hint is typing.Dict:  # noqa: UP006
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (dict, cabc.Mapping, cabc.MutableMapping) and (not args or args[1] is Any):
        return True
    return any(_untyped(a) for a in args if not isinstance(a, (str, int, type(Ellipsis))) and a is not type(None))


def _public_functions(module_name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj):
            out.append((name, obj))
        elif inspect.isclass(obj):
            out.extend((f"{name}.{k}", v) for k, v in vars(obj).items()
                       if inspect.isfunction(v) and not k.startswith("_"))
    return out


def test_boundary_functions_are_typed() -> None:
    found = []
    for module_name in BOUNDARY_MODULES:
        for qualname, func in _public_functions(module_name):
            if (module_name, qualname) in EXEMPT:
                continue
            for param, hint in typing.get_type_hints(func).items():
                if _untyped(hint):
                    found.append(f"{module_name}.{qualname}: {param}: {hint}")
    assert not found, "untyped boundary signatures:\n" + "\n".join(found)


def test_the_checker_sees_untyped_hints() -> None:
    assert _untyped(dict[str, Any]) and _untyped(dict) and _untyped(Any) and _untyped(cabc.Mapping[str, Any])
    assert _untyped(list[dict[str, Any]] | None)
    assert not _untyped(dict[str, float]) and not _untyped(DiscoverySpec | None)


def test_the_ray_workers_module_implements_the_protocol() -> None:
    from workers import ray_jobs

    assert isinstance(ray_jobs, Workers)


# --- one job's path with real objects ------------------------------------------------------------------------------
class InProcessWorkers:
    """``workers.contract.Workers`` without Ray: each submission runs the real :class:`JobActor` in this process
    (its engine is ``engine``), and the next poll reports its outcome."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.states: dict[int, JobState] = {}

    def ensure_ray(self) -> str:
        return "in-process"

    def submit_discovery(self, job_id: int | str, spec: DiscoverySpec, checkpoint_dir: Path | None = None, *,
                         max_retries: int = 0) -> object:
        actor = JobActor(str(job_id), "discovery", DiscoveryTask(spec=spec, engine=self.engine))
        outcome = actor.run()
        self.states[int(job_id)] = JobState(status=outcome.status, result=outcome.result, error=outcome.error,
                                            progress=actor.state().progress)
        return int(job_id)

    def submit_benchmark(self, bench_id: int | str, suite: str, expression: str | None, *, tiny: bool = False,
                         seed: int = 0, max_retries: int = 0, baselines: object = None,
                         layered: object = None) -> object:
        raise NotImplementedError("no benchmarks in these tests")

    def poll(self, handle: object) -> JobState:
        return self.states[int(handle)]  # type: ignore[call-overload]

    def cancel(self, handle: object) -> None:
        return None


def test_the_spec_that_reaches_the_engine_is_the_one_the_route_validated(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    body = {"name": "path", "network": {"widths": [784, 16, 10], "feedback": "fa"},
            "task": {"dataset": "synthetic", "shots": 2, "queries": 2},
            "rule": {"terms": ["F0", "F2"]}, "meta": {"episodes": 2, "eval_episodes": 2, "seed": 3}}
    received: list[DiscoverySpec] = []

    def engine(spec: DiscoverySpec, progress: Any = None, checkpoint_dir: Any = None,
               should_stop: Any = None) -> DiscoveryResult:
        received.append(spec)
        from discovery.router import discover

        return discover(spec, progress, checkpoint_dir, should_stop)

    workers = InProcessWorkers(engine)
    assert isinstance(workers, Workers)
    r = client.post("/api/jobs", json=body, headers=auth)
    assert r.status_code == 201, r.text
    validated = DiscoverySpec.model_validate(body)
    assert DiscoverySpec.model_validate(r.json()["spec"]) == validated
    d = Dispatcher(settings, app.state.sessions, workers)
    d.tick()   # submit: the actor runs the engine
    d.tick()   # poll: the result is recorded
    [spec] = received
    assert isinstance(spec, DiscoverySpec)
    assert spec.model_dump() == validated.model_dump()   # field for field
    job = client.get(f"/api/jobs/{r.json()['id']}").json()
    assert job["status"] == "succeeded" and job["rule_ids"], job
    assert DiscoverySpec.model_validate(job["spec"]) == validated


GOAL = "find a plasticity rule for depth-2 online learning under feedback alignment on synthetic data, tiny"


def test_each_front_rule_scores_its_own_front_point(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    from discovery.router import discover

    r = client.post("/api/jobs", json={"goal": GOAL}, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    d = Dispatcher(settings, app.state.sessions, InProcessWorkers(discover))
    d.tick()
    d.tick()
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    front = job["front"]
    assert len(front) >= 2 and sum(p["selected"] for p in front) == 1
    accuracies = {p["heldout_accuracy"] for p in front}
    assert len(accuracies) >= 2, "a front whose points all score the same does not test anything"
    for point in front:
        rule = client.get(f"/api/rules/{point['rule_id']}").json()
        [score] = [s for s in rule["scores"] if s["suite"] == "discovery" and s["job_id"] == job_id]
        assert score["score"] == point["heldout_accuracy"] and score["ci95"] == point["heldout_ci95"]
        assert point["expression"] == rule["expression"]
    board = client.get("/api/leaderboard", params={"suite": "discovery"}).json()
    by_rule = {e["rule_id"]: e for e in board["entries"]}
    for point in front:
        assert by_rule[point["rule_id"]]["score"] == point["heldout_accuracy"]
    # the job page shows the total of the whole search and the stage apart (never "episode 69 / 20")
    events = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()["events"]
    progress = [e["data"] for e in events if e["kind"] == "progress"]
    assert progress and all(p["episode"] <= p["total"] for p in progress)


# --- the state machine ----------------------------------------------------------------------------------------------
def test_the_transition_table() -> None:
    assert all(not TRANSITIONS[s] for s in (SUCCEEDED, FAILED, CANCELLED))
    assert allowed(QUEUED, RUNNING) and allowed(RUNNING, SUCCEEDED) and allowed(RUNNING, QUEUED)
    assert not allowed(QUEUED, SUCCEEDED) and not allowed(SUCCEEDED, RUNNING) and not allowed(CANCELLED, FAILED)


def test_a_refused_transition_writes_nothing(app: Any) -> None:
    from service.db.models import JobEvent
    from service.db.repositories.jobs import create_job

    with session_scope(app.state.sessions) as s:
        job = create_job(s, DiscoverySpec.model_validate({"task": {"dataset": "synthetic"}}), "t")
        job_id = job.id
    with session_scope(app.state.sessions) as s:
        assert not set_status(s, Job, job_id, SUCCEEDED, event="succeeded")       # queued → succeeded: refused
        assert set_status(s, Job, job_id, CANCELLED, event="cancelled", message="by a test")
        assert not set_status(s, Job, job_id, RUNNING, event="started")           # final: no way out
    with session_scope(app.state.sessions) as s:
        job = s.get(Job, job_id)
        assert job.status == CANCELLED and job.finished_at is not None
        kinds = [e.kind for e in s.query(JobEvent).filter(JobEvent.job_id == job_id).order_by(JobEvent.id)]
        assert kinds == ["queued", "cancelled"]


@pytest.mark.parametrize("status", [QUEUED, RUNNING])
def test_cancel_through_the_api_uses_the_table(client: TestClient, auth: dict[str, str], app: Any,
                                                status: str) -> None:
    r = client.post("/api/jobs", json={"task": {"dataset": "synthetic"}, "network": {"widths": [784, 16, 10]}},
                    headers=auth)
    job_id = r.json()["id"]
    if status == RUNNING:
        with session_scope(app.state.sessions) as s:
            assert set_status(s, Job, job_id, RUNNING, event="started")
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=auth).json()["status"] == CANCELLED
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=auth).status_code == 200     # twice is harmless
