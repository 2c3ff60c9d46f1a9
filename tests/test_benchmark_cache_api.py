"""Benchmarks through a live server with a real local Ray (tiny fa5-online): the first run tunes the baselines as
Ray tasks (progress visible while it runs) and caches them; a second rule reuses them (tunes nothing) and gets
its paired differences; a retune can be cancelled while it tunes (the dispatcher stops its Ray work); 409 once
finished."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import LiveServer

FINAL = {"succeeded", "failed", "cancelled"}
RULE_A = "-0.01*e*x.T"
RULE_B = "-0.02*e*x.T + 0.01*e*e_pre.T"


def _poll(http: httpx.Client, bench_id: int, until: Callable[[dict[str, Any]], bool], timeout: float,
          server: LiveServer) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """GET the run until ``until(run)``; (the last answer, every answer seen)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = http.get(f"/api/benchmarks/{bench_id}").json()
        seen.append(run)
        if until(run):
            return run, seen
        time.sleep(0.25)
    raise AssertionError(f"benchmark {bench_id} did not get there in {timeout} s: {seen[-1]}\n{server.log()}")


def _submit(http: httpx.Client, auth: dict[str, str], **body: Any) -> int:
    r = http.post("/api/benchmarks", json={"suite": "fa5-online", "tiny": True, **body}, headers=auth)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_cached_baselines_paired_progress_and_cancel(live_server_factory: Callable[..., LiveServer]) -> None:
    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/api/benchmarks", json={"suite": "fa5-online", "retune": "often"}, headers=auth)
        assert r.status_code == 422 and "retune" in r.text

        # 1. the first rule: the baselines are tuned (fan-out), progress is visible while it runs
        first = _submit(http, auth, expression=RULE_A)
        run, seen = _poll(http, first, lambda b: b["status"] in FINAL, 300, server)
        assert run["status"] == "succeeded", run
        live = [b["progress"] for b in seen if b["status"] == "running" and b["progress"]]
        assert live, "no progress seen while the benchmark ran"
        assert {p["phase"] for p in live} <= {"tune", "score"} and any(p["phase"] == "tune" for p in live)
        assert all(p["learners"] >= 1 and p["elapsed"] >= 0 for p in live)
        assert run["baselines"] == "tuned" and set(run["vs"]) >= {"BP", "FA", "PC-Strict"}
        tuned = {s["learner"]: s for s in run["scores"] if s["origin"] == "baseline"}
        assert len(tuned) == 7

        # 2. a second rule on the same suite reuses them: only the rule runs
        second = _submit(http, auth, expression=RULE_B)
        run2, seen2 = _poll(http, second, lambda b: b["status"] in FINAL, 120, server)
        assert run2["status"] == "succeeded", run2
        assert run2["baselines"] == "cached"
        assert all(b["progress"] is None or b["progress"]["phase"] == "score" for b in seen2)  # tuned nothing
        again = {s["learner"]: s for s in run2["scores"] if s["origin"] == "baseline"}
        assert again == {k: {**v} for k, v in tuned.items()}  # the same rows, costs included: nothing re-ran
        vs = run2["vs"]
        assert set(vs) == set(tuned) and all(v["verdict"] in ("better", "worse", "not distinguishable")
                                             for v in vs.values())
        assert all(v["ci95"][0] <= v["delta"] <= v["ci95"][1] for v in vs.values())

        board = http.get("/api/leaderboard", params={"suite": "fa5-online"}).json()
        rules = [e for e in board["entries"] if e["origin"] != "baseline"]
        assert rules and all(e["vs"] and "BP" in e["vs"] for e in rules)
        page = http.get("/", params={"suite": "fa5-online"}).text
        assert " vs BP" in page and "points" in page
        bench_page = http.get(f"/benchmarks/{second}").text
        assert "paired, same episodes" in bench_page and "from the suite&#39;s cache" in bench_page

        # 3. a retune, cancelled while it tunes: the dispatcher stops its Ray work, nothing is cached
        third = _submit(http, auth, expression=RULE_B, retune=True)
        _poll(http, third, lambda b: b["status"] == "running" and bool(b["progress"]), 120, server)
        live_page = http.get(f"/benchmarks/{third}").text
        assert 'id="progress"' in live_page and "s elapsed" in live_page and "being tuned" in live_page
        r = http.post(f"/api/benchmarks/{third}/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        health = _poll_health(http, lambda h: third not in h["dispatcher"].get("benchmarks", []), 60)
        assert third not in health["dispatcher"]["benchmarks"]
        run3 = http.get(f"/api/benchmarks/{third}").json()
        assert run3["status"] == "cancelled" and run3["scores"] == []

        # 4. nothing to cancel once finished
        r = http.post(f"/api/benchmarks/{first}/cancel", headers=auth)
        assert r.status_code == 409 and "already succeeded" in r.json()["detail"]

    engine = create_engine(f"sqlite:///{server.data_dir / 'plasticity.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT suite, suite_version, seed, tiny, tuned_with, run_id "
                                     "FROM baseline_sets")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("fa5-online", "1.0", 0, 1, "fan-out", first)]  # the cancel stored none


def _poll_health(http: httpx.Client, until: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = http.get("/api/health").json()
        if until(health):
            return health
        time.sleep(0.5)
    return health
