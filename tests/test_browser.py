"""Headless Chromium (Debian's /usr/bin/chromium via Playwright) opens the leaderboard, a rule and a job page.

The server runs for real (subprocess, dispatcher off) on a database seeded with a discovered rule, its job's θ
trajectory and meta-accuracy history, and a benchmark. Asserts that the formula and the plots render as SVG with a
nonzero size; screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, LiveServer, fake_discovery_result

CHROMIUM = Path(os.environ.get("PLASTICITY_CHROMIUM", "/usr/bin/chromium"))
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)"),
]


def seed(data_dir: Path) -> dict[str, int]:
    """A succeeded job with its rule and curves, and a finished benchmark with baselines."""
    from discovery.results import RuleData
    from discovery.spec import DiscoverySpec
    from service.db.migrate import upgrade
    from service.db.models import BenchmarkRun, BenchmarkScore
    from service.db.repositories.events import add_event
    from service.db.repositories.jobs import create_job, link_job_rule
    from service.db.repositories.rules import upsert_rule
    from service.db.session import make_engine, make_session_factory, session_scope
    from service.rulebook import parse_rule, record_from_result
    from service.settings import default_database_url

    engine = make_engine(default_database_url(data_dir))
    upgrade(engine)
    result = fake_discovery_result({"F0": 0.0123, "F2": -0.0456, "F9": 0.00789}, episodes=40, accuracy=0.72)
    with session_scope(make_session_factory(engine)) as s:
        spec = DiscoverySpec.model_validate(
            {"network": {"widths": [784, 16, 10]}, "task": {"dataset": "synthetic"}, "meta": {"episodes": 40}}
        )
        job = create_job(
            s, spec, owner="seed", goal="depth-2 feedback alignment with eHebb and oja on synthetic"
        )
        job.status, job.result = "succeeded", {k: v for k, v in result.items() if k != "rule"}
        job.progress = {"episode": 40, "total": 40, "meta_accuracy": 0.7, "theta": result["theta"]}
        rule, _ = upsert_rule(s, record_from_result(RuleData.model_validate(result["rule"])), name="FA + eHebb + Oja",
                              origin="discovered", spec=job.spec, seed=0, job_id=job.id)
        link_job_rule(s, job, rule)
        add_event(s, "succeeded", "seeded", job_id=job.id)
        running = create_job(s, spec, owner="seed", goal="a running job")
        running.status, running.progress = (
            "running",
            {"episode": 12, "total": 40, "meta_accuracy": 0.4, "theta": {"F0": 0.004, "F9": 0.001}},
        )
        user, _ = upsert_rule(s, parse_rule("-0.01*e*x.T"), name="plain FA", origin="user")
        run = BenchmarkRun(suite="fa5-online", rule_id=rule.id, owner="seed", status="succeeded")
        s.add(run)
        s.flush()
        scores = [("rule", "discovered", rule.id, 0.71, 0.02, "local", 0.21),
                  ("backprop", "baseline", None, 0.83, 0.02, "weight transport", 0.12),
                  ("fa", "baseline", None, 0.31, 0.03, "local", 0.11)]
        s.add_all([BenchmarkScore(run_id=run.id, suite="fa5-online", learner=learner, origin=origin, rule_id=rid,
                                  score=score, ci95=ci, locality=locality, cost_per_sample_ms=cost)
                   for learner, origin, rid, score, ci, locality, cost in scores])
        ids = {"rule": rule.id, "job": job.id, "running": running.id, "user": user.id}
    engine.dispose()
    return ids


def svg_size(page: Any, selector: str) -> tuple[float, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box["width"], box["height"]


def test_pages_in_chromium(live_server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data_dir = tmp_path / "data"
    ids = seed(data_dir)
    server = live_server_factory(data_dir, env={"PLASTICITY_DISPATCHER": "0"})
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/?suite=fa5-online")
            assert page.locator("#leaderboard").is_visible()
            rows = page.locator("#leaderboard tbody tr")
            assert rows.count() == 3
            assert "backprop" in rows.nth(0).inner_text() and "FA + eHebb + Oja" in rows.nth(1).inner_text()
            w, h = svg_size(page, "#leaderboard td.formula svg")
            assert w > 20 and h > 5
            page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)

            page.select_option("#suite", "discovery")
            page.click("form.suite-form button")
            page.wait_for_url(re.compile(r".*/\?suite=discovery(&.*)?$"))
            assert page.locator("#leaderboard tbody tr").count() == 1

            page.click(f'a[href="/rules/{ids["rule"]}"]')
            page.wait_for_url(f"**/rules/{ids['rule']}")
            w, h = svg_size(page, "#formula svg")
            assert w > 100 and h > 10
            for plot in ("#theta-plot svg, #theta-plot img", "#accuracy-plot svg, #accuracy-plot img"):
                w, h = svg_size(page, plot)
                assert w > 200 and h > 100, plot
            assert page.locator("#coefficients tbody tr").count() == 3
            page.screenshot(path=str(ARTIFACTS / "rule.png"), full_page=True)

            page.goto(f"{server.url}/jobs/{ids['running']}")
            assert page.locator('meta[http-equiv="refresh"]').count() == 1
            bar = page.locator(".progress .bar").bounding_box()
            track = page.locator(".progress").bounding_box()
            assert bar and track and 0.2 < bar["width"] / track["width"] < 0.4  # 12 of 40 episodes
            page.screenshot(path=str(ARTIFACTS / "job.png"), full_page=True)
        finally:
            browser.close()
