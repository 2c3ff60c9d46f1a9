"""Server-rendered pages (Jinja2, no JavaScript): the leaderboard, a rule, a job, and lists of jobs and rules.

Formulas are the rules' LaTeX typeset to SVG on the server (``service.web.render``); θ trajectories and
meta-accuracy curves are matplotlib SVG inlined in the page. A running job's page refreshes itself every 2 s
with ``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload, undefer

from discovery.spec import RuleFamily
from service import __version__
from service.api.deps import IdPath, SessionDep
from service.api.readpath import Checkpoint, serve_read
from service.api.schemas import BenchmarkOut, FrontEntry, JobOut, RuleOut
from service.db.models import (
    ACTIVE_STATUSES,
    ORIGIN_INFERRED,
    SUCCEEDED,
    BenchmarkRun,
    FrontPointRow,
    Job,
    Rule,
)
from service.db.read_fields import FORMULA_PT
from service.db.repositories.leaderboard import known_suites, leaderboard
from service.db.repositories.rules import list_rules
from service.rulebook import display_latex, term_formula
from service.web.inference_page import inference_context
from service.web.render import (
    accuracy_plot_svg,
    front_plot_svg,
    latex_svg,
    scaled_svg,
    shared_glyphs,
    theta_plot_svg,
    vs_delta,
)
from service.web.transfer import SUITE as TRANSFER_SUITE
from service.web.transfer import transfer_table

log = logging.getLogger("plasticity.pages")
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))


def _formula(latex: str | None, fontsize: int = 15) -> Markup | None:
    svg = latex_svg(latex, fontsize) if latex else None
    return Markup(svg) if svg else None


def _formatted(value: Any, spec: str) -> str:
    """A number in the format ``spec``; "—" for none, the text itself for what is not a number."""
    if value is None:
        return "—"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _num(value: Any, digits: int = 3) -> str:
    return _formatted(value, f".{digits}f")


def _sci(value: Any) -> str:
    return _formatted(value, ".4g")


templates.env.filters["num"] = _num
templates.env.filters["sci"] = _sci
templates.env.filters["vs_delta"] = vs_delta
templates.env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
templates.env.globals["version"] = __version__


@functools.lru_cache(maxsize=4096)
def term_cell(term_id: str, fontsize: int = 12) -> Markup:
    """A term as pages show it: its formula (LaTeX typeset to SVG, else the rule-syntax text) with the id as a
    secondary label, so generated ids like ``T4d4340c6`` read as what they are."""
    info = term_formula(str(term_id))
    label = Markup('<span class="term-id muted mono small">{}</span>').format(term_id)
    if info is None:
        return Markup('<span class="mono">{}</span>').format(term_id)
    svg = latex_svg(info["latex"], fontsize) if info["latex"] else None
    formula = Markup(svg) if svg else Markup('<code>{}</code>').format(info["text"])
    return Markup('<span class="term" title="{}: {}">{} {}</span>').format(term_id, info["text"], formula, label)


@functools.lru_cache(maxsize=4096)
def term_text(term_id: str) -> Markup:
    """A term in a long table (a front's rows): its formula in rule syntax with the id as a label — text, so that a
    page listing many rules stays small (the rule's own table typesets it: :func:`term_cell`)."""
    info = term_formula(str(term_id))
    if info is None:
        return Markup('<span class="mono">{}</span>').format(term_id)
    return Markup('<span class="term" title="{}: {}"><code>{}</code> <span class="term-id muted mono small">{}</span>'
                  '</span>').format(term_id, info["text"], info["text"], term_id)


def warm() -> None:
    """Build mathtext's parser and typeset the term library's cells once (seconds of first-use work), so that
    the first readers after a start do not wait for it; the app runs it in a thread at start."""
    try:
        from rules.terms import TERMS

        latex_svg("x", 13)
        for term_id in TERMS:
            term_cell(term_id)
    except Exception:   # an optimisation only: pages typeset on demand
        log.exception("warming the page renderer failed")


templates.env.globals["term_cell"] = term_cell
templates.env.globals["term_text"] = term_text


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _html(request: Request, name: str, **context: Any) -> Response:
    """A page for :func:`service.api.readpath.serve_read` (which adds its ETag and answers 304 when the browser's copy
    is current)."""
    return HTMLResponse(shared_glyphs(templates.get_template(name).render({"request": request, **context})))


def _not_found(request: Request, what: str) -> HTMLResponse:
    return _page(request, "error.html", 404, title="Not found", message=f"{what} does not exist.")


@router.get("/", response_class=HTMLResponse)
@router.get("/leaderboard", response_class=HTMLResponse)
async def leaderboard_page(
    request: Request,
    suite: Annotated[str | None, Query(max_length=100)] = None,
    front: Annotated[bool, Query()] = False,
    family: Annotated[str | None, Query(max_length=32, description="a rule family; empty: all")] = None,
) -> Response:
    def build(session: Session, checkpoint: Checkpoint) -> Response:
        suites = known_suites(session)
        if suite is not None and suite not in suites:
            return _page(request, "error.html", 404, title="Unknown suite",
                         message=f"There is no suite named {suite!r}. Known: {', '.join(suites)}.")
        families = get_args(RuleFamily)
        if family and family not in families:
            return _page(request, "error.html", 404, title="Unknown family",
                         message=f"There is no rule family {family!r}. Known: {', '.join(families)}.")
        board = leaderboard(session, suite, only_front=front, family=family or None)
        svgs = stored_svgs(session, [e["rule_id"] for e in board["entries"] if e.get("rule_id")])
        session.close()
        checkpoint()
        for entry in board["entries"]:
            svg = svgs.get(entry.get("rule_id"))
            entry["formula_svg"] = _stored_formula(svg, 13) if svg else _formula(entry.get("latex"), 13)
        return _html(request, "leaderboard.html", board=board, title="Leaderboard")

    return await serve_read(request, build)


def stored_svgs(session: Session, rule_ids: list[int]) -> dict[int, str]:
    """rule id → its stored formula SVG (``rules.formula_svg``), in one query."""
    if not rule_ids:
        return {}
    rows = session.execute(select(Rule.id, Rule.formula_svg).where(Rule.id.in_(rule_ids)))
    return {rid: svg for rid, svg in rows if svg}


def _stored_formula(svg: str | None, fontsize: int) -> Markup | None:
    """A rule's stored formula SVG (typeset at ``read_fields.FORMULA_PT``) shown at ``fontsize``."""
    scaled = scaled_svg(svg, fontsize / FORMULA_PT)
    return Markup(scaled) if scaled else None


def _rule_formula(rule: Rule, fontsize: int) -> Markup | None:
    """The stored SVG of ``rule`` at ``fontsize``; rules stored before it existed are typeset now."""
    return _formula_of(rule.formula_svg, rule.display_latex, rule.coefficients, rule.latex, fontsize)


def _formula_of(svg: str | None, display: str | None, coefficients: dict[str, Any] | None, latex: str | None,
                fontsize: int) -> Markup | None:
    """A rule's stored formula SVG at ``fontsize``; without one, its display LaTeX (θ rounded) typeset now."""
    if svg:
        return _stored_formula(svg, fontsize)
    return _formula(display or display_latex(coefficients, latex), fontsize)


def _front_svg(front: list[FrontEntry], highlight: int | None = None) -> Markup | None:
    """A job's Pareto front as a plot; None when the job ran no open search."""
    svg = front_plot_svg(front, highlight)
    return Markup(svg) if svg else None


def _job_curves(job: Job | None) -> tuple[Markup | None, Markup | None]:
    """A job's θ and accuracy plots, drawn once per state of the job (its id and ``updated_at``)."""
    if job is None:
        return None, None
    return _drawn_once((job.id, job.updated_at.isoformat(), "curves"), lambda: _curves(job.result or {}))


def _curves(result: dict[str, Any]) -> tuple[Markup | None, Markup | None]:
    theta = theta_plot_svg(result.get("theta_history") or [])
    acc = accuracy_plot_svg(result.get("history") or [])
    return (Markup(theta) if theta else None), (Markup(acc) if acc else None)


class _Memo:
    """Values built once per key and shared across requests (threads); the ``size`` most recently stored are kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """The value kept for ``key``, or ``build()`` stored under it (a None result is not kept)."""
        with self._lock:
            found = self._values.get(key)
        if found is None:
            found = build()
            with self._lock:
                if len(self._values) >= self.size:
                    self._values.pop(next(iter(self._values)))
                self._values[key] = found
        return found

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


#: plots per (job id, its ``updated_at``, plot): a page refreshed every 2 s redraws only when the job changed
_DRAWN = _Memo(256)


def _drawn_once(key: tuple[int, str, str], draw: Callable[[], Any]) -> Any:
    """``draw()`` kept per ``key`` (a job's id, its ``updated_at`` and the plot)."""
    return _DRAWN.get(key, draw)


def _stored_plots(job: Job | None, rule_id: int | None) -> tuple[Markup | None, Markup | None, Markup | None] | None:
    """A succeeded job's plots as drawn once when it succeeded (``jobs.read_plots``), as images the browser
    keeps (:func:`job_plot`); the front rings ``rule_id``. None when none are stored (yet)."""
    plots = (job.read_plots or {}) if job is not None and job.status == SUCCEEDED else {}
    if not plots:
        return None
    return tuple(_plot_img(job.id, name, rule_id if name == "front" else None)  # type: ignore[return-value]
                 if plots.get(name) else None for name in ("theta", "accuracy", "front"))


@router.get("/rules", response_class=HTMLResponse)
async def rules_page(
    request: Request, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    after: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    def build(session: Session, checkpoint: Checkpoint) -> Response:
        rules, total, cursor = list_rules(session, limit=50, offset=offset, after=after,
                                          options=[undefer(Rule.formula_svg)])
        rows = [{"rule": r, "formula_svg": _rule_formula(r, 12)} for r in rules]
        session.close()
        checkpoint()
        return _html(request, "rules.html", rows=rows, total=total, offset=offset, after=after, cursor=cursor,
                     title="Rules")

    return await serve_read(request, build)


@router.get("/rules/{rule_id}", response_class=HTMLResponse)
async def rule_page(request: Request, rule_id: IdPath) -> Response:
    def build(session: Session, checkpoint: Checkpoint) -> Response:
        row = session.execute(select(Rule.read_json, Rule.formula_svg, Rule.display_latex, Rule.job_id, Rule.origin)
                              .where(Rule.id == rule_id)).first()
        if row is None:
            return _not_found(request, f"Rule {rule_id}")
        if row.read_json is None or row.origin == ORIGIN_INFERRED:
            return _rule_page_from_entities(request, session, checkpoint, rule_id)
        data = RuleOut.model_validate_json(row.read_json)       # the stored read field: no ORM entity, no per-row work
        job = _job_context(session, row.job_id)
        formula_svg = _formula_of(row.formula_svg, row.display_latex, data.coefficients, data.latex, 18)
        transfer = transfer_table(session, data.id) if any(s.suite == TRANSFER_SUITE for s in data.scores) else None
        session.close()
        checkpoint()
        return _rule_html(request, data, formula_svg, job, transfer)

    return await serve_read(request, build)


def _rule_html(request: Request, data: RuleOut, formula_svg: Markup | None, job: _JobContext,
               transfer: Any, **inference: Any) -> Response:
    """``rule.html`` for the rule ``data`` with its job's front and plots (``job``) and its transfer table."""
    return _html(request, "rule.html", rule=data, formula_svg=formula_svg, coefficients=_coefficients(data.coefficients),
                 theta_svg=job.theta_svg, accuracy_svg=job.accuracy_svg, front_svg=job.front_svg_for(data.id),
                 front=job.front, transfer=transfer, title=data.name, **inference)


def _coefficients(coefficients: dict[str, float | None] | None) -> list[dict[str, Any]]:
    """The coefficient table's rows: term id, its name and rule syntax (memoized per term), θ."""
    rows = []
    for k, v in (coefficients or {}).items():
        info = term_formula(k) or {}
        rows.append({"term": k, "name": info.get("name", ""), "expression": info.get("text", ""), "value": v})
    return rows


class _JobContext:
    """What a rule page shows of the rule's job (its front table and plots); the same for every rule of the job,
    so it is built once per state of the job (its id and ``updated_at``) and shared by the job's rules' pages."""

    def __init__(self, job: Job | None) -> None:
        self.front = [FrontEntry.model_validate(p) for p in job.front] if job is not None else []
        self.job_id = job.id if job is not None else None
        self.stamp = job.updated_at.isoformat() if job is not None else ""
        stored = _stored_plots(job, None)
        self.stored = stored is not None
        self.has_front_plot = bool(self.stored and (job.read_plots or {}).get("front"))
        if stored is not None:
            self.theta_svg, self.accuracy_svg, _ = stored
        else:
            self.theta_svg, self.accuracy_svg = _job_curves(job)

    def front_svg_for(self, rule_id: int) -> Markup | None:
        """The front plot with ``rule_id`` ringed: the stored image, or drawn once per (job state, rule)."""
        if self.job_id is None:
            return None
        if self.stored:
            return _plot_img(self.job_id, "front", rule_id) if self.has_front_plot else None
        return _drawn_once((self.job_id, self.stamp, f"front-{rule_id}"), lambda: _front_svg(self.front, rule_id))


#: job contexts per (job id, its ``updated_at``)
_JOB_CONTEXTS = _Memo(1024)


def _job_context(session: Session, job_id: int | None) -> _JobContext:
    """The rule's job context, read once per state of the job (one small query for its ``updated_at``)."""
    stamp = session.execute(select(Job.updated_at).where(Job.id == job_id)).scalar() if job_id is not None else None
    if stamp is None:
        return _JobContext(None)
    return _JOB_CONTEXTS.get((job_id, stamp.isoformat()), lambda: _JobContext(session.get(Job, job_id, options=[
        undefer(Job.read_plots),
        selectinload(Job.front).joinedload(FrontPointRow.rule).load_only(Rule.id, Rule.expression, Rule.provenance)])))


def _rule_page_from_entities(request: Request, session: Session, checkpoint: Checkpoint, rule_id: int) -> Response:
    """The rule page from ORM entities: rules stored before ``read_json`` existed, and inferred rules (their page
    shows the recording's trajectories from the private provenance)."""
    rule = session.get(Rule, rule_id, options=[undefer(Rule.formula_svg)])
    if rule is None:
        return _not_found(request, f"Rule {rule_id}")
    data = RuleOut.of(rule)
    job = _job_context(session, rule.job_id)
    formula_svg = _rule_formula(rule, 18)
    transfer = transfer_table(session, rule.id)
    inference = inference_context(rule)
    session.close()
    checkpoint()
    return _rule_html(request, data, formula_svg, job, transfer, **inference)


PLOT_CAPTIONS = {"theta": "θ per meta-training episode", "accuracy": "query accuracy per episode",
                 "front": "Pareto front: terms × held-out accuracy"}


def _plot_img(job_id: int, name: str, rule_id: int | None) -> Markup:
    query = f"?rule={rule_id}" if rule_id is not None else ""
    return Markup('<img src="/jobs/{}/plots/{}.svg{}" alt="{}">').format(job_id, name, query, PLOT_CAPTIONS[name])


@router.get("/jobs/{job_id}/plots/{name}.svg")
async def job_plot(request: Request, job_id: IdPath, name: Literal["theta", "accuracy", "front"],
             rule: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="ring this rule (front)")] = None,
             ) -> Response:
    """A succeeded job's plot as drawn once when it succeeded (``jobs.read_plots``); the front with ``rule``'s ring
    shown (every rule of the front has one, hidden by a style rule)."""
    def build(session: Session, _checkpoint: Checkpoint) -> Response:
        job = session.get(Job, job_id, options=[undefer(Job.read_plots)])
        svg = ((job.read_plots or {}).get(name) if job is not None and job.status == SUCCEEDED else None)
        if not svg:
            return Response(status_code=404, content=f"job {job_id} has no stored {name} plot", media_type="text/plain")
        if name == "front":
            show = f'#ring-{rule} {{ display: inline }}' if rule is not None else ""
            head, sep, rest = svg.partition(">")
            svg = f'{head}{sep}<style>[id^="ring-"] {{ display: none }} {show}</style>{rest}'
        return Response(svg.encode(), media_type="image/svg+xml")

    return await serve_read(request, build)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request, session: SessionDep, offset: Annotated[int, Query(ge=0, le=10**9)] = 0
) -> HTMLResponse:
    jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(50).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(Job)) or 0
    active = any(j.status in ACTIVE_STATUSES for j in jobs)
    return _page(
        request,
        "jobs.html",
        jobs=[JobOut.of(j) for j in jobs],
        total=total,
        offset=offset,
        refresh=active,
        title="Jobs",
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: IdPath, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id, options=[undefer(Job.read_plots)])
    if job is None:
        return _not_found(request, f"Job {job_id}")
    data = JobOut.of(job, events=True)
    episode = data.progress.episode if data.progress is not None else None
    total = data.progress.total if data.progress is not None else None
    percent = (
        100.0
        if job.status == "succeeded"
        else (min(100.0, 100.0 * episode / total) if isinstance(episode, int) and total else 0.0)
    )
    stored = _stored_plots(job, None)
    if stored is not None:      # drawn once when it succeeded
        theta_svg, acc_svg, front_svg = stored
    else:
        theta_svg, acc_svg = _job_curves(job)
        front_svg = _drawn_once((job.id, job.updated_at.isoformat(), "front"), lambda: _front_svg(data.front))
    return _page(
        request,
        "job.html",
        job=data,
        percent=percent,
        refresh=job.status in ACTIVE_STATUSES,
        theta_svg=theta_svg,
        accuracy_svg=acc_svg,
        front_svg=front_svg,
        front=data.front,
        events=list(reversed(data.events or []))[:50],
        title=f"Job {job.id}",
    )


@router.get("/benchmarks/{bench_id}", response_class=HTMLResponse)
def benchmark_page(request: Request, bench_id: IdPath, session: SessionDep) -> HTMLResponse:
    run = session.get(BenchmarkRun, bench_id)
    if run is None:
        return _not_found(request, f"Benchmark {bench_id}")
    return _page(
        request,
        "benchmark.html",
        run=BenchmarkOut.model_validate(run),
        refresh=run.status in ACTIVE_STATUSES,
        title=f"Benchmark {run.id}",
    )
