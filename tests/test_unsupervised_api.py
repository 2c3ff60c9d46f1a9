"""The unsupervised family over REST: a plain goal job ("… extracts principal components", tiny size) stores ≥ 2
front rules of family "unsupervised", each with its subspace error in the API (rule provenance metrics, the job's
result summary) and on the rule page. Fast: the API and the dispatcher with in-process workers; slow: the live
server with real Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import LiveServer
from tests.helpers.goal_jobs import Get, front_rules, run_goal_in_process, run_goal_live

GOAL = "find an unsupervised hebbian rule that extracts principal components"
TINY_GOAL = GOAL + ", tiny"


def check_job(job: dict[str, Any], get: Get) -> None:
    assert job["spec"]["task"]["kind"] == "pca" and job["spec"]["network"]["widths"][0] == 64
    for rule in front_rules(job, get, "unsupervised", "Subspace error"):
        metrics = rule["provenance"]["metrics"]
        assert 0.0 <= metrics["subspace_error"] <= 1.0 and len(metrics["subspace_error_passes"]) >= 1
    assert all(0.0 <= p["metrics"]["subspace_error"] <= 1.0 for p in job["front"])


def test_goal_job_stores_the_unsupervised_front_in_process(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any
) -> None:
    check_job(run_goal_in_process(client, auth, app, settings, TINY_GOAL), client.get)


@pytest.mark.slow
def test_goal_job_stores_the_unsupervised_front_live(live_server_factory: Callable[..., LiveServer]) -> None:
    run_goal_live(live_server_factory(), TINY_GOAL, check_job)
