"""The dispatcher against an in-process fake of workers.ray_jobs (SQLite and PostgreSQL), tick by tick."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from discovery.benchmarks.report import BenchmarkReport
from service.app import create_app
from service.db.models import Job, Rule, Trial
from service.db.session import session_scope
from service.runs.dispatcher import MAX_ATTEMPTS, Dispatcher
from tests.conftest import FakeHandle, FakeState, FakeWorkers, fake_discovery_result

SPEC = {"network": {"widths": [784, 16, 10]}, "task": {"dataset": "synthetic"}, "meta": {"episodes": 2}}


@pytest.fixture
def dispatcher(app: Any, settings: Any, fake_workers: FakeWorkers) -> Dispatcher:
    """A dispatcher on the test app's database, driven by calling ``tick()`` (no thread)."""
    d = Dispatcher(settings, app.state.sessions, fake_workers)
    app.state.dispatcher = d
    return d


def submit(client: TestClient, auth: dict[str, str], **overrides: Any) -> int:
    r = client.post("/api/jobs", json={**SPEC, **overrides}, headers=auth)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def ticks(d: Dispatcher, n: int) -> None:
    for _ in range(n):
        d.tick()


def test_job_lifecycle(
    client: TestClient, auth: dict[str, str], dispatcher: Dispatcher, fake_workers: FakeWorkers, settings: Any
) -> None:
    job_id = submit(client, auth)
    dispatcher.tick()  # submit
    [handle] = fake_workers.handles
    assert handle.id == job_id and str(handle.args["checkpoint_dir"]).endswith(f"checkpoints/job-{job_id}")
    assert handle.args["checkpoint_dir"] == settings.checkpoint_dir(job_id)
    dispatcher.tick()  # running, episode 1
    job = client.get(f"/api/jobs/{job_id}").json()
    assert (
        job["status"] == "running"
        and job["progress"]["episode"] == 1
        and job["progress"]["theta"] == {"F0": 0.005}
    )
    dispatcher.tick()  # running, episode 2 with a NaN accuracy
    assert client.get(f"/api/jobs/{job_id}").json()["progress"]["meta_accuracy"] is None
    dispatcher.tick()  # succeeded
    job = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["heldout_accuracy"] == pytest.approx(0.6) and job["trials"] == 1
    [rule_id] = job["rule_ids"]
    kinds = [e["kind"] for e in job["events"]]
    assert kinds[:3] == ["queued", "submitted", "started"] and kinds[-2:] == ["rule", "succeeded"]
    rule = client.get(f"/api/rules/{rule_id}").json()
    assert rule["origin"] == "discovered" and rule["provenance"]["job_id"] == job_id
    assert rule["spec"]["network"]["widths"] == [784, 16, 10] and rule["provenance"]["seed"] == 0
    assert rule["scores"][0]["suite"] == "discovery"
    board = client.get("/api/leaderboard", params={"suite": "discovery"}).json()
    assert [e["rule_id"] for e in board["entries"]] == [rule_id]
    page = client.get(f"/rules/{rule_id}")
    assert page.text.count("<svg") >= 3  # formula, θ trajectory, meta-accuracy


def test_same_rule_from_two_jobs_is_stored_once(
    client: TestClient, auth: dict[str, str], dispatcher: Dispatcher, app: Any
) -> None:
    first, second = submit(client, auth), submit(client, auth)
    ticks(dispatcher, 6)
    a = client.get(f"/api/jobs/{first}").json()
    b = client.get(f"/api/jobs/{second}").json()
    assert a["status"] == b["status"] == "succeeded"
    assert a["rule_ids"] == b["rule_ids"]
    with session_scope(app.state.sessions) as s:
        assert s.scalar(select(func.count()).select_from(Rule)) == 1


def test_failed_job_keeps_the_reason(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    fake = FakeWorkers(
        job_script=lambda h: [
            FakeState("running", {"episode": 1, "total": 2}),
            FakeState("failed", None, None, "ValueError: diverged", "Traceback…"),
        ]
    )
    d = Dispatcher(settings, app.state.sessions, fake)
    job_id = submit(client, auth)
    ticks(d, 3)
    job = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()
    assert job["status"] == "failed" and job["error"] == "ValueError: diverged" and job["rule_ids"] == []
    # the reason is public, the traceback stays in the server log (issue 12)
    assert job["events"][-1]["kind"] == "failed" and job["events"][-1]["message"] == "ValueError: diverged"
    assert "Traceback" not in str(job["events"])


def test_submission_error_fails_the_job(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    class Broken(FakeWorkers):
        def submit_discovery(self, job_id: Any, spec: Any, checkpoint_dir: Any = None, *,
                             max_retries: int = 0) -> FakeHandle:
            raise RuntimeError("the cluster has no GPU")

    d = Dispatcher(settings, app.state.sessions, Broken())
    job_id = submit(client, auth)
    d.tick()
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and "the cluster has no GPU" in job["error"]


def test_ray_unavailable_keeps_jobs_queued(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    class NoRay(FakeWorkers):
        def ensure_ray(self) -> str:
            raise ConnectionError("no cluster at ray://nowhere")

    d = Dispatcher(settings, app.state.sessions, NoRay())
    app.state.dispatcher = d
    job_id = submit(client, auth)
    d.tick()
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "queued"
    health = client.get("/api/health").json()
    assert health["ray"]["state"] == "error" and "nowhere" in health["ray"]["error"]


def test_cancel_a_running_job_stops_the_ray_work(
    client: TestClient, auth: dict[str, str], dispatcher: Dispatcher, fake_workers: FakeWorkers
) -> None:
    fake_workers.job_script = lambda h: [FakeState("running", {"episode": 1, "total": 100})]
    job_id = submit(client, auth)
    ticks(dispatcher, 2)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    dispatcher.tick()
    [handle] = fake_workers.handles
    assert handle.cancelled
    dispatcher.tick()  # the fake reports "cancelled": the handle is dropped, the job stays cancelled
    assert dispatcher.status()["jobs"] == []
    job = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()
    assert job["status"] == "cancelled"
    assert [e["kind"] for e in job["events"]][-3:] == ["cancelled", "stopping", "stopped"]


def test_restart_requeues_running_jobs(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    stuck = FakeWorkers(job_script=lambda h: [FakeState("running", {"episode": 5, "total": 10})])
    first = Dispatcher(settings, app.state.sessions, stuck)
    job_id = submit(client, auth)
    ticks(first, 2)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"
    # the process dies: its handles are gone; a new dispatcher starts on the same database
    fresh = FakeWorkers()
    second = Dispatcher(settings, app.state.sessions, fresh)
    second.recover()
    job = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()
    assert job["status"] == "queued" and job["events"][-1]["kind"] == "requeued"
    ticks(second, 4)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert fresh.handles[0].args["checkpoint_dir"] == settings.checkpoint_dir(job_id)


def test_a_job_interrupted_too_often_fails(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    job_id = submit(client, auth)
    with session_scope(app.state.sessions) as s:
        s.get(Job, job_id).attempts = MAX_ATTEMPTS
    Dispatcher(settings, app.state.sessions, FakeWorkers()).tick()
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and "attempts" in job["error"]


def test_sweep_trials_are_stored(client: TestClient, auth: dict[str, str], app: Any, settings: Any) -> None:
    def script(handle: FakeHandle) -> list[FakeState]:
        best = fake_discovery_result({"F0": 0.02, "F2": -0.01})
        trials = [
            {
                "index": i,
                "config": {"seed": i},
                "status": "succeeded",
                "heldout_accuracy": 0.5 + 0.1 * i,
                "heldout_ci95": 0.05,
                "rule": best["rule"],
                "error": None,
                "wall_time_s": 1.0,
            }
            for i in range(3)
        ]
        return [FakeState("succeeded", None, {**best, "trials": trials, "best_trial": 2, "sweep": {"n": 3}})]

    d = Dispatcher(settings, app.state.sessions, FakeWorkers(job_script=script))
    job_id = submit(client, auth, sweep={"seeds": [0, 1, 2]})
    ticks(d, 2)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["trials"] == 3
    rule = client.get(f"/api/rules/{job['rule_ids'][0]}").json()
    assert rule["provenance"]["seed"] == 2 and rule["provenance"]["best_trial"] == 2
    with session_scope(app.state.sessions) as s:
        accs = [
            t.heldout_accuracy
            for t in s.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.index))
        ]
    assert accs == pytest.approx([0.5, 0.6, 0.7])


def test_benchmark_flow_and_leaderboard(
    client: TestClient, auth: dict[str, str], dispatcher: Dispatcher, fake_workers: FakeWorkers
) -> None:
    r = client.post(
        "/api/benchmarks",
        json={"suite": "fa5-online", "expression": "-0.01*e*x.T + 0.05*e*e_pre.T"},
        headers=auth,
    )
    bench_id, rule_id = r.json()["id"], r.json()["rule_id"]
    ticks(dispatcher, 3)
    [handle] = fake_workers.handles
    assert handle.kind == "benchmark" and handle.args["suite"] == "fa5-online"
    run = client.get(f"/api/benchmarks/{bench_id}").json()
    assert run["status"] == "succeeded" and run["suite_version"] == "1.0"
    by_learner = {s["learner"]: s for s in run["scores"]}
    assert by_learner["rule"]["rule_id"] == rule_id and by_learner["rule"]["origin"] == "user"
    assert by_learner["backprop"]["origin"] == "baseline" and by_learner["backprop"]["ci95"] == pytest.approx(
        0.05
    )
    board = client.get("/api/leaderboard").json()  # default: the suite of the latest benchmark
    assert board["suite"] == "fa5-online"
    assert [(e["rank"], e["name"], e["origin"]) for e in board["entries"]] == [
        (1, "backprop", "baseline"),
        (2, "-0.01*e*x.T + 0.05*e*e_pre.T", "user"),
        (3, "fa", "baseline"),
    ]
    assert board["entries"][1]["ci"] == pytest.approx(0.1) and board["entries"][1]["cost"] == pytest.approx(
        0.2
    )
    rule = client.get(f"/api/rules/{rule_id}").json()
    assert [s["suite"] for s in rule["scores"]] == ["fa5-online"]
    page = client.get("/", params={"suite": "fa5-online"}).text
    assert "backprop" in page and "baseline" in page and "<svg" in page


def test_auto_benchmark_after_discovery(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    fake = FakeWorkers()
    d = Dispatcher(
        settings.with_(auto_benchmark_suites=("fa5-online",), benchmark_tiny=True), app.state.sessions, fake
    )
    job_id = submit(client, auth)
    ticks(d, 8)
    rule_id = client.get(f"/api/jobs/{job_id}").json()["rule_ids"][0]
    [run] = client.get("/api/benchmarks").json()
    assert run["rule_id"] == rule_id and run["tiny"] is True and run["status"] == "succeeded"


def test_dispatcher_thread_with_the_app_lifespan(settings: Any, auth: dict[str, str]) -> None:
    """The lifespan starts the thread; a job goes through on its own."""
    fake = FakeWorkers()
    application = create_app(settings, workers=fake, dispatcher=True)
    with TestClient(application) as c:
        job_id = submit(c, auth)
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.get(f"/api/jobs/{job_id}").json()["status"] != "succeeded":
            time.sleep(0.05)
        assert c.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"
        health = c.get("/api/health").json()
        assert health["dispatcher"]["alive"] is True and health["ray"]["state"] == "connected"
    assert application.state.dispatcher is None
    application.state.engine.dispose()


def test_the_rule_entry_is_the_entry_of_kind_rule() -> None:
    report = BenchmarkReport(suite="s", entries=[{"learner": "bp", "kind": "baseline"},
                                                 {"learner": "x", "kind": "rule", "ci95": [0.5, 0.7]}])
    assert report.rule_entry() == 1 and report.entries[1].ci95_halfwidth == pytest.approx(0.1)
    assert BenchmarkReport(suite="s", entries=[{"learner": "bp"}]).rule_entry() is None
