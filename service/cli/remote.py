"""The ``plasticity`` commands against a running server, built on ``service.client.http``: jobs, rules, benchmarks,
leaderboard (registered on service.cli.common.app; see service.cli.main)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from service.cli.common import (
    USAGE_ERROR,
    CliError,
    app,
    err,
    out,
)
from service.rulebook import term_label

# --- against a server: jobs, rules, benchmarks, leaderboard (service.client.http) -----------------------------------------
jobs_app = typer.Typer(help="Discovery jobs on a server (/api/jobs).", no_args_is_help=True)
rules_app = typer.Typer(help="Stored rules on a server (/api/rules).", no_args_is_help=True)
benchmarks_app = typer.Typer(help="Benchmark runs on a server (/api/benchmarks).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(rules_app, name="rules")
app.add_typer(benchmarks_app, name="benchmarks")
datasets_app = typer.Typer(help="Uploaded data sets on a server (/api/datasets).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

ServerOpt = Annotated[
    str | None,
    typer.Option("--server", envvar="PLASTICITY_SERVER", show_default=False,
                 help="server URL (PLASTICITY_SERVER; default http://127.0.0.1:8000)"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", show_default=False,
                 help="bearer token (default: PLASTICITY_API_TOKENS, else the data folder's api_token)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the server's JSON instead of a table")]
TimeoutOpt = Annotated[float | None, typer.Option(help="with --wait: give up after this many seconds")]
IdArg = Annotated[int, typer.Argument(min=1, help="the id")]


def _fail_line(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """One line on stderr (never wrapped), then exit ``code``."""
    from rich.text import Text

    err.print(Text.assemble(("error: ", "bold red"), " ".join(str(message).split())), soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _remote(server: str | None, token: str | None) -> Iterator[Any]:
    """A ``service.client.http.Client``; client errors end as one line: exit 2 (1 for a run that failed)."""
    from service.client.http import Client, PlasticityError, RunFailed

    try:
        with Client(server, token) as client:
            yield client
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except RunFailed as exc:
        _fail_line(str(exc), code=1)
    except (PlasticityError, CliError, ValueError, TypeError) as exc:
        _fail_line(str(exc))
    except Exception as exc:
        if os.environ.get("PLASTICITY_DEBUG"):
            raise
        _fail_line(f"{type(exc).__name__}: {exc}", code=1)


def _answer(server: str | None, token: str | None, as_json: bool, fetch: Callable[[Any], Any],
            show: Callable[[Any], None]) -> None:
    """One request against the server: its answer as JSON (``--json``) or shown by ``show``."""
    with _remote(server, token) as client:
        answer = fetch(client)
        _print_json(answer) if as_json else show(answer)


def _status_line(what: str) -> Callable[[Any], None]:
    """Shows a job or benchmark as one line: ``<what> <id> <status>``."""
    return lambda row: out.print(f"{what} {row.id} {row.status}", highlight=False)


def _print_json(data: Any) -> None:
    """JSON on stdout (models dumped as the API sends them)."""
    from pydantic import BaseModel

    def dump(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, list):
            return [dump(v) for v in value]
        return value

    sys.stdout.write(json.dumps(dump(data), indent=2, default=str) + "\n")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    out.print(table)


def _pairs(title: str, pairs: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in pairs:
        table.add_row(key, _fmt(value, 4) if not isinstance(value, str) else value)
    out.print(table)


def _job_progress(job: Any) -> str:
    p = job.progress
    if p is None or p.episode is None:
        return "—"
    return f"{p.episode}/{p.total}" if p.total else str(p.episode)


def _show_job(job: Any) -> None:
    held = None if job.heldout_accuracy is None else (
        f"{job.heldout_accuracy:.3f}" + (f" ± {job.heldout_ci95:.3f}" if job.heldout_ci95 is not None else ""))
    theta = (job.progress.theta if job.progress else {}) or {}
    _pairs(f"job {job.id}", [
        ("status", job.status), ("goal", job.goal or "—"), ("name", job.name or "—"),
        ("progress", _job_progress(job)),
        ("meta-accuracy", job.progress.meta_accuracy if job.progress else None),
        ("θ", ", ".join(f"{v:+.3e} · {term_label(k)}" for k, v in theta.items() if v is not None) or "—"),
        ("held-out", held or "—"), ("rules", ", ".join(map(str, job.rule_ids)) or "—"),
        ("error", job.error or "—"), ("attempts", job.attempts), ("created", str(job.created_at)),
        ("finished", str(job.finished_at) if job.finished_at else "—"),
    ])


def _show_rule(rule: Any) -> None:
    _pairs(f"rule {rule.id}: {rule.name}", [
        ("ΔW", rule.expression), ("origin", rule.origin), ("hash", rule.hash),
        ("coefficients", "; ".join(f"{v:+.4g} · {term_label(k)}" for k, v in rule.coefficients.items()
                                   if v is not None)),
        ("job", rule.provenance.get("job_id") or "—"),
        ("network", f"{rule.feedback} feedback, depth {rule.depth}, {rule.dataset}" if rule.feedback else "—"),
        ("scores", "; ".join(f"{s.suite} {_fmt(s.score)}" + (f" ± {_fmt(s.ci95)}" if s.ci95 is not None else "")
                             for s in rule.scores) or "—"),
    ])


def _show_benchmark(run: Any) -> None:
    rule = f"rule {run.rule_id}" if run.rule_id else "baselines only"
    _table(
        f"benchmark {run.id}: {run.suite} ({rule}) {run.status}" + (f": {run.error}" if run.error else ""),
        ["learner", "origin", "score", "± CI", "locality", "ms/sample"],
        [[s.learner, s.origin, s.score, s.ci95, s.locality, s.cost_per_sample_ms]
         for s in sorted(run.scores, key=lambda s: -(s.score or 0.0))],
    )
    if run.vs:
        _table(f"the rule − each baseline, paired on the same episodes (baselines {run.baselines or '?'})",
               ["baseline", "delta", "95 % CI", "verdict"],
               [[name, v.delta, f"[{_fmt(v.ci95[0])}, {_fmt(v.ci95[1])}]", v.verdict] for name, v in run.vs.items()])


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read the spec file {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a JSON object (a DiscoverySpec), not {type(data).__name__}")
    return data


@jobs_app.command("submit")
def jobs_submit(
    goal: Annotated[str | None, typer.Option(help="a plain-language goal")] = None,
    spec: Annotated[Path | None, typer.Option(help="a DiscoverySpec JSON file instead of --goal")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job with a progress bar until it ends")] = False,
    timeout: TimeoutOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a discovery job (POST /api/jobs); with --wait, print the discovered rule."""
    with _remote(server, token) as client:
        if (goal is None) == (spec is None):
            raise CliError('give --goal "..." or --spec SPEC.json (one of them)')
        job = client.submit(goal=goal) if goal is not None else client.submit(spec=_read_spec_file(spec))  # type: ignore[arg-type]
        if not as_json:
            out.print(f"job {job.id} {job.status}", highlight=False)
            for note in job.understood or []:
                out.print(f"  [dim]{note}[/]", highlight=False)
        if wait:
            job = client.wait(job, progress=not as_json, timeout=timeout, console=err)
        if as_json:
            _print_json(job)
            return
        if wait:
            _show_job(job)
            for rule_id in job.rule_ids:
                rule = client.rule(rule_id)
                out.print(f"rule {rule.id}  ΔW = {rule.expression}", highlight=False, soft_wrap=True)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first (GET /api/jobs)."""
    with _remote(server, token) as client:
        jobs = client.jobs(status=status, limit=limit)
        if as_json:
            _print_json(jobs)
            return
        _table("jobs", ["id", "status", "goal / name", "progress", "held-out", "rules", "created"], [
            [j.id, j.status, (j.goal or j.name or "—")[:60], _job_progress(j), j.heldout_accuracy,
             ", ".join(map(str, j.rule_ids)) or "—", j.created_at.strftime("%Y-%m-%d %H:%M")] for j in jobs])


@jobs_app.command("show")
def jobs_show(job_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One job: status, progress, θ, held-out accuracy, rules (GET /api/jobs/{id})."""
    _answer(server, token, as_json, lambda client: client.job(job_id), _show_job)


@jobs_app.command("cancel")
def jobs_cancel(job_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued or running job (POST /api/jobs/{id}/cancel)."""
    _answer(server, token, as_json, lambda client: client.cancel(job_id), _status_line("job"))


@rules_app.command("list")
def rules_list(
    feedback: Annotated[str | None, typer.Option(help="bp, fa, dfa or sign")] = None,
    depth: Annotated[int | None, typer.Option(min=1, help="weight layers")] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    term: Annotated[str | None, typer.Option(help="a term id, e.g. F9")] = None,
    origin: Annotated[str | None, typer.Option(help="discovered or user")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stored rules, newest first, with filters (GET /api/rules)."""
    with _remote(server, token) as client:
        rules = client.rules(feedback=feedback, depth=depth, dataset=dataset, term=term, origin=origin, limit=limit)
        if as_json:
            _print_json(rules)
            return
        _table("rules", ["id", "name", "origin", "ΔW", "network", "best score"], [
            [r.id, r.name[:40], r.origin, r.expression,
             f"{r.feedback} d{r.depth} {r.dataset}" if r.feedback else "—",
             max((s.score for s in r.scores if s.score is not None), default=None)] for r in rules])


@rules_app.command("show")
def rules_show(rule_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One rule: expression, coefficients, hash, provenance, scores (GET /api/rules/{id})."""
    _answer(server, token, as_json, lambda client: client.rule(rule_id), _show_rule)


@rules_app.command("export")
def rules_export(
    rule_id: IdArg,
    format: Annotated[str, typer.Option("--format", "-f", help="torch, numpy, jax, latex, sympy or json")] = "torch",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Self-contained source of a rule (GET /api/rules/{id}/export): delta_w(x, y, e, e_pre, W) and more."""
    with _remote(server, token) as client:
        text = client.export(rule_id, format)
        if out_file is None:
            sys.stdout.write(text)
            return
        try:
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_text(text)
        except OSError as exc:
            raise CliError(f"cannot write {out_file}: {exc.strerror or exc}") from exc
        err.print(f"wrote {out_file}", highlight=False)


@benchmarks_app.command("run")
def benchmarks_run(
    suite: Annotated[str, typer.Option(help="suite name (GET /api/suites)")],
    rule_id: Annotated[int | None, typer.Option(min=1, help="a stored rule's id")] = None,
    expression: Annotated[str | None, typer.Option(help='a rule expression, e.g. "-0.01*e*x.T"')] = None,
    tiny: Annotated[bool, typer.Option(help="the suite's smoke-test size")] = False,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    retune: Annotated[bool, typer.Option(help="tune the baselines again instead of using the suite's cache")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends and print its scores")] = False,
    timeout: TimeoutOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark a stored rule, an expression, or the baselines alone on a suite (POST /api/benchmarks)."""
    with _remote(server, token) as client:
        if rule_id is not None and expression is not None:
            raise CliError("give --rule-id or --expression, not both")
        rule = rule_id if rule_id is not None else expression
        run = client.benchmark(rule, suite, wait=False, tiny=tiny, seed=seed, retune=retune)
        if not as_json:
            out.print(f"benchmark {run.id} {run.status}", highlight=False)
        if wait:
            run = client.wait_benchmark(run, progress=not as_json, timeout=timeout, console=err)
        if as_json:
            _print_json(run)
        elif wait:
            _show_benchmark(run)


@benchmarks_app.command("show")
def benchmarks_show(run_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One benchmark run and its per-learner scores (GET /api/benchmarks/{id})."""
    _answer(server, token, as_json, lambda client: client.benchmark_run(run_id), _show_benchmark)


@benchmarks_app.command("cancel")
def benchmarks_cancel(
    run_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a queued or running benchmark (POST /api/benchmarks/{id}/cancel)."""
    _answer(server, token, as_json, lambda client: client.cancel_benchmark(run_id), _status_line("benchmark"))


def _show_dataset(d: Any) -> None:
    _pairs(f"data set {d.id}", [("name", d.name), ("ref", d.ref), ("N", d.n), ("D", d.dim),
                                 ("classes", f"{d.n_classes}: {', '.join(map(str, d.classes[:20]))}"),
                                 ("per class", ", ".join(map(str, d.class_counts[:20]))), ("sha256", d.sha256),
                                 ("owner", d.owner), ("format", d.format)])


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".npz (arrays X, y) or .nwb")],
    name: Annotated[str | None, typer.Option(help="the name goals use ('on my dataset NAME'); default: the file's")]
    = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a labelled data set (POST /api/datasets); jobs name it upload:<id>."""
    _answer(server, token, as_json, lambda client: client.upload_dataset(file, name), _show_dataset)


@datasets_app.command("list")
def datasets_list(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Uploaded data sets, newest first (GET /api/datasets)."""
    with _remote(server, token) as client:
        rows = client.datasets()
        if as_json:
            _print_json(rows)
            return
        _table("data sets", ["id", "name", "N", "D", "classes", "per class", "sha256", "owner"], [
            [d.id, d.name, d.n, d.dim, d.n_classes, f"{min(d.class_counts)}–{max(d.class_counts)}",
             d.sha256[:12], d.owner] for d in rows])


@datasets_app.command("delete")
def datasets_delete(dataset_id: IdArg, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Delete a data set you uploaded (DELETE /api/datasets/{id}); refused while a queued or running job uses it."""
    with _remote(server, token) as client:
        client.delete_dataset(dataset_id)
        out.print(f"data set {dataset_id} deleted")


@app.command("leaderboard")
def leaderboard_cmd(
    suite: Annotated[str | None, typer.Option(help="suite name (default: the latest benchmarked)")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ranked rules and baselines of a suite (GET /api/leaderboard)."""
    with _remote(server, token) as client:
        board = client.leaderboard(suite)
        if as_json:
            _print_json(board)
            return
        _table(f"leaderboard: {board.suite}", ["#", "name", "origin", "score", "± CI", "locality", "ms/sample"], [
            [e.rank, e.name, e.origin, e.score, e.ci, e.locality, e.cost] for e in board.entries])
