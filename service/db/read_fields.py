"""Precomputed read fields of a rule (migration 0006): what lists and pages show, stored on the ``rules`` row at
write time so that a read renders rows with no per-row query and no sympy or matplotlib work
(docs/operations.md, "Reads at scale").

- ``display_latex``: the LaTeX with θ rounded to 3 significant digits (``service.rulebook.display_latex``);
- ``formula_svg``: that LaTeX typeset to SVG at 12 pt (``service.web.render.latex_svg``; pages scale it);
- ``read_json``: the whole answer of ``GET /api/rules/{id}`` (``RuleOut`` as JSON), so that a list is the
  concatenation of stored texts;
- ``read_scores``: the rule's scores as ``RuleOut.scores`` lists them — its held-out accuracy on the task of
  each succeeded job that stored it (the front point's own score when it sits on that job's front), then its
  scores in succeeded benchmark runs, oldest first;
- ``read_updated_at``: when these fields last changed;
- ``read_version.n`` (one row): a counter bumped by every such write, which the server's read cache compares
  (``service.api.caching.ReadCache``);
- on ``jobs``, ``read_plots``: a succeeded job's θ, accuracy and front plots as SVG, drawn once for all the rule
  pages of its rules.

A score can change only when a row of ``job_rules``, ``front_points`` or ``benchmark_scores`` is written or a job
or benchmark run changes status. :func:`install` hooks every ORM flush that writes such rows, and
``service.runs.states.set_status`` (a Core UPDATE, no flush) calls :func:`refresh_for_run`; both recompute the
fields of the rules concerned in the same transaction. The functions here use Core tables of their own, so the
migration's backfill runs them too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.db.models import (
    BenchmarkRun,
    BenchmarkScore,
    FrontPointRow,
    Job,
    JobRule,
    Rule,
    public_provenance,
)

log = logging.getLogger("plasticity.read_fields")

SUCCEEDED = "succeeded"
#: What a feedback mode says about locality (the vocabulary of the suites' ``locality`` field).
FEEDBACK_LOCALITY: dict[str, str] = {
    "bp": "weight transport",
    "dfa": "global error",
    "fa": "global error",
    "sign": "weight transport",
}
#: Font size of the stored formula SVG (pages scale it: ``service.web.render.scaled_svg``).
FORMULA_PT = 12

_dt = sa.DateTime(timezone=True)
_RULE_COLUMNS = (("name", sa.String), ("hash", sa.String), ("canonical", sa.Text), ("srepr", sa.Text),
                 ("expression", sa.Text), ("terms", sa.JSON), ("family", sa.String), ("origin", sa.String),
                 ("spec", sa.JSON), ("seed", sa.Integer), ("code_version", sa.String), ("job_id", sa.Integer),
                 ("feedback", sa.String), ("depth", sa.Integer), ("dataset", sa.String), ("provenance", sa.JSON),
                 ("created_at", _dt))
_rules = sa.table("rules", sa.column("id", sa.Integer), sa.column("latex", sa.Text),
                  sa.column("coefficients", sa.JSON), sa.column("display_latex", sa.Text),
                  sa.column("formula_svg", sa.Text), sa.column("read_scores", sa.JSON),
                  sa.column("read_json", sa.Text), sa.column("read_updated_at", _dt),
                  *(sa.column(name, kind) for name, kind in _RULE_COLUMNS))
_jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("status", sa.String),
                 sa.column("result", sa.JSON), sa.column("spec", sa.JSON), sa.column("finished_at", _dt),
                 sa.column("read_plots", sa.JSON))
_job_rules = sa.table("job_rules", sa.column("job_id", sa.Integer), sa.column("rule_id", sa.Integer))
_front = sa.table("front_points", sa.column("job_id", sa.Integer), sa.column("rule_id", sa.Integer),
                  sa.column("position", sa.Integer), sa.column("heldout_accuracy", sa.Float),
                  sa.column("heldout_ci95", sa.Float), sa.column("n_terms", sa.Integer),
                  sa.column("complexity", sa.Integer), sa.column("selected", sa.Boolean))
_runs = sa.table("benchmark_runs", sa.column("id", sa.Integer), sa.column("status", sa.String))
_scores = sa.table("benchmark_scores", sa.column("id", sa.Integer), sa.column("run_id", sa.Integer),
                   sa.column("rule_id", sa.Integer), sa.column("suite", sa.String), sa.column("score", sa.Float),
                   sa.column("ci95", sa.Float), sa.column("locality", sa.String),
                   sa.column("cost_per_sample_ms", sa.Float), sa.column("created_at", _dt))


_version = sa.table("read_version", sa.column("id", sa.Integer), sa.column("n", sa.BigInteger))


def bump_version(conn: Connection) -> None:
    """Count one change of what reads show (``read_version.n``; the server's read cache compares it). A row
    counter, not a time: writers in several processes or transactions can never move it backwards."""
    conn.execute(_version.update().where(_version.c.id == 1).values(n=_version.c.n + 1))


def read_version(conn: Connection) -> int:
    """The current count of changes (a primary-key read)."""
    return int(conn.execute(sa.select(_version.c.n).where(_version.c.id == 1)).scalar() or 0)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
    return str(value)


def _score(suite: str, score: Any, ci95: Any, *, job_id: int | None = None, benchmark_id: int | None = None,
           locality: str | None = None, cost: Any = None, created_at: Any = None) -> dict[str, Any]:
    return {"suite": suite, "score": score, "ci95": ci95, "benchmark_id": benchmark_id, "job_id": job_id,
            "locality": locality, "cost_per_sample_ms": cost, "created_at": _iso(created_at)}


def compute_scores(conn: Connection, rule_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """rule id → its scores (the shape of ``ScoreOut``), in two queries for any number of rules."""
    out: dict[int, list[dict[str, Any]]] = {rid: [] for rid in rule_ids}
    if not rule_ids:
        return out
    front_join = (_front.c.job_id == _jobs.c.id) & (_front.c.rule_id == _job_rules.c.rule_id)
    rows = conn.execute(
        sa.select(_job_rules.c.rule_id, _jobs.c.id, _jobs.c.result, _jobs.c.spec, _jobs.c.finished_at,
                  _front.c.heldout_accuracy, _front.c.heldout_ci95, _front.c.job_id.label("front_job"))
        .select_from(_job_rules.join(_jobs, _jobs.c.id == _job_rules.c.job_id).outerjoin(_front, front_join))
        .where(_job_rules.c.rule_id.in_(rule_ids), _jobs.c.status == SUCCEEDED)
        .order_by(_job_rules.c.rule_id, _jobs.c.id, _front.c.position)
    )
    seen: set[tuple[int, int]] = set()
    for rid, job_id, result, spec, finished, acc, ci, front_job in rows:
        if (rid, job_id) in seen or (spec or {}).get("kind") == "inference":   # an inference's score is an EV
            continue
        seen.add((rid, job_id))
        summary = result or {}
        on_front = front_job is not None
        feedback = ((spec or {}).get("network") or {}).get("feedback")
        out[rid].append(_score(
            "discovery", acc if on_front else summary.get("heldout_accuracy"),
            ci if on_front else summary.get("heldout_ci95"), job_id=job_id, created_at=finished,
            locality=FEEDBACK_LOCALITY.get(feedback or "")))
    bench = conn.execute(
        sa.select(_scores).join(_runs, _runs.c.id == _scores.c.run_id)
        .where(_scores.c.rule_id.in_(rule_ids), _runs.c.status == SUCCEEDED).order_by(_scores.c.id)
    )
    for row in bench.mappings():
        out[row["rule_id"]].append(_score(
            row["suite"], row["score"], row["ci95"], benchmark_id=row["run_id"], locality=row["locality"],
            cost=row["cost_per_sample_ms"], created_at=row["created_at"]))
    return out


def display_fields(latex: str, coefficients: dict[str, Any] | None) -> tuple[str, str | None]:
    """(rounded LaTeX, its SVG at :data:`FORMULA_PT`) — the sympy and matplotlib work a page would do."""
    from service.rulebook import display_latex
    from service.web.render import latex_svg

    shown = display_latex(coefficients, latex)
    return shown, latex_svg(shown, FORMULA_PT)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def rule_json(row: Any, scores: list[dict[str, Any]]) -> str:
    """The rule as ``GET /api/rules/{id}`` answers it (``RuleOut`` as JSON), from a ``rules`` row."""
    from types import SimpleNamespace

    from service.api.schemas import RuleOut

    fields = dict(row)
    fields["created_at"] = _aware(fields["created_at"])
    fields["public_provenance"] = public_provenance(
        fields["provenance"], job_id=fields["job_id"], seed=fields["seed"], code_version=fields["code_version"],
        created_at=fields["created_at"], canonical=fields["canonical"], srepr=fields["srepr"])
    fields["read_scores"] = scores
    return RuleOut.model_validate(SimpleNamespace(**fields)).model_dump_json()


def refresh(conn: Connection, rule_ids: Iterable[int], *, display: bool = False) -> None:
    """Recompute the stored scores and JSON of ``rule_ids`` (and, with ``display``, their LaTeX and SVG)."""
    ids = sorted({int(r) for r in rule_ids if r is not None})
    if not ids:
        return
    bump_version(conn)
    now = dt.datetime.now(dt.timezone.utc)
    columns = [_rules.c.id, _rules.c.latex, _rules.c.coefficients, *(_rules.c[name] for name, _ in _RULE_COLUMNS)]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        scores = compute_scores(conn, chunk)
        for row in conn.execute(sa.select(*columns).where(_rules.c.id.in_(chunk))).mappings().all():
            rid = row["id"]
            values: dict[str, Any] = {"read_scores": scores.get(rid, []), "read_updated_at": now,
                                      "read_json": rule_json(row, scores.get(rid, []))}
            if display:
                values["display_latex"], values["formula_svg"] = display_fields(row["latex"] or "",
                                                                                 row["coefficients"])
            conn.execute(_rules.update().where(_rules.c.id == rid).values(**values))


def _plot_inputs(conn: Connection, ids: list[int]) -> list[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    """(job id, result, front points) of the succeeded jobs among ``ids``: what their plots are drawn from."""
    jobs = conn.execute(sa.select(_jobs.c.id, _jobs.c.result).where(_jobs.c.id.in_(ids),
                                                                   _jobs.c.status == SUCCEEDED)).all()
    out = []
    for job_id, result in jobs:
        points = conn.execute(
            sa.select(_front.c.rule_id, _front.c.n_terms, _front.c.complexity, _front.c.heldout_accuracy,
                      _front.c.heldout_ci95, _front.c.selected)
            .where(_front.c.job_id == job_id).order_by(_front.c.position)).mappings().all()
        out.append((job_id, result or {}, [dict(p) for p in points]))
    return out


def draw_plots(result: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, str | None]:
    """A succeeded job's plots as SVG: θ per episode, accuracy per episode, and the Pareto front with a ring per
    rule (a page shows its own ring: ``ring-<id>``). Pure matplotlib work, no database."""
    from service.api.schemas import FrontEntry
    from service.web.render import accuracy_plot_svg, front_plot_svg, theta_plot_svg

    front = [FrontEntry.model_validate(p) for p in points]
    return {"theta": theta_plot_svg(result.get("theta_history") or []),
            "accuracy": accuracy_plot_svg(result.get("history") or []),
            "front": front_plot_svg(front, rings=True)}


def job_plots(conn: Connection, job_ids: Iterable[int]) -> None:
    """Draw and store the plots of the succeeded jobs among ``job_ids`` on ``conn``, in its transaction (the
    migration's backfill; the service draws after the commit instead: :func:`draw_job_plots`)."""
    ids = sorted({int(j) for j in job_ids if j is not None})
    if not ids:
        return
    for job_id, result, points in _plot_inputs(conn, ids):
        conn.execute(_jobs.update().where(_jobs.c.id == job_id).values(read_plots=draw_plots(result, points)))


def draw_job_plots(engine: sa.Engine, job_ids: Iterable[int]) -> None:
    """Draw the plots of the succeeded jobs among ``job_ids`` with no transaction open (1–3 s of matplotlib per
    job), then store them in a short one of their own, so other writers never wait for the drawing
    (docs/operations.md, "Reads at scale"). A job whose front or status changed meanwhile is left for the
    drawing that change scheduled."""
    ids = sorted({int(j) for j in job_ids if j is not None})
    if not ids:
        return
    with engine.connect() as conn:
        inputs = _plot_inputs(conn, ids)
    drawn = [(job_id, result, points, draw_plots(result, points)) for job_id, result, points in inputs]
    with engine.begin() as conn:
        current = {job_id: (result, points) for job_id, result, points in _plot_inputs(conn, [d[0] for d in drawn])}
        for job_id, result, points, plots in drawn:
            if current.get(job_id) == (result, points):
                conn.execute(_jobs.update().where(_jobs.c.id == job_id).values(read_plots=plots))
        bump_version(conn)


def _plots_due(session: Session, conn: Connection, job_ids: Iterable[int]) -> None:
    """The plots of these jobs are out of date: clear them in this transaction (no stale plot is served) and
    draw them after the commit (:func:`_draw_due`)."""
    ids = sorted({int(j) for j in job_ids if j is not None})
    if not ids:
        return
    conn.execute(_jobs.update().where(_jobs.c.id.in_(ids), _jobs.c.read_plots.is_not(None))
                 .values(read_plots=None))
    session.info.setdefault(_PLOTS_DUE, set()).update(ids)


def _draw_due(session: Session) -> None:
    """``after_commit``: draw the plots the committed transaction made due (:func:`draw_job_plots`); a savepoint's
    commit waits for its transaction's."""
    if session.in_nested_transaction():
        return
    due = session.info.pop(_PLOTS_DUE, None)
    if not due:
        return
    bind = session.get_bind()
    try:
        draw_job_plots(bind.engine if isinstance(bind, Connection) else bind, due)
    except Exception:
        log.exception("could not store the plots of jobs %s", sorted(due))


def _forget_due(session: Session, _previous: Any = None) -> None:
    """``after_rollback``: nothing was committed, nothing to draw (a savepoint's rollback leaves its transaction's
    due plots: drawing one more is harmless)."""
    if not session.in_nested_transaction():
        session.info.pop(_PLOTS_DUE, None)


def backfill(conn: Connection) -> int:
    """Fill the read fields of every stored rule and the plots of every succeeded job (the migration's upgrade);
    how many rules."""
    ids = [r for (r,) in conn.execute(sa.select(_rules.c.id))]
    refresh(conn, ids, display=True)
    job_plots(conn, [j for (j,) in conn.execute(sa.select(_jobs.c.id).where(_jobs.c.status == SUCCEEDED))])
    return len(ids)


def rules_of_run(conn: Connection, kind: str, run_id: int) -> list[int]:
    """The rules whose scores depend on job ``run_id`` (``kind`` "job") or benchmark run ``run_id``."""
    if kind == "job":
        stmt = sa.select(_job_rules.c.rule_id).where(_job_rules.c.job_id == run_id)
    else:
        stmt = sa.select(_scores.c.rule_id).where(_scores.c.run_id == run_id, _scores.c.rule_id.is_not(None))
    return [r for (r,) in conn.execute(stmt)]


def refresh_for_run(session: Session, kind: str, run_id: int) -> None:
    """After job or benchmark run ``run_id`` changed status: refresh its rules (and expire their loaded rows)."""
    conn = session.connection()
    ids = rules_of_run(conn, kind, run_id)
    bump_version(conn)      # a succeeded run changes the leaderboard even without rules (a baselines-only run)
    refresh(conn, ids)
    if kind == "job":
        _plots_due(session, conn, [run_id])
        _expire_jobs(session, [run_id])
    _expire(session, ids)


def _expire_jobs(session: Session, job_ids: Iterable[int]) -> None:
    for job_id in job_ids:
        row = session.identity_map.get(session.identity_key(Job, job_id))  # type: ignore[arg-type]
        if row is not None:
            session.expire(row, ["read_plots"])


def _expire(session: Session, rule_ids: Iterable[int]) -> None:
    for rid in rule_ids:
        row = session.identity_map.get(session.identity_key(Rule, rid))  # type: ignore[arg-type]
        if row is not None:
            session.expire(row, ["display_latex", "formula_svg", "read_scores", "read_json", "read_updated_at"])


# --- the flush hook -------------------------------------------------------------------------------------------
_PENDING = "read_fields_pending"
_PLOTS_DUE = "read_plots_due"


def _collect(session: Session, _context: Any) -> None:
    """``after_flush``: note the rules (and runs) whose read fields the flushed rows change."""
    pending = session.info.setdefault(_PENDING, {"new": set(), "rules": set(), "job": set(), "bench": set(),
                                                   "plots": set()})
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Rule):
            if obj in session.new:
                pending["new"].add(obj.id)
            elif obj in session.dirty and session.is_modified(obj):
                pending["rules"].add(obj.id)
        elif isinstance(obj, (JobRule, BenchmarkScore, FrontPointRow)):
            if obj.rule_id is not None:
                pending["rules"].add(obj.rule_id)
            if isinstance(obj, FrontPointRow):
                pending["plots"].add(obj.job_id)
        elif isinstance(obj, (Job, BenchmarkRun)) and (obj in session.new
                                                       or inspect(obj).attrs.status.history.has_changes()):
            pending["job" if isinstance(obj, Job) else "bench"].add(obj.id)
            if isinstance(obj, Job):
                pending["plots"].add(obj.id)


def _apply(session: Session, _context: Any) -> None:
    """``after_flush_postexec``: recompute what :func:`_collect` noted, in the flush's transaction."""
    pending = session.info.pop(_PENDING, None)
    if not pending or not any(pending.values()):
        return
    conn = session.connection()
    bump_version(conn)
    ids = set(pending["rules"])
    for kind in ("job", "bench"):
        for run_id in pending[kind]:
            ids.update(rules_of_run(conn, kind, run_id))
    refresh(conn, pending["new"], display=True)
    refresh(conn, ids - pending["new"])
    _plots_due(session, conn, pending["plots"])
    _expire(session, ids | pending["new"])
    _expire_jobs(session, pending["plots"])


_installed = False


def install() -> None:
    """Hook every ORM session's flushes (idempotent; ``service.db.session`` calls it)."""
    global _installed
    if _installed:
        return
    event.listen(Session, "after_flush", _collect)
    event.listen(Session, "after_flush_postexec", _apply)
    event.listen(Session, "after_commit", _draw_due)
    event.listen(Session, "after_rollback", _forget_due)
    _installed = True
