"""Database layer on SQLite and the real PostgreSQL: migrations, models, rule dedupe, JSON portability."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from discovery.spec import DiscoverySpec
from service.db.migrate import current_revision, downgrade, head_revision, upgrade
from service.db.models import (
    Base,
    BenchmarkRun,
    BenchmarkScore,
    Job,
    JobEvent,
    Rule,
    RuleTerm,
    Trial,
)
from service.db.repositories.events import add_event
from service.db.repositories.jobs import create_job, link_job_rule
from service.db.repositories.rules import upsert_rule
from service.db.session import make_engine, make_session_factory, session_scope
from service.rulebook import parse_rule


@pytest.fixture
def engine(db_url: str):
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine):
    return make_session_factory(engine)


def test_migrations_match_the_models(engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert {
        "jobs",
        "job_events",
        "trials",
        "rules",
        "rule_terms",
        "job_rules",
        "benchmark_runs",
        "benchmark_scores",
        "alembic_version",
    } <= tables


def test_upgrade_is_idempotent_and_downgrade_works(db_url: str, request: pytest.FixtureRequest) -> None:
    if db_url.startswith("postgresql"):
        # use a private schema: downgrading the shared one would break the other tests
        db_url = request.getfixturevalue("pg_schema_factory")()
    eng = make_engine(db_url)
    try:
        assert upgrade(eng) == head_revision()
        assert upgrade(eng) == head_revision()
        downgrade(eng, "base")
        assert current_revision(eng) is None
        assert "jobs" not in inspect(eng).get_table_names()
        assert upgrade(eng) == head_revision()
    finally:
        eng.dispose()


def test_job_rule_trial_event_roundtrip(sessions) -> None:
    spec = DiscoverySpec.model_validate(
        {"network": {"widths": [784, 16, 10]}, "task": {"dataset": "synthetic"}}
    )
    record = parse_rule("-0.01*e*x.T + 0.002*(y*x.T - y*(y.T*W))")
    with session_scope(sessions) as s:
        job = create_job(s, spec, owner="abc", goal="a goal")
        job.progress = {"episode": 1, "total": 3, "theta": {"F0": 0.1}, "meta_loss": float("nan")}
        s.add(Trial(job_id=job.id, index=0, config={"seed": 0}, heldout_accuracy=0.5))
        rule, created = upsert_rule(
            s,
            record,
            name="r",
            origin="discovered",
            spec=job.spec,
            seed=0,
            job_id=job.id,
            provenance={"x": float("inf")},
        )
        assert created
        link_job_rule(s, job, rule)
        add_event(s, "progress", "p", job_id=job.id, data={"acc": float("nan")})
        job_id, rule_id = job.id, rule.id
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        assert job.spec["network"]["widths"] == [784, 16, 10]
        assert job.progress["meta_loss"] is None  # NaN stored as null (PostgreSQL json rejects NaN)
        assert job.rule_ids == [rule_id]
        assert job.created_at.tzinfo is not None
        assert [e.kind for e in job.events] == ["queued", "progress"]
        assert job.events[1].data == {"acc": None}
        rule = s.get(Rule, rule_id)
        assert rule.coefficients == pytest.approx({"F0": 0.01, "F9": 0.002})
        assert rule.terms == ["F0", "F9"]
        assert (rule.feedback, rule.depth, rule.dataset) == ("fa", 2, "synthetic")
        assert rule.srepr.startswith("MatAdd(")
        assert "x^{T}" in rule.latex
        assert len(rule.hash) == 64
        assert rule.provenance == {"x": None}
        assert sorted(t.term for t in s.scalars(select(RuleTerm).where(RuleTerm.rule_id == rule_id))) == [
            "F0",
            "F9",
        ]


def test_same_rule_is_stored_once(sessions) -> None:
    a = parse_rule("-0.01*e*x.T + 0.002*(y*x.T - y*(y.T*W))")
    b = parse_rule("0.002*y*x.T - 0.002*y*(y.T*W) - 0.01*e*x.T")  # same ΔW, written differently
    assert a.hash == b.hash
    with session_scope(sessions) as s:
        first, created1 = upsert_rule(s, a, name="one", origin="user")
        second, created2 = upsert_rule(s, b, name="two", origin="user")
        assert created1 and not created2 and first.id == second.id
    with session_scope(sessions) as s:
        assert s.scalar(select(func.count()).select_from(Rule)) == 1


def test_concurrent_upserts_keep_one_row(sessions) -> None:
    record = parse_rule("0.5*e*e_pre.T")
    ids: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait(5)
            with session_scope(sessions) as s:
                rule, _ = upsert_rule(s, record, name="race", origin="user")
                ids.append(rule.id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with session_scope(sessions) as s:
        count = s.scalar(select(func.count()).select_from(Rule))
    assert count == 1
    # a writer that lost the race either got the existing id or (SQLite, locked) an error; never a duplicate
    assert ids and len(set(ids)) == 1, (ids, errors)


def test_deleting_a_job_cascades_but_keeps_its_rules(sessions) -> None:
    spec = DiscoverySpec()
    with session_scope(sessions) as s:
        job = create_job(s, spec, owner="o")
        s.add(Trial(job_id=job.id, index=0))
        rule, _ = upsert_rule(s, parse_rule("e*x.T"), name="r", origin="discovered", job_id=job.id)
        link_job_rule(s, job, rule)
        job_id, rule_id = job.id, rule.id
    with session_scope(sessions) as s:
        s.delete(s.get(Job, job_id))
    with session_scope(sessions) as s:
        assert s.scalar(select(func.count()).select_from(Trial)) == 0
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 0
        rule = s.get(Rule, rule_id)
        assert rule is not None and rule.job_id is None


def test_benchmark_scores(sessions) -> None:
    with session_scope(sessions) as s:
        rule, _ = upsert_rule(s, parse_rule("e*x.T"), name="r", origin="user")
        run = BenchmarkRun(suite="fa5-online", rule_id=rule.id, owner="o")
        s.add(run)
        s.flush()
        s.add_all(
            [
                BenchmarkScore(
                    run_id=run.id,
                    suite="fa5-online",
                    learner="rule",
                    origin="user",
                    rule_id=rule.id,
                    score=0.7,
                    ci95=0.05,
                    metrics={"a": [1, 2]},
                ),
                BenchmarkScore(
                    run_id=run.id, suite="fa5-online", learner="backprop", origin="baseline", score=0.8
                ),
            ]
        )
        run_id = run.id
    with session_scope(sessions) as s:
        run = s.get(BenchmarkRun, run_id)
        assert [sc.learner for sc in run.scores] == ["rule", "backprop"]
        assert run.scores[0].rule.name == "r"
        assert run.status == "queued" and run.tiny is False


def test_postgres_schema_isolation(pg_schema_factory: Callable[[], str]) -> None:
    """Two fresh schemas migrate independently (how the tests isolate themselves on the shared server)."""
    urls = [pg_schema_factory(), pg_schema_factory()]
    engines = [make_engine(u) for u in urls]
    try:
        for eng in engines:
            upgrade(eng)
        with session_scope(make_session_factory(engines[0])) as s:
            upsert_rule(s, parse_rule("e*x.T"), name="only here", origin="user")
        with session_scope(make_session_factory(engines[1])) as s:
            assert s.scalar(select(func.count()).select_from(Rule)) == 0
    finally:
        for eng in engines:
            eng.dispose()


def test_migration_0002_gives_existing_rules_their_family(db_url: str, request: pytest.FixtureRequest) -> None:
    """Rows stored before the family column existed come out of the upgrade with the family of their text."""
    from sqlalchemy import text

    if db_url.startswith("postgresql"):
        db_url = request.getfixturevalue("pg_schema_factory")()
    eng = make_engine(db_url)
    try:
        assert upgrade(eng, "0001_initial") == "0001_initial"
        now = "2026-01-01 00:00:00+00:00"
        with eng.begin() as conn:
            for i, canonical in enumerate(["recurrent/v1: 0.25*rec_dW3", "v1:0.01*F0"]):
                conn.execute(text(
                    "INSERT INTO rules (id, created_at, name, hash, canonical, srepr, expression, latex, coefficients,"
                    " terms, origin, code_version) VALUES (:id, :now, 'r', :h, :c, '', '', '', '{}', '[]', 'user', 'x')"
                ), {"id": i + 1, "now": now, "h": f"{i}" * 64, "c": canonical})
        assert upgrade(eng) == head_revision()
        with eng.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, family FROM rules ORDER BY id")).all())
        assert rows == {1: "recurrent", 2: "feedforward"}
        downgrade(eng, "0001_initial")
        assert "family" not in {c["name"] for c in inspect(eng).get_columns("rules")}
    finally:
        eng.dispose()


def test_migration_0004_moves_fronts_out_of_the_json_and_back(db_url: str, request: pytest.FixtureRequest) -> None:
    """A front stored as JSON (jobs.result["front"], each rule's provenance["front"]) becomes front_points rows
    with each rule's own held-out score; the downgrade writes the JSON back as it was."""
    import json

    from sqlalchemy import text

    if db_url.startswith("postgresql"):
        db_url = request.getfixturevalue("pg_schema_factory")()
    eng = make_engine(db_url)
    now = "2026-01-01 00:00:00+00:00"
    points = [
        {"terms": ["F0"], "theta": {"F0": 0.01}, "n_terms": 1, "complexity": 1, "heldout_accuracy": 0.068,
         "heldout_ci95": 0.01, "heldout_episodes": 10, "stage": "fit 1 terms", "selected": False, "rule_id": 1},
        {"terms": ["F0", "F2"], "theta": {"F0": 0.01, "F2": -0.02}, "n_terms": 2, "complexity": 3,
         "heldout_accuracy": 0.076, "heldout_ci95": 0.012, "heldout_episodes": 10, "stage": "fit 2 terms",
         "selected": True, "rule_id": 2},
    ]
    try:
        assert upgrade(eng, "0003_baseline_cache") == "0003_baseline_cache"
        with eng.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobs (id, created_at, updated_at, status, spec, owner, result, attempts) VALUES "
                "(7, :now, :now, 'succeeded', '{}', 'o', :result, 1)"),
                {"now": now, "result": json.dumps({"heldout_accuracy": 0.068, "front": points})})
            for p in points:
                prov = {"job_id": 7, "front": {k: p[k] for k in ("n_terms", "heldout_accuracy", "selected")}}
                conn.execute(text(
                    "INSERT INTO rules (id, created_at, name, hash, canonical, srepr, expression, latex, coefficients,"
                    " terms, origin, code_version, provenance, job_id) VALUES (:id, :now, 'r', :h, :c, '', '', '',"
                    " '{}', '[]', 'discovered', 'x', :prov, 7)"),
                    {"id": p["rule_id"], "now": now, "h": str(p["rule_id"]) * 64, "c": f"v1:{p['rule_id']}",
                     "prov": json.dumps(prov)})
                conn.execute(text("INSERT INTO job_rules (job_id, rule_id) VALUES (7, :id)"), {"id": p["rule_id"]})
        assert upgrade(eng) == head_revision()
        with eng.connect() as conn:
            rows = conn.execute(text("SELECT rule_id, position, heldout_accuracy, selected, n_terms FROM front_points "
                                     "ORDER BY position")).all()
            result = conn.execute(text("SELECT result FROM jobs WHERE id = 7")).scalar()
            provenance = conn.execute(text("SELECT provenance FROM rules WHERE id = 2")).scalar()
        assert [tuple(r) for r in rows] == [(1, 0, 0.068, False, 1), (2, 1, 0.076, True, 2)]
        result = json.loads(result) if isinstance(result, str) else result
        provenance = json.loads(provenance) if isinstance(provenance, str) else provenance
        assert "front" not in result and result["heldout_accuracy"] == 0.068
        assert provenance == {"job_id": 7}
        sessions = make_session_factory(eng)
        with session_scope(sessions) as s:
            from service.db.repositories.rules import discovery_scores

            assert [d.score for d in discovery_scores(s, s.get(Rule, 2))] == [0.076]   # its own, not the job's
        downgrade(eng, "0003_baseline_cache")
        assert "front_points" not in inspect(eng).get_table_names()
        with eng.connect() as conn:
            result = conn.execute(text("SELECT result FROM jobs WHERE id = 7")).scalar()
            provenance = conn.execute(text("SELECT provenance FROM rules WHERE id = 2")).scalar()
        result = json.loads(result) if isinstance(result, str) else result
        provenance = json.loads(provenance) if isinstance(provenance, str) else provenance
        assert [p["rule_id"] for p in result["front"]] == [1, 2]
        assert [p["heldout_accuracy"] for p in result["front"]] == [0.068, 0.076]
        assert provenance["front"]["heldout_accuracy"] == 0.076 and provenance["front"]["selected"] is True
    finally:
        eng.dispose()
