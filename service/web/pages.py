"""Server-rendered pages (Jinja2, no JavaScript): the leaderboard, a rule, a job, and lists of jobs and rules.

Formulas are the rules' LaTeX typeset to SVG on the server (``service.web.render``); θ trajectories and
meta-accuracy curves are matplotlib SVG inlined in the page. A running job's page refreshes itself every 2 s
with ``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from discovery.spec import RuleFamily
from service import __version__
from service.api.caching import cached
from service.api.deps import IdPath, SessionDep
from service.api.schemas import BenchmarkOut, FrontEntry, JobOut, RuleOut
from service.db.models import ACTIVE_STATUSES, FINAL_STATUSES, BenchmarkRun, Job, Rule
from service.db.read_fields import FORMULA_PT
from service.db.repositories.leaderboard import known_suites, leaderboard
from service.db.repositories.rules import list_rules
from service.rulebook import display_latex, term_formula
from service.web.render import accuracy_plot_svg, front_plot_svg, latex_svg, scaled_svg, theta_plot_svg, vs_delta
from service.web.transfer import transfer_table
from service.web.inference_page import inference_context

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


templates.env.globals["term_cell"] = term_cell


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _cached_page(request: Request, name: str, **context: Any) -> Response:
    """A page rendered with its ETag (304 when the browser's copy is current: ``service.api.caching``)."""
    html = templates.get_template(name).render({"request": request, **context})
    return cached(request, html.encode(), "text/html; charset=utf-8")


def _not_found(request: Request, what: str) -> HTMLResponse:
    return _page(request, "error.html", 404, title="Not found", message=f"{what} does not exist.")


@router.get("/", response_class=HTMLResponse)
@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(
    request: Request,
    session: SessionDep,
    suite: Annotated[str | None, Query(max_length=100)] = None,
    front: Annotated[bool, Query()] = False,
    family: Annotated[str | None, Query(max_length=32, description="a rule family; empty: all")] = None,
) -> HTMLResponse:
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
    for entry in board["entries"]:
        svg = svgs.get(entry.get("rule_id"))
        entry["formula_svg"] = _stored_formula(svg, 13) if svg else _formula(entry.get("latex"), 13)
    return _cached_page(request, "leaderboard.html", board=board, title="Leaderboard")


def stored_svgs(session: SessionDep, rule_ids: list[int]) -> dict[int, str]:
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
    if rule.formula_svg:
        return _stored_formula(rule.formula_svg, fontsize)
    return _formula(rule.display_latex or display_latex(rule.coefficients, rule.latex), fontsize)


def _front_svg(front: list[FrontEntry], highlight: int | None = None) -> Markup | None:
    """A job's Pareto front as a plot; None when the job ran no open search."""
    svg = front_plot_svg(front, highlight)
    return Markup(svg) if svg else None


def _job_curves(job: Job | None) -> tuple[Markup | None, Markup | None]:
    """A job's θ and accuracy plots; a finished job's are drawn once per process (its result no longer changes)."""
    if job is None:
        return None, None
    if job.status in FINAL_STATUSES:
        return _final_curves(job.id, job.updated_at.isoformat(), job)
    return _curves(job.result or {})


def _curves(result: dict[str, Any]) -> tuple[Markup | None, Markup | None]:
    theta = theta_plot_svg(result.get("theta_history") or [])
    acc = accuracy_plot_svg(result.get("history") or [])
    return (Markup(theta) if theta else None), (Markup(acc) if acc else None)


_FINAL_CURVES: dict[tuple[int, str], tuple[Markup | None, Markup | None]] = {}
_CURVES_LOCK = threading.Lock()


def _final_curves(job_id: int, stamp: str, job: Job) -> tuple[Markup | None, Markup | None]:
    key = (job_id, stamp)
    with _CURVES_LOCK:
        found = _FINAL_CURVES.get(key)
    if found is None:
        found = _curves(job.result or {})
        with _CURVES_LOCK:
            if len(_FINAL_CURVES) >= 256:
                _FINAL_CURVES.pop(next(iter(_FINAL_CURVES)))
            _FINAL_CURVES[key] = found
    return found


@router.get("/rules", response_class=HTMLResponse)
def rules_page(
    request: Request, session: SessionDep, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    after: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> HTMLResponse:
    rules, total, cursor = list_rules(session, limit=50, offset=offset, after=after,
                                      options=[undefer(Rule.formula_svg)])
    rows = [{"rule": r, "formula_svg": _rule_formula(r, 12)} for r in rules]
    session.close()
    return _cached_page(request, "rules.html", rows=rows, total=total, offset=offset, after=after, cursor=cursor,
                        title="Rules")


@router.get("/rules/{rule_id}", response_class=HTMLResponse)
def rule_page(request: Request, rule_id: IdPath, session: SessionDep) -> HTMLResponse:
    rule = session.get(Rule, rule_id, options=[undefer(Rule.formula_svg)])
    if rule is None:
        return _not_found(request, f"Rule {rule_id}")
    data = RuleOut.of(rule)
    job = session.get(Job, rule.job_id) if rule.job_id is not None else None
    theta_svg, acc_svg = _job_curves(job)
    front = [FrontEntry.model_validate(p) for p in job.front] if job is not None else []
    coefficients = []
    for k, v in (rule.coefficients or {}).items():
        info = term_formula(k) or {}
        coefficients.append({"term": k, "name": info.get("name", ""), "expression": info.get("text", ""), "value": v})
    formula_svg = _rule_formula(rule, 18)
    transfer = transfer_table(session, rule.id)
    inference = inference_context(rule)
    session.close()
    return _cached_page(
        request,
        "rule.html",
        rule=data,
        formula_svg=formula_svg,
        coefficients=coefficients,
        theta_svg=theta_svg,
        accuracy_svg=acc_svg,
        front_svg=_front_svg(front, rule.id),
        front=front,
        job=job,
        transfer=transfer,
        title=rule.name,
        **inference,
    )


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
    job = session.get(Job, job_id)
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
    theta_svg, acc_svg = _job_curves(job)
    return _page(
        request,
        "job.html",
        job=data,
        percent=percent,
        refresh=job.status in ACTIVE_STATUSES,
        theta_svg=theta_svg,
        accuracy_svg=acc_svg,
        front_svg=_front_svg(data.front),
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
