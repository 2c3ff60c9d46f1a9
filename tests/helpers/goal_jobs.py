"""A plain goal job over REST, run in process (the dispatcher with in-process workers) or by the live server
(real Ray), and the checks every family's front shares: the job succeeded, ≥ 2 front rules with one selected, each
stored with the family's name and canonical prefix and shown on its rule page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient

from service.runs.dispatcher import Dispatcher
from tests.conftest import LiveServer, wait_final
from tests.test_contract import InProcessWorkers

Get = Callable[[str], Any]
"""``client.get``: a path → its response."""


def run_goal_in_process(client: TestClient, auth: dict[str, str], app: Any, settings: Any, goal: str) -> Any:
    """Post the goal as a job, run it with the engine in process (two dispatcher ticks: submit, then poll), and
    return the finished job's JSON."""
    from discovery.router import discover

    r = client.post("/api/jobs", json={"goal": goal}, headers=auth)
    assert r.status_code == 201, r.text
    d = Dispatcher(settings, app.state.sessions, InProcessWorkers(discover))
    d.tick()
    d.tick()
    return client.get(f"/api/jobs/{r.json()['id']}").json()


def run_goal_live(server: LiveServer, goal: str, check: Callable[[Any, Get], None]) -> None:
    """Post the goal to the live server, wait (≤ 300 s) for the job to end, and ``check(job, get)``."""
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/api/jobs", json={"goal": goal}, headers=auth)
        assert r.status_code == 201, r.text
        check(wait_final(http, f"/api/jobs/{r.json()['id']}", 300, server), http.get)


def front_rules(job: Any, get: Get, family: str, page_text: str) -> list[Any]:
    """The stored rules of the job's front, after checking that the job succeeded, its front has ≥ 2 points with
    one selected, and each rule has ``family``, a ``<family>/v1:`` canonical text and ``page_text`` on its page."""
    assert job["status"] == "succeeded", job
    front = job["front"]
    assert len(front) >= 2, front
    assert sum(p["selected"] for p in front) == 1
    rules = []
    for point in front:
        rule = get(f"/api/rules/{point['rule_id']}").json()
        assert rule["family"] == family, rule
        assert rule["provenance"]["canonical"].startswith(f"{family}/v1:")
        assert page_text in get(f"/rules/{point['rule_id']}").text
        rules.append(rule)
    return rules
