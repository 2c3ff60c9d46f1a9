"""The recurrent fixed-point family over REST: the shipped example spec and a recurrent goal are accepted, run over
the real local Ray and store a rule of family ``recurrent``; a rule of the wrong family is a 422 naming the field;
the leaderboard ranks each suite in the direction the suite declares."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.db.models import SUCCEEDED, BenchmarkRun, BenchmarkScore
from service.db.session import session_scope
from tests.conftest import FINAL, LiveServer, wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fixedpoint_mnist.json"
RECURRENT_GOAL = "find a recurrent plasticity rule for fixed points on mnist, tiny"


def tiny_example() -> dict[str, Any]:
    """examples/fixedpoint_mnist.json at a smoke-test size (N = 16, 2 meta-steps of 3 inner steps)."""
    spec = json.loads(EXAMPLE.read_text())
    spec["network"]["widths"] = [784, 16, 10]
    spec["task"].update({"ways": 2, "shots": 3, "queries": 4})
    spec["meta"].update({"episodes": 2, "eval_episodes": 2})
    return spec


def test_the_example_spec_is_accepted_as_recurrent(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/jobs", json=json.loads(EXAMPLE.read_text()), headers=auth)
    assert r.status_code == 201, r.text
    rule = r.json()["spec"]["rule"]
    assert rule["family"] == "recurrent" and rule["terms"] == ["rec_dW3", "rec_dW4", "rec_oja", "rec_decay"]


def test_a_rule_of_the_wrong_family_is_a_422_naming_the_field(client: TestClient, auth: dict[str, str]) -> None:
    bad = {**tiny_example(), "rule": {"family": "feedforward", "terms": ["F0"]}}
    r = client.post("/api/jobs", json=bad, headers=auth)
    assert r.status_code == 422 and "rule.family" in r.text, r.text
    r = client.post("/api/jobs", json={"rule": {"terms": ["rec_dW3"]}}, headers=auth)   # fewshot task
    assert r.status_code == 422 and "rec_dW3" in r.text and "terms" in r.text, r.text
    wrong_net = {**tiny_example(), "network": {"widths": [784, 16, 16, 10]}}
    r = client.post("/api/jobs", json=wrong_net, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "network", "widths"], r.text


def test_a_recurrent_goal_is_understood(client: TestClient) -> None:
    r = client.get("/api/goal", params={"text": RECURRENT_GOAL})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["spec"]["task"]["kind"] == "fixedpoint-mnist" and body["spec"]["rule"]["family"] == "recurrent"
    assert body["spec"]["network"]["widths"] == [784, 16, 10]
    assert any("recurrent fixed-point rule" in u for u in body["understood"]), body["understood"]


def _scores(app: Any, suite: str, scores: dict[str, float]) -> None:
    with session_scope(app.state.sessions) as s:
        run = BenchmarkRun(suite=suite, owner="t", tiny=True, seed=0, status=SUCCEEDED)
        s.add(run)
        s.flush()
        for learner, score in scores.items():
            s.add(BenchmarkScore(run_id=run.id, suite=suite, learner=learner, origin="baseline", score=score))


@pytest.mark.parametrize(("suite", "higher", "order"), [
    ("fixedpoint-linear", False, ["dW3", "dW2", "dW1"]),
    ("reservoir-motor", False, ["force task1", "rmhl task1"]),
    ("fa5-online", True, ["BP", "FA"]),
])
def test_the_leaderboard_ranks_in_the_suites_direction(client: TestClient, app: Any, suite: str, higher: bool,
                                                       order: list[str]) -> None:
    scores = {"fixedpoint-linear": {"dW1": -1.0, "dW2": -3.0, "dW3": -4.0},
              "reservoir-motor": {"rmhl task1": 0.2, "force task1": 0.01},
              "fa5-online": {"FA": 0.23, "BP": 0.75}}[suite]
    _scores(app, suite, scores)
    board = client.get("/api/leaderboard", params={"suite": suite}).json()
    assert board["higher_is_better"] is higher
    assert [e["name"] for e in board["entries"]] == order
    page = client.get("/", params={"suite": suite}).text
    assert ("Lower is better" in page) is (not higher)


@pytest.mark.slow
def test_recurrent_job_and_goal_run_over_ray(live_server_factory: Callable[..., LiveServer]) -> None:
    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        ids = []
        for body in (tiny_example(), {"goal": RECURRENT_GOAL}):
            r = http.post("/api/jobs", json=body, headers=auth)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        for job_id in ids:
            job = wait_for(lambda: http.get(f"/api/jobs/{job_id}").json(), lambda j: j["status"] in FINAL, 300,
                           f"job {job_id}", server)
            assert job["status"] == "succeeded", job
            assert job["rule_ids"], job
            for rule_id in job["rule_ids"]:   # the spec's one rule; the goal's open search stores its front
                rule = http.get(f"/api/rules/{rule_id}").json()
                assert rule["family"] == "recurrent" and all(t.startswith("rec_") for t in rule["terms"]), rule
        goal_job = http.get(f"/api/jobs/{ids[1]}").json()
        assert len(goal_job["front"]) >= 2 and sum(p["selected"] for p in goal_job["front"]) == 1


def test_a_suite_without_intervals_reports_none_not_zero() -> None:
    from discovery.benchmarks.registry import run_suite

    report = run_suite("fixedpoint-linear", tiny=True)
    assert report["higher_is_better"] is False and report["metric"].startswith("log10")
    assert report["entries"] and all(e["ci95"] is None and e["ci95_halfwidth"] is None for e in report["entries"])


def test_a_stored_recurrent_rule_runs_on_fixedpoint_linear(client: TestClient, auth: dict[str, str], app: Any,
                                                           settings: Any) -> None:
    """POST /api/benchmarks with a stored recurrent rule on fixedpoint-linear runs that rule (issue #23): the
    worker stand-in runs the real suite in-process, and the rule's row is in the stored result."""
    from discovery.benchmarks.cache import run_benchmark
    from service.runs.dispatcher import Dispatcher
    from tests.conftest import FakeState, FakeWorkers
    from workers.contract import BenchmarkTask

    def real_benchmark(handle: Any) -> list[Any]:
        a = handle.args
        rule = BenchmarkTask(suite=a["suite"], expression=a["expression"]).rule()
        report = run_benchmark(a["suite"], rule, tiny=a["tiny"], seed=a["seed"]).to_json()
        return [FakeState("succeeded", None, report)]

    workers = FakeWorkers(benchmark_script=real_benchmark)
    app.state.dispatcher = dispatcher = Dispatcher(settings, app.state.sessions, workers)
    stored = client.post("/api/rules", json={"name": "dW4 + oja", "expression": "0.1*dW4 + 0.001*oja"},
                         headers=auth).json()
    r = client.post("/api/benchmarks", json={"suite": "fixedpoint-linear", "rule_id": stored["id"], "tiny": True},
                    headers=auth)
    assert r.status_code == 201, r.text
    for _ in range(3):
        dispatcher.tick()
    run = client.get(f"/api/benchmarks/{r.json()['id']}").json()
    assert run["status"] == "succeeded", run
    [rule_row] = [s for s in run["scores"] if s["origin"] != "baseline"]   # origin: the rule's (here "user")
    assert rule_row["score"] is not None and rule_row["score"] < 0          # log10 J of a converging run
    assert {s["learner"] for s in run["scores"] if s["origin"] == "baseline"} == {"dW1", "dW2", "dW3"}


@pytest.mark.parametrize("suite", ["fixedpoint-linear", "fixedpoint-mnist"])
def test_a_stored_rule_with_a_generated_library_term_runs_on_every_recurrent_suite(
        suite: str, client: TestClient, auth: dict[str, str], app: Any, settings: Any) -> None:
    """Issue #23: any stored recurrent rule — here one with a generated library term (rules.recurrent_library) —
    is run by both recurrent suites beside the published rules; its row is in the stored result."""
    from discovery.benchmarks.cache import run_benchmark
    from rules.recurrent import RECURRENT_LIBRARY, RECURRENT_TERMS
    from service.runs.dispatcher import Dispatcher
    from tests.conftest import FakeState, FakeWorkers
    from workers.contract import BenchmarkTask

    generated = next(t for t in RECURRENT_LIBRARY if t not in RECURRENT_TERMS)

    def real_benchmark(handle: Any) -> list[Any]:
        a = handle.args
        rule = BenchmarkTask(suite=a["suite"], expression=a["expression"]).rule()
        report = run_benchmark(a["suite"], rule, tiny=a["tiny"], seed=a["seed"]).to_json()
        return [FakeState("succeeded", None, report)]

    app.state.dispatcher = dispatcher = Dispatcher(settings, app.state.sessions,
                                                   FakeWorkers(benchmark_script=real_benchmark))
    stored = client.post("/api/rules", json={"name": "dW4 + generated", "expression": f"0.1*dW4 + 0.02*{generated}"},
                         headers=auth)
    assert stored.status_code == 201, stored.text
    r = client.post("/api/benchmarks", json={"suite": suite, "rule_id": stored.json()["id"], "tiny": True},
                    headers=auth)
    assert r.status_code == 201, r.text
    for _ in range(3):
        dispatcher.tick()
    run = client.get(f"/api/benchmarks/{r.json()['id']}").json()
    assert run["status"] == "succeeded", run
    [rule_row] = [s for s in run["scores"] if s["origin"] != "baseline"]
    assert rule_row["score"] is not None and math.isfinite(rule_row["score"])
    published = {"fixedpoint-linear": {"dW1", "dW2", "dW3"}, "fixedpoint-mnist": {"dW1", "dW3", "dW4"}}[suite]
    assert {s["learner"] for s in run["scores"] if s["origin"] == "baseline"} == published
