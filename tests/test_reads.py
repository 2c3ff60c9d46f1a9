"""Reads at scale (issue 29; docs/operations.md, "Reads at scale"): the rules' precomputed read fields and their
migration, keyset pagination, ETag / 304, a bounded number of queries per list, and load shedding (503 with
Retry-After, never a 500) — unit-level on the middleware and end to end on a real uvicorn server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, inspect, select, text, update

from service.api.shedding import LoadShedder
from service.db.models import (
    SUCCEEDED,
    BenchmarkRun,
    BenchmarkScore,
    FrontPointRow,
    Job,
    JobRule,
    ReadVersion,
    Rule,
)
from service.db.repositories.rules import upsert_rule
from service.db.session import make_engine, session_scope
from service.rulebook import record_of
from service.runs.states import set_status


def _store_rules(app: Any, n: int, job_id: int | None = None, start: int = 1) -> list[int]:
    """``n`` one-term rules through the write path (``upsert_rule``); their ids."""
    from rules.rule import Rule as RuleExpr

    ids = []
    with session_scope(app.state.sessions) as s:
        for i in range(start, start + n):
            rule, _ = upsert_rule(s, record_of(RuleExpr({"F0": i / 1000})), name=f"r{i}", origin="user",
                                  job_id=job_id)
            ids.append(rule.id)
    return ids


def _job_with_front(app: Any, n: int, start: int, result: dict[str, Any]) -> tuple[int, list[int]]:
    """A running job whose front holds ``n`` new rules (point i: i + 1 terms); its id and the rules' ids."""
    with session_scope(app.state.sessions) as s:
        job = Job(spec={}, owner="t", status="running", result=result)
        s.add(job)
        s.flush()
        job_id = job.id
    rids = _store_rules(app, n, job_id=job_id, start=start)
    with session_scope(app.state.sessions) as s:
        for position, rid in enumerate(rids):
            s.add(JobRule(job_id=job_id, rule_id=rid))
            s.add(FrontPointRow(job_id=job_id, position=position, rule_id=rid, n_terms=position + 1,
                                complexity=position + 1, heldout_accuracy=0.5 + position / 10, terms=["F0"],
                                theta={"F0": 0.04}))
    return job_id, rids


# --- read fields ----------------------------------------------------------------------------------------------
def test_read_fields_are_written_with_the_rule_and_follow_its_scores(app: Any, client: Any) -> None:
    with session_scope(app.state.sessions) as s:
        job = Job(spec={"network": {"feedback": "fa"}}, owner="t", status="running",
                  result={"heldout_accuracy": 0.5, "heldout_ci95": 0.1})
        s.add(job)
        s.flush()
        job_id = job.id
    (rid,) = _store_rules(app, 1, job_id=job_id, start=7)
    with session_scope(app.state.sessions) as s:
        rule = s.get(Rule, rid)
        assert rule.display_latex and rule.formula_svg.startswith("<svg") and rule.read_scores == []
        s.add(JobRule(job_id=job_id, rule_id=rid))
        s.add(FrontPointRow(job_id=job_id, position=0, rule_id=rid, n_terms=1, complexity=1, heldout_accuracy=0.61,
                            heldout_ci95=0.02, terms=["F0"], theta={"F0": 0.007}))
    assert client.get(f"/api/rules/{rid}").json()["scores"] == []            # the job has not succeeded yet
    with session_scope(app.state.sessions) as s:                              # the dispatcher's path: set_status
        assert set_status(s, Job, job_id, SUCCEEDED, event="succeeded")
    (score,) = client.get(f"/api/rules/{rid}").json()["scores"]
    assert (score["suite"], score["score"], score["job_id"], score["locality"]) == ("discovery", 0.61, job_id,
                                                                                    "global error")
    with session_scope(app.state.sessions) as s:                              # a benchmark run stored by the ORM
        run = BenchmarkRun(suite="fa5-online", owner="t", status=SUCCEEDED)
        s.add(run)
        s.flush()
        s.add(BenchmarkScore(run_id=run.id, suite=run.suite, learner="r", origin="user", rule_id=rid, score=0.7))
    scores = client.get(f"/api/rules/{rid}").json()["scores"]
    assert [(x["suite"], x["score"]) for x in scores] == [("discovery", 0.61), ("fa5-online", 0.7)]


def test_a_list_runs_the_same_queries_for_any_number_of_rules(app: Any, client: Any) -> None:
    """No per-row work: the statements of GET /api/rules and /rules do not grow with the rows listed."""
    engine = app.state.engine
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    def queries(path: str) -> int:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert client.get(path).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(statements)

    _store_rules(app, 2)
    small = {p: queries(p) for p in ("/api/rules?limit=200", "/rules", "/api/leaderboard", "/")}
    _store_rules(app, 12, start=100)
    assert {p: queries(p) for p in small} == small


# --- keyset pagination ------------------------------------------------------------------------------------------
def test_keyset_pages_cover_every_rule_once(app: Any, client: Any) -> None:
    _store_rules(app, 12)
    with session_scope(app.state.sessions) as s:
        every = sorted(s.scalars(select(Rule.id)), reverse=True)
    seen: list[int] = []
    url: str | None = "/api/rules?limit=5"
    pages = 0
    while url:
        answer = client.get(url)
        assert answer.status_code == 200 and answer.headers["X-Total-Count"] == str(len(every))
        seen += [r["id"] for r in answer.json()]
        nxt = answer.links.get("next", {}).get("url")
        assert (nxt is None) == ("X-Next-After" not in answer.headers)
        url, pages = nxt, pages + 1
    assert seen == every and pages == -(-len(every) // 5)
    assert [r["id"] for r in client.get("/api/rules", params={"limit": 5, "offset": 5}).json()] == every[5:10]
    after = client.get("/api/rules", params={"limit": 3, "after": every[2]}).json()
    assert [r["id"] for r in after] == every[3:6]
    assert client.get("/api/rules", params={"after": 0}).status_code == 422
    page = client.get("/rules", params={"after": every[0]})
    assert page.status_code == 200 and f"/rules/{every[1]}" in page.text and f"/rules/{every[0]}\"" not in page.text


# --- ETag -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/rules", "/api/rules/{id}", "/api/leaderboard", "/", "/rules", "/rules/{id}"])
def test_etag_answers_304_until_the_data_changes(app: Any, client: Any, path: str) -> None:
    (rid,) = _store_rules(app, 1)
    url = path.replace("{id}", str(rid))
    first = client.get(url)
    tag = first.headers["ETag"]
    assert first.status_code == 200 and tag.startswith('"') and first.headers["Cache-Control"] == "no-cache"
    again = client.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == tag
    assert client.get(url, headers={"If-None-Match": f'"other", W/{tag}'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    with session_scope(app.state.sessions) as s:       # a change to what the answer shows gives a new ETag
        s.get(Rule, rid).name = "renamed"
        if path in ("/api/leaderboard", "/"):
            job = Job(spec={}, owner="t", status=SUCCEEDED, result={"heldout_accuracy": 0.4})
            s.add(job)
            s.flush()
            s.add(JobRule(job_id=job.id, rule_id=rid))
    changed = client.get(url, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["ETag"] != tag


# --- load shedding: the middleware ------------------------------------------------------------------------------
class _Slow:
    """An ASGI app answering 200 once ``release`` is set; counts the requests it ran."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ran = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.ran += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_shedder_answers_503_with_retry_after_beyond_its_caps() -> None:
    async def scenario() -> None:
        slow = _Slow()
        shedder = LoadShedder(slow, max_inflight=3, max_active=1, queue_seconds=0.3)
        transport = httpx.ASGITransport(app=shedder)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            running = [asyncio.create_task(c.get("/api/rules")) for _ in range(3)]
            await asyncio.sleep(0.05)
            over = await c.get("/api/rules")                       # a 4th in flight: shed at once
            assert over.status_code == 503 and over.headers["Retry-After"] == "1"
            assert "PLASTICITY_MAX_INFLIGHT" in over.json()["detail"]
            health = asyncio.create_task(c.get("/api/health"))     # exempt: reaches the app
            await asyncio.sleep(0.4)                               # two waited past queue_seconds for the one slot
            slow.release.set()
            answers = [await t for t in running]
            assert sorted(a.status_code for a in answers) == [200, 503, 503]
            assert all(a.headers["Retry-After"] for a in answers if a.status_code == 503)
            assert (await health).status_code == 200
            assert slow.ran == 2 and shedder.inflight == 0 and shedder.shed == 3

    asyncio.run(scenario())


def test_shedder_drops_a_queued_request_whose_client_has_gone() -> None:
    async def scenario() -> None:
        slow = _Slow()
        shedder = LoadShedder(slow, max_inflight=10, max_active=1, queue_seconds=5)
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/rules", "headers": []}
        first = asyncio.create_task(shedder(scope, _receive(gone_after=None), send))   # holds the one slot
        await asyncio.sleep(0.05)
        gone = _receive(gone_after=0.1)
        await asyncio.wait_for(shedder(scope, gone, send), 2)      # returns once the client leaves, unrun
        assert slow.ran == 1 and shedder.dropped == 1 and shedder.inflight == 1
        slow.release.set()
        await first
        assert shedder.inflight == 0 and [m["status"] for m in sent if "status" in m] == [200]

    asyncio.run(scenario())


def _receive(gone_after: float | None) -> Any:
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Any:
        if messages:
            return messages.pop()
        if gone_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(gone_after)
        return {"type": "http.disconnect"}

    return receive


# --- load shedding: a real server under a small overload -----------------------------------------------------------
@pytest.fixture
def live(settings: Any) -> Iterator[tuple[str, Any]]:
    """The app with small caps behind a real uvicorn server on a free loopback port."""
    import dataclasses

    import uvicorn

    from experiments.load_bench import free_port
    from service.app import create_app
    from service.settings import Serving

    app = create_app(dataclasses.replace(settings, serving=Serving(max_inflight=8, max_active=2, queue_seconds=0.5)),
                     dispatcher=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.engine.dispose()


def test_overload_answers_200_or_503_never_500(live: tuple[str, Any]) -> None:
    from experiments.load_bench import probe, run_load

    base, app = live
    ids = _store_rules(app, 3)
    tally = asyncio.run(run_load(base, ["/api/rules?limit=50", "/api/rules/{id}", "/rules", "/rules/{id}"], ids,
                                 readers=40, warmup=0.0, duration=3.0, timeout=10.0, seed_=1, ok=(200, 503)))
    summary = tally.summary()
    assert summary["requests"] > 0 and summary["errors"] == 0, summary
    assert summary["statuses"].get("503", 0) > 0 and summary["statuses"].get("200", 0) > 0, summary
    assert summary["missing_retry_after"] == 0
    deadline = time.monotonic() + 5         # the last answers were sent; their handlers' bookkeeping ends just after
    while app.state.shedder.inflight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.shedder.inflight == 0
    assert max(asyncio.run(probe(base, "/api/health", 2))) < 2000


# --- the migration ----------------------------------------------------------------------------------------------
def test_migration_0006_backfills_and_goes_back(db_url: str, request: pytest.FixtureRequest) -> None:
    from service.db.migrate import downgrade, upgrade

    url = db_url if db_url.startswith("sqlite") else request.getfixturevalue("pg_schema_factory")()
    eng = make_engine(url)
    now = "2026-01-01 00:00:00+00:00"
    try:
        assert upgrade(eng, "0005_datasets") == "0005_datasets"
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO jobs (id, created_at, updated_at, status, spec, owner, result, attempts) "
                              "VALUES (3, :now, :now, 'succeeded', :spec, 'o', :result, 1)"),
                         {"now": now, "spec": '{"network": {"feedback": "bp"}}', "result": '{"heldout_accuracy": 0.5}'})
            conn.execute(text(
                "INSERT INTO rules (id, created_at, name, hash, canonical, srepr, expression, latex, coefficients,"
                " terms, origin, code_version, family, job_id) VALUES (1, :now, 'r', :h, 'v1', '', '0.0123456*F0',"
                " '0.0123456 x', '{\"F0\": 0.0123456}', '[\"F0\"]', 'discovered', 'x', 'feedforward', 3)"),
                {"now": now, "h": "a" * 64})
            conn.execute(text("INSERT INTO job_rules (job_id, rule_id) VALUES (3, 1)"))
            conn.execute(text("INSERT INTO front_points (job_id, position, rule_id, n_terms, complexity, "
                              "heldout_accuracy, heldout_episodes, selected, stage, terms, theta) VALUES "
                              "(3, 0, 1, 1, 1, 0.55, 10, true, '', '[]', '{}')"))
        assert upgrade(eng, "0006_read_fields") == "0006_read_fields"
        with session_scope(__import__("service.db.session", fromlist=["x"]).make_session_factory(eng)) as s:
            rule = s.get(Rule, 1)
            assert "0.0123" in rule.display_latex and "0.0123456" not in rule.display_latex
            assert rule.formula_svg.startswith("<svg") and rule.read_updated_at is not None
            assert [(x["suite"], x["score"], x["job_id"]) for x in rule.read_scores] == [("discovery", 0.55, 3)]
        downgrade(eng, "0005_datasets")
        columns = {c["name"] for c in inspect(eng).get_columns("rules")}
        assert not columns & {"display_latex", "formula_svg", "read_scores", "read_updated_at"}
        with eng.connect() as conn:     # nothing else was touched (no table copy nulling the foreign keys)
            assert conn.execute(text("SELECT rule_id FROM front_points")).scalar() == 1
        assert upgrade(eng, "0006_read_fields") == "0006_read_fields"
    finally:
        eng.dispose()


def test_client_pages_through_every_rule(app: Any, client: Any) -> None:
    from service.client.http import Client

    ids = _store_rules(app, 5)
    api = Client("http://testserver", token="", transport=client._transport)   # through the app in-process
    listed = [r.id for r in api.all_rules(limit=2)]
    assert set(ids) <= set(listed) and len(listed) == len(set(listed)) == int(
        client.get("/api/rules").headers["X-Total-Count"])


def test_rule_page_shows_the_job_plots_drawn_once(app: Any, client: Any) -> None:
    job_id, rids = _job_with_front(app, 2, 40, {"heldout_accuracy": 0.5,
                                               "history": [{"meta_accuracy": 0.1 * i} for i in range(5)],
                                               "theta_history": [{"F0": 0.001 * i} for i in range(5)]})
    with session_scope(app.state.sessions) as s:
        assert set_status(s, Job, job_id, SUCCEEDED, event="succeeded")
        assert s.get(Job, job_id).read_plots is None          # not drawn inside the transaction: after its commit
    with session_scope(app.state.sessions) as s:
        plots = s.get(Job, job_id).read_plots
        assert all(plots[k].startswith("<svg") for k in ("theta", "accuracy", "front"))
        assert all(f'id="ring-{rid}"' in plots["front"] for rid in rids)
    page = client.get(f"/rules/{rids[1]}").text
    assert f'src="/jobs/{job_id}/plots/front.svg?rule={rids[1]}"' in page and f"/jobs/{job_id}/plots/theta.svg" in page
    front = client.get(f"/jobs/{job_id}/plots/front.svg", params={"rule": rids[1]})
    assert front.status_code == 200 and front.headers["content-type"].startswith("image/svg+xml")
    assert f"#ring-{rids[1]} {{ display: inline }}" in front.text and front.headers["ETag"]
    assert client.get(f"/jobs/{job_id}/plots/theta.svg").status_code == 200
    assert client.get("/jobs/999999/plots/theta.svg").status_code == 404


def test_rule_page_from_read_fields_equals_the_entity_page(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The rule page built from ``read_json`` (and its job's context, shared by the job's rules) is the page built
    from ORM entities, byte for byte; the job context is read once per state of the job."""
    from service.web import pages

    job_id, rids = _job_with_front(app, 3, 60, {"heldout_accuracy": 0.5})
    with session_scope(app.state.sessions) as s:
        assert set_status(s, Job, job_id, SUCCEEDED, event="succeeded")
    built: list[int] = []
    real = pages._JobContext
    monkeypatch.setattr(pages, "_JobContext", lambda job: built.append(job.id if job else 0) or real(job))
    fast = [client.get(f"/rules/{rid}").text for rid in rids]
    assert built == [job_id]                                   # one build for the job's three rules
    assert all(f"rule {rid}" in page and "front-this" in page for rid, page in zip(rids, fast, strict=True))
    pages._JOB_CONTEXTS.clear()
    with session_scope(app.state.sessions) as s:               # drop the read field: the entity path renders
        for rid in rids:
            s.execute(update(Rule).where(Rule.id == rid).values(read_json=None))
        s.execute(update(ReadVersion).values(n=ReadVersion.n + 1))
    with session_scope(app.state.sessions) as s:
        assert s.scalars(select(Rule.read_json).where(Rule.id.in_(rids))).all() == [None] * 3
    slow = [client.get(f"/rules/{rid}").text for rid in rids]
    assert slow == fast


# --- a read whose client has gone stops ---------------------------------------------------------------------------
def test_a_read_stops_when_its_client_disconnects(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule page's build is held in its reading phase until the client disconnects: then it stops at its next
    checkpoint and never renders; the same request with the client staying renders the page (the control)."""
    from service.web import pages

    (rid,) = _store_rules(app, 1)
    rendered: list[str] = []
    real_html, real_job_context = pages._html, pages._job_context
    monkeypatch.setattr(pages, "_html", lambda request, name, **kw: rendered.append(name) or real_html(
        request, name, **kw))
    reading, proceed = threading.Event(), threading.Event()

    def held_job_context(session: Any, job_id: Any) -> Any:    # a phase of the build: its job query
        reading.set()
        assert proceed.wait(10)
        return real_job_context(session, job_id)

    monkeypatch.setattr(pages, "_job_context", held_job_context)

    async def get(leave: bool) -> list[Any]:
        reading.clear()
        proceed.clear()
        messages: list[Any] = [{"type": "http.request", "body": b"", "more_body": False}]
        sent: list[Any] = []

        async def receive() -> Any:
            if messages:
                return messages.pop()
            if not leave:
                proceed.set()
                await asyncio.Event().wait()
            await asyncio.to_thread(reading.wait, 10)
            asyncio.get_running_loop().call_soon(proceed.set)   # runs after the watcher saw the disconnect
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": f"/rules/{rid}", "raw_path": f"/rules/{rid}".encode(),
                 "query_string": b"", "headers": [], "scheme": "http", "http_version": "1.1", "root_path": "",
                 "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
        await asyncio.wait_for(app(scope, receive, send), 20)
        return sent

    gone = asyncio.run(get(leave=True))
    assert rendered == [] and app.state.reads_abandoned == 1
    assert [m["status"] for m in gone if "status" in m] == [499]   # uvicorn drops it: the connection is closed
    stayed = asyncio.run(get(leave=False))
    assert rendered == ["rule.html"] and [m["status"] for m in stayed if "status" in m] == [200]


def test_version_reads_are_shared_and_see_every_earlier_write(app: Any) -> None:
    """50 requests arriving together share two version reads; a write committed before a request arrives is seen."""
    from service.db.read_fields import bump_version

    clock = app.state.version_clock

    async def scenario() -> None:
        before = clock.queries
        values = await asyncio.gather(*(clock.current() for _ in range(50)))
        assert len(set(values)) == 1 and clock.queries - before == 2
        with app.state.engine.begin() as conn:
            bump_version(conn)
        assert await clock.current() == values[0] + 1

    asyncio.run(scenario())


def test_pages_keep_each_glyph_outline_once() -> None:
    import re

    from service.web.render import latex_svg, shared_glyphs

    one, two = latex_svg(r"0.012\,x", 12), latex_svg(r"0.021\,x", 12)
    page = shared_glyphs(f"<p>{one}</p><p>{two}</p>")
    defined = re.findall(r'<path id="([^"]+)"', page)
    used = set(re.findall(r'xlink:href="#([^"]+)"', page))
    assert len(defined) == len(set(defined)) and used <= set(defined)
    assert len(re.findall(r'<path id="', f"{one}{two}")) > len(defined)        # the two formulas shared glyphs
