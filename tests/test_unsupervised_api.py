"""The unsupervised family over REST: a plain goal job ("… extracts principal components", tiny size) stores ≥ 2
front rules of family "unsupervised", each with its subspace error in the API (rule provenance metrics, the job's
result summary) and on the rule page. Fast: the API and the dispatcher with in-process workers; slow: the live
server with real Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.runs.dispatcher import Dispatcher
from tests.conftest import LiveServer, wait_final
from tests.test_contract import InProcessWorkers

GOAL = "find an unsupervised hebbian rule that extracts principal components"
TINY_GOAL = GOAL + ", tiny"


def check_job(job: dict[str, Any], get: Callable[[str], Any]) -> None:
    assert job["status"] == "succeeded", job
    assert job["spec"]["task"]["kind"] == "pca" and job["spec"]["network"]["widths"][0] == 64
    front = job["front"]
    assert len(front) >= 2, front
    assert sum(p["selected"] for p in front) == 1
    assert all(0.0 <= p["metrics"]["subspace_error"] <= 1.0 for p in front)
    for point in front:
        rule = get(f"/api/rules/{point['rule_id']}").json()
        assert rule["family"] == "unsupervised", rule
        assert rule["provenance"]["canonical"].startswith("unsupervised/v1:")
        metrics = rule["provenance"]["metrics"]
        assert 0.0 <= metrics["subspace_error"] <= 1.0 and len(metrics["subspace_error_passes"]) >= 1
        assert "Subspace error" in get(f"/rules/{point['rule_id']}").text


def test_goal_job_stores_the_unsupervised_front_in_process(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    from discovery.router import discover

    r = client.post("/api/jobs", json={"goal": TINY_GOAL}, headers=auth)
    assert r.status_code == 201, r.text
    d = Dispatcher(settings, app.state.sessions, InProcessWorkers(discover))
    d.tick()
    d.tick()
    check_job(client.get(f"/api/jobs/{r.json()['id']}").json(), client.get)


@pytest.mark.slow
def test_goal_job_stores_the_unsupervised_front_live(live_server_factory: Callable[..., LiveServer]) -> None:
    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/api/jobs", json={"goal": TINY_GOAL}, headers=auth)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = wait_final(http, f"/api/jobs/{job_id}", 300, server)
        check_job(job, http.get)
