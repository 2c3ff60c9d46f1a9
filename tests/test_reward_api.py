"""The reward family over REST: a plain goal job ("find a three-factor rule for a reservoir computer", tiny size)
stores ≥ 2 front rules of family "reward", each with its test-phase deviation in the API (rule provenance metrics)
and on the rule page. Fast: the API and the dispatcher with in-process workers; slow: the live server with real
Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.runs.dispatcher import Dispatcher
from tests.conftest import LiveServer, wait_final
from tests.test_contract import InProcessWorkers

TINY_GOAL = "find a three-factor rule for a reservoir computer, tiny"


def check_job(job: dict[str, Any], get: Callable[[str], Any]) -> None:
    assert job["status"] == "succeeded", job
    assert job["spec"]["task"]["kind"] == "reservoir-motor" and job["spec"]["rule"]["family"] == "reward"
    front = job["front"]
    assert len(front) >= 2, front
    assert sum(p["selected"] for p in front) == 1
    for point in front:
        rule = get(f"/api/rules/{point['rule_id']}").json()
        assert rule["family"] == "reward", rule
        assert rule["provenance"]["canonical"].startswith("reward/v1:")
        metrics = rule["provenance"]["metrics"]
        assert metrics["deviation"] > 0 and len(metrics["deviation_per_seed"]) == 2
        assert "Test-phase deviation" in get(f"/rules/{point['rule_id']}").text


def test_goal_job_stores_the_reward_front_in_process(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    from discovery.router import discover

    r = client.post("/api/jobs", json={"goal": TINY_GOAL}, headers=auth)
    assert r.status_code == 201, r.text
    d = Dispatcher(settings, app.state.sessions, InProcessWorkers(discover))
    d.tick()
    d.tick()
    check_job(client.get(f"/api/jobs/{r.json()['id']}").json(), client.get)


def test_a_reward_rule_is_stored_from_its_text(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/rules", json={"name": "rmhl", "expression": "reward/v1: 0.0025*rmhl"}, headers=auth)
    assert r.status_code in (200, 201), r.text
    assert r.json()["family"] == "reward"
    bad = client.post("/api/rules", json={"name": "bad", "expression": "reward/v1: 0.0025*rmhl*rmhl"}, headers=auth)
    assert bad.status_code == 422, bad.text


def test_unknown_reward_term_names_are_a_422_not_a_500(client: TestClient, auth: dict[str, str]) -> None:
    """Found by the fuzzer: an unknown key in theta_init raised KeyError inside the spec validator (a 500)."""
    spec = {"task": {"kind": "reservoir-motor"}, "rule": {"family": "reward", "theta_init": {"no-such-term": 1.0}}}
    before = client.get("/api/jobs").json()
    r = client.post("/api/jobs", json=spec, headers=auth)
    assert r.status_code == 422, r.text
    assert "unknown reward term 'no-such-term'" in r.text
    assert client.get("/api/jobs").json() == before, "nothing stored"


@pytest.mark.slow
def test_goal_job_stores_the_reward_front_live(live_server_factory: Callable[..., LiveServer]) -> None:
    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/api/jobs", json={"goal": TINY_GOAL}, headers=auth)
        assert r.status_code == 201, r.text
        job = wait_final(http, f"/api/jobs/{r.json()['id']}", 300, server)
        check_job(job, http.get)
