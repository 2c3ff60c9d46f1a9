"""End to end: the real server (uvicorn subprocess), the real local Ray, the real workers and engine.

1. A job submitted as plain text runs to ``succeeded``; its rule (with LaTeX) is on the leaderboard JSON and page.
2. The server is killed (SIGKILL, Ray included) while a job runs and started again: the job is resubmitted and
   ends ``succeeded`` (or ``failed`` with a reason); rules stored before the crash are intact.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, wait_final, wait_for

pytestmark = pytest.mark.slow

GOAL = (
    "find a plasticity rule for depth-2 online learning under feedback alignment with oja on synthetic data "
    "for 3 episodes, tiny"
)
def test_goal_to_rule_on_the_leaderboard(live_server_factory: Callable[..., LiveServer]) -> None:
    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/api/jobs", json={"goal": GOAL}, headers=auth)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert r.json()["spec"]["network"]["widths"] == [784, 16, 10]
        job = wait_final(http, f"/api/jobs/{job_id}", 240, server)
        assert job["status"] == "succeeded", job
        assert job["progress"]["episode"] == job["progress"]["total"] == 3
        assert set(job["progress"]["theta"]) == {"F0", "F9"}
        [rule_id] = job["rule_ids"]

        rule = http.get(f"/api/rules/{rule_id}").json()
        assert rule["latex"] and "x^{T}" in rule["latex"]
        assert rule["origin"] == "discovered" and rule["provenance"]["job_id"] == job_id
        assert rule["spec"]["task"]["dataset"] == "synthetic"

        board = http.get("/api/leaderboard", params={"suite": "discovery"}).json()
        assert rule_id in [e["rule_id"] for e in board["entries"]]
        page = http.get("/", params={"suite": "discovery"}).text
        assert f'href="/rules/{rule_id}"' in page and "<svg" in page
        rule_page = http.get(f"/rules/{rule_id}").text
        assert rule_page.count("<svg") >= 3
        job_page = http.get(f"/jobs/{job_id}").text
        assert "succeeded" in job_page and 'http-equiv="refresh"' not in job_page
        # benchmark the discovered rule on every family's suites (tiny size) through the workers, submitted together
        # so the dispatcher runs them side by side
        suites = ("fa5-online", "fixedpoint-linear", "fixedpoint-mnist", "reservoir-motor")
        bench_ids = {}
        for suite in suites:
            r = http.post("/api/benchmarks", json={"rule_id": rule_id, "suite": suite, "tiny": True}, headers=auth)
            assert r.status_code == 201, r.text
            bench_ids[suite] = r.json()["id"]
        for suite, bid in bench_ids.items():
            run = wait_final(http, f"/api/benchmarks/{bid}", 300, server)
            assert run["status"] == "succeeded", run
            assert any(s["origin"] == "baseline" and s["score"] is not None for s in run["scores"]), run
            board = http.get("/api/leaderboard", params={"suite": suite}).json()
            assert board["entries"], board
            if suite == "fa5-online":
                assert {s["origin"] for s in run["scores"]} == {"discovered", "baseline"}
                names = [e["name"] for e in board["entries"]]
                assert rule["name"] in names and "BP" in names
                assert all(e["ci"] is not None for e in board["entries"])
        health = http.get("/api/health").json()
        assert health["ray"]["state"] == "connected" and health["ray"]["local"] is True


def test_restart_while_a_job_runs(live_server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = live_server_factory(data_dir)
    auth = {"Authorization": f"Bearer {server.token}"}
    spec = {
        "name": "restart",
        "network": {"widths": [784, 16, 10]},
        "task": {"dataset": "synthetic", "shots": 5, "queries": 5},
        # about 20 ms an episode on a quiet 2-core machine: 600 keep the job running for seconds, long enough to be
        # seen past its first checkpoint before it ends (80 episodes ended within one poll)
        "meta": {"episodes": 600, "eval_episodes": 10, "checkpoint_every": 5},
    }
    with httpx.Client(base_url=server.url, timeout=30) as http:
        kept = http.post(
            "/api/rules", json={"name": "kept", "expression": "-0.01*e*x.T + 0.03*e*e_pre.T"}, headers=auth
        ).json()
        job_id = http.post("/api/jobs", json=spec, headers=auth).json()["id"]
        wait_for(
            lambda: http.get(f"/api/jobs/{job_id}").json(),
            lambda j: j["status"] == "running" and (j["progress"] or {}).get("episode", 0) >= 6,
            180,
            "the job to run past its first checkpoint",
            server,
        )

    server.stop(signal.SIGKILL)  # the server and its local Ray die at once
    assert (data_dir / "checkpoints" / f"job-{job_id}").is_dir()

    again = live_server_factory(data_dir, port=server.port)
    with httpx.Client(base_url=again.url, timeout=30) as http:
        job = wait_final(http, f"/api/jobs/{job_id}", 240, again)
        assert job["status"] == "succeeded" or (job["status"] == "failed" and job["error"]), job
        assert job["attempts"] == 2
        events = http.get(f"/api/jobs/{job_id}", params={"events": True}).json()["events"]
        kinds = [e["kind"] for e in events]
        assert "requeued" in kinds and kinds.count("submitted") == 2
        if job["status"] == "succeeded":
            assert job["resumed_from_episode"] and job["resumed_from_episode"] >= 5  # the episode-5 checkpoint
            after = events[kinds.index("requeued") :]
            resumed = [e["data"]["episode"] for e in after if e["kind"] == "progress"]
            assert resumed and resumed[0] > 1  # resumed from a checkpoint, not from episode 0
            assert job["rule_ids"]
        still = http.get(f"/api/rules/{kept['id']}").json()
        assert (still["hash"], still["expression"], still["name"]) == (
            kept["hash"],
            kept["expression"],
            "kept",
        )
