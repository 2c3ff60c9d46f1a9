"""The reward family over REST: a plain goal job ("find a three-factor rule for a reservoir computer", tiny size)
stores ≥ 2 front rules of family "reward", each with its test-phase deviation in the API (rule provenance metrics)
and on the rule page. Fast: the API and the dispatcher with in-process workers; slow: the live server with real
Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import LiveServer
from tests.helpers.goal_jobs import Get, front_rules, run_goal_in_process, run_goal_live

TINY_GOAL = "find a three-factor rule for a reservoir computer, tiny"


def check_job(job: dict[str, Any], get: Get) -> None:
    assert job["spec"]["task"]["kind"] == "reservoir-motor" and job["spec"]["rule"]["family"] == "reward"
    for rule in front_rules(job, get, "reward", "Test-phase deviation"):
        metrics = rule["provenance"]["metrics"]
        assert metrics["deviation"] > 0 and len(metrics["deviation_per_seed"]) == 2


def test_goal_job_stores_the_reward_front_in_process(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    check_job(run_goal_in_process(client, auth, app, settings, TINY_GOAL), client.get)


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
    run_goal_live(live_server_factory(), TINY_GOAL, check_job)
