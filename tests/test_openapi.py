"""The OpenAPI document tells the whole truth (docs/http-api.md, "What the schema cannot say").

- every administrator's limit at its bound and bound + 1: the document and the server agree (in-process, fast);
- schemathesis ``--checks all`` (examples, coverage, fuzzing and stateful phases) against a live server at tiny
  size with real Ray: the seeds of ``PLASTICITY_FUZZ_SEEDS`` (default one fixed seed, so CI is repeatable; add
  ``fresh`` for a new random seed, printed; failures saved under test-artifacts/);
- a client generated from the document (openapi-python-client) submits a tiny goal job, waits, reads its rule
  and exports it;
- /docs lists the operations in headless Chromium with every request outside 127.0.0.1 refused.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, REPO_ROOT, TEST_TOKEN, LiveServer

#: The live server of the fuzz run: limits small enough that what the fuzzer submits finishes quickly.
TINY = {
    "PLASTICITY_MAX_EPISODES": "20", "PLASTICITY_MAX_WIDTH": "64", "PLASTICITY_MAX_DEPTH": "3",
    "PLASTICITY_MAX_META_BATCH": "2", "PLASTICITY_MAX_TRIALS": "2", "PLASTICITY_MAX_CONCURRENT_JOBS": "2",
    "PLASTICITY_MAX_RUNNING": "1", "PLASTICITY_BENCHMARK_TINY": "1",
}
FUZZ_EXAMPLES = int(os.environ.get("PLASTICITY_FUZZ_EXAMPLES", "30"))


def fuzz_seeds(text: str) -> list[int]:
    """Seeds from a comma list; ``fresh`` draws a new random one (printed, so a failure can be replayed)."""
    seeds = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        seed = random.SystemRandom().randrange(1, 2**31) if item == "fresh" else int(item)
        if item == "fresh":
            print(f"schemathesis fresh seed: {seed}")
        seeds.append(seed)
    return seeds


# --- limits: schema and server agree ------------------------------------------------------------------------------
def _validator(doc: dict[str, Any], component: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**doc, "$ref": f"#/components/schemas/{component}"})


def _spec(**parts: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"network": {"widths": [64, 10]}, "task": {"dataset": "digits"}, "meta": {"episodes": 2}}
    for key, value in parts.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


def test_each_limit_at_bound_and_above(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Limits, Settings

    lim = Limits(max_episodes=30, max_width=80, max_depth=3, max_meta_batch=4, max_trials=3,
                 max_concurrent_jobs=2, max_body_bytes=4096)
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'l.db'}",
                        api_tokens=(TEST_TOKEN,), dispatcher_enabled=False, limits=lim)
    app = create_app(settings, dispatcher=False)
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        doc = client.get("/openapi.json").json()
        spec_schema = _validator(doc, "DiscoverySpec")
        cases = {  # limit name -> (spec at the bound, spec one above)
            "max_episodes": lambda n: _spec(meta={"episodes": n}),
            "max_episodes (eval)": lambda n: _spec(meta={"eval_episodes": n}),
            "max_meta_batch": lambda n: _spec(meta={"meta_batch": n}),
            "max_width": lambda n: _spec(network={"widths": [64, n, 10]}),
            "max_depth": lambda n: _spec(network={"widths": [64] + [8] * (n - 1) + [10]}),
            "max_trials": lambda n: _spec(sweep={"seeds": list(range(n))}),
        }
        for name, make in cases.items():
            bound = getattr(lim, name.split()[0])
            for value, ok in ((bound, True), (bound + 1, False)):
                body = make(value)
                schema_ok = spec_schema.is_valid(body)
                answer = client.post("/api/jobs", json=body, headers=auth)
                assert schema_ok is ok, f"{name}={value}: schema says {schema_ok}"
                assert (answer.status_code == 201) is ok, f"{name}={value}: {answer.status_code} {answer.text}"
                if not ok:
                    assert answer.status_code == 422 and answer.json()["detail"][0]["field"], answer.text
                elif answer.status_code == 201:
                    client.post(f"/api/jobs/{answer.json()['id']}/cancel", headers=auth)
        # the per-token cap (429) and the body size (413): not shapes, but declared with the error model
        for _ in range(lim.max_concurrent_jobs):
            assert client.post("/api/jobs", json=_spec(), headers=auth).status_code == 201
        over = client.post("/api/jobs", json=_spec(), headers=auth)
        assert over.status_code == 429 and isinstance(over.json()["detail"], str)
        pad = lambda n: {"goal": "x", "pad": "y" * n}  # noqa: E731 - size only; refused before parsing
        at = len(str(pad(0)).encode())
        assert client.post("/api/jobs", content=b" " * (lim.max_body_bytes + 1), headers=auth).status_code == 413
        assert at < lim.max_body_bytes
        post_jobs = doc["paths"]["/api/jobs"]["post"]["responses"]
        for code in ("400", "401", "413", "422", "429"):
            assert post_jobs[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), code
    app.state.engine.dispose()


def test_every_error_answer_is_declared_with_the_error_model(client: Any) -> None:
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/api/health":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorOut"), (method, path, code)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert client.request("OPTIONS", "/api/jobs").headers["allow"] == "GET, POST"
    bad = client.post("/api/jobs", content=b"{not json", headers={"Authorization": f"Bearer {TEST_TOKEN}",
                                                                  "content-type": "application/json"})
    assert bad.status_code == 400 and isinstance(bad.json()["detail"], str)
    status = client.get("/api/jobs?status=nope")
    assert status.status_code == 422 and status.json()["detail"][0]["field"] == "status"


# --- schemathesis against a live server -----------------------------------------------------------------------------
def _schemathesis(server: LiveServer, seed: int, report: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe), "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", str(FUZZ_EXAMPLES),
           "--seed", str(seed), "-H", f"Authorization: Bearer {server.token}", "--no-color",
           "--report", "junit", "--report-junit-path", str(report), "--max-time", "90"]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "SCHEMATHESIS_CONFIG_FILE": str(REPO_ROOT / "schemathesis.toml")})


@pytest.mark.slow
def test_schemathesis_all_checks_live(live_server_factory: Callable[..., LiveServer]) -> None:
    server = live_server_factory(env=TINY)
    ARTIFACTS.mkdir(exist_ok=True)
    failures = []
    for seed in fuzz_seeds(os.environ.get("PLASTICITY_FUZZ_SEEDS", "20240601")):
        run = _schemathesis(server, seed, ARTIFACTS / f"schemathesis-{seed}.xml")
        if run.returncode != 0:
            (ARTIFACTS / f"schemathesis-{seed}.txt").write_text(run.stdout + run.stderr)
            failures.append(f"seed {seed}: {run.stdout[-4000:]}")
        else:
            print(next((line for line in run.stdout.splitlines() if "generated" in line), ""))
    assert not failures, "\n\n".join(failures)


# --- a client generated from the document -------------------------------------------------------------------------
def _generate_client(url: str, out: Path) -> Any:
    import httpx

    (out / "openapi.json").write_text(httpx.get(f"{url}/openapi.json", timeout=30).text)
    subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", "openapi.json",
                    "--meta", "none", "--output-path", "plasticity_generated"], cwd=out, check=True,
                   capture_output=True, timeout=180)
    sys.path.insert(0, str(out))
    return importlib.import_module("plasticity_generated")


@pytest.mark.slow
def test_generated_client_runs_a_tiny_goal_job(live_server_factory: Callable[..., LiveServer],
                                               tmp_path: Path) -> None:
    pytest.importorskip("openapi_python_client")
    server = live_server_factory(env={"PLASTICITY_BENCHMARK_TINY": "1"})
    pkg = _generate_client(server.url, tmp_path)
    try:
        client_mod = importlib.import_module("plasticity_generated.client")
        submit = importlib.import_module("plasticity_generated.api.jobs.submit_job_api_jobs_post")
        get_job = importlib.import_module("plasticity_generated.api.jobs.get_job_api_jobs_job_id_get")
        get_rule = importlib.import_module("plasticity_generated.api.rules.get_rule_api_rules_rule_id_get")
        export = importlib.import_module("plasticity_generated.api.rules.export_rule_api_rules_rule_id_export_get")
        models = importlib.import_module("plasticity_generated.models")
        api = client_mod.AuthenticatedClient(base_url=server.url, token=server.token, timeout=60.0)
        goal = ("find a plasticity rule for depth-2 online learning under feedback alignment on synthetic data, "
                "tiny")
        job = submit.sync(client=api, body=models.GoalRequest(goal=goal))
        assert isinstance(job, models.JobOut), job
        deadline = time.monotonic() + 150
        while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(1.0)
            job = get_job.sync(job.id, client=api)
        assert job.status == "succeeded", (job.status, job.error, server.log())
        rule = get_rule.sync(job.rule_ids[0], client=api)
        assert isinstance(rule, models.RuleOut) and rule.expression
        source = export.sync(rule.id, client=api, format_=models.ExportRuleApiRulesRuleIdExportGetFormat.TORCH)
        assert isinstance(source, str) and "def delta_w" in source
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith(pkg.__name__)]:
            del sys.modules[name]


# --- /docs offline ---------------------------------------------------------------------------------------------------
CHROMIUM = Path(os.environ.get("PLASTICITY_CHROMIUM", "/usr/bin/chromium"))


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent")
def test_docs_render_offline(live_server_factory: Callable[..., LiveServer]) -> None:
    from playwright.sync_api import sync_playwright

    server = live_server_factory(env={"PLASTICITY_DISPATCHER": "0"})
    for page_path in ("/docs", "/redoc"):
        html = __import__("httpx").get(server.url + page_path).text
        assert "cdn" not in html.lower() and "https://" not in html, page_path
    refused: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()

            def only_local(route: Any) -> None:
                if route.request.url.startswith(server.url):
                    route.continue_()
                else:
                    refused.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(f"{server.url}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            summaries = page.locator(".opblock-summary-path").all_inner_texts()
            assert any("/api/jobs" in s for s in summaries) and len(summaries) >= 15, summaries
            page.screenshot(path=str(ARTIFACTS / "docs.png"))
            page.goto(f"{server.url}/redoc")
            page.wait_for_function("document.body.innerText.includes('Submit Job')", timeout=30_000)
        finally:
            browser.close()
    assert not refused, refused
