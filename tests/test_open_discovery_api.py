"""Open discovery over the real server and the real local Ray: a plain goal searches the term library.

A goal that names no term runs the forward search over the 16-term library (tiny size). The job stores every rule
of its Pareto front (≥ 2), marks exactly one selected, and the front is on the job's JSON, its page (a plot and a
table) and the leaderboard's front filter. A second job with the same goal and seed finds the same rules: they are
the same rows (deduplicated by canonical hash), not copies.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import FINAL, LiveServer, wait_for

pytestmark = pytest.mark.slow

GOAL = "find a plasticity rule for depth-2 online learning under feedback alignment on synthetic data, tiny"


def run_goal(http: httpx.Client, auth: dict[str, str], server: LiveServer) -> dict:
    r = http.post("/api/jobs", json={"goal": GOAL}, headers=auth)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["rule"]["pool"] == "library" and spec["search"]["method"] == "forward", spec
    job_id = r.json()["id"]
    job = wait_for(lambda: http.get(f"/api/jobs/{job_id}").json(), lambda j: j["status"] in FINAL, 300,
                   f"job {job_id}", server)
    assert job["status"] == "succeeded", job
    return job


def test_plain_goal_searches_the_library_and_stores_its_front(
    live_server_factory: Callable[..., LiveServer],
) -> None:
    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job = run_goal(http, auth, server)
        front = job["front"]
        assert len(front) >= 2, front
        assert sum(p["selected"] for p in front) == 1
        assert [p["n_terms"] for p in front] == sorted(p["n_terms"] for p in front)
        ids = [p["rule_id"] for p in front]
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
        assert set(ids) <= set(job["rule_ids"])
        selected = next(p for p in front if p["selected"])
        for p in front:
            rule = http.get(f"/api/rules/{p['rule_id']}").json()
            assert rule["provenance"]["job_id"] == job["id"] and p["n_terms"] == len(p["terms"])
            [score] = [s for s in rule["scores"] if s["suite"] == "discovery" and s["job_id"] == job["id"]]
            assert score["score"] == p["heldout_accuracy"]   # each front rule scores its own front point
        # the job page shows the front as a plot and a table; the rule page rings the rule on it
        page = http.get(f"/jobs/{job['id']}").text
        assert 'id="front-plot"' in page and 'id="front-table"' in page and "selected" in page
        assert 'id="front-plot"' in http.get(f"/rules/{selected['rule_id']}").text
        # the leaderboard's front filter keeps exactly the front rules
        board = http.get("/api/leaderboard", params={"suite": "discovery", "front": True}).json()
        assert board["only_front"] is True
        assert {e["rule_id"] for e in board["entries"]} == set(ids)
        assert [e["front"]["selected"] for e in board["entries"] if e["rule_id"] == selected["rule_id"]] == [True]
        assert "front rules only" in http.get("/", params={"suite": "discovery", "front": "true"}).text

        # the same goal again (same default seed): the same rules, stored once
        before = http.get("/api/rules").headers["X-Total-Count"]
        again = run_goal(http, auth, server)
        assert [p["rule_id"] for p in again["front"]] == ids
        assert http.get("/api/rules").headers["X-Total-Count"] == before
