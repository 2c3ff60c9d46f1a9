"""The ``plasticity`` command line (typer app ``app``): serve, migrate, discover, benchmark, bench, suites, token;
and, against a running server (built on ``service.client``): jobs, rules, benchmarks, leaderboard.

Every failure a user can cause (a missing or invalid spec file, an unknown suite, a bad expression, an unknown
rule id) ends with a one-paragraph message on stderr and exit code 2; unexpected errors exit 1, also without a
traceback (``PLASTICITY_DEBUG=1`` shows it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

app = typer.Typer(
    name="plasticity",
    help="Discover, store and rank biologically plausible plasticity rules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

USAGE_ERROR = 2


class CliError(Exception):
    """A user-facing failure: printed as a message, exit code 2."""


def _fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def _friendly() -> Iterator[None]:
    """Turn exceptions into messages (no traceback unless PLASTICITY_DEBUG=1)."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except CliError as exc:
        _fail(str(exc))
    except Exception as exc:
        if os.environ.get("PLASTICITY_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc}", code=1)


def _settings() -> Any:
    from service.settings import load_settings

    try:
        return load_settings()
    except ValueError as exc:
        raise CliError(f"bad configuration: {exc}") from exc


def _write_json(path: Path, data: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- serve / migrate / token ------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Migrate the database, start Ray (local unless RAY_ADDRESS) and serve the API and pages."""
    with _friendly():
        import uvicorn

        from service.app import create_app
        from service.db import redact_url

        settings = _settings()
        application = create_app(settings)
        tokens = application.state.tokens
        out.print(f"database  {redact_url(settings.database_url)} (migrated)", highlight=False)
        if tokens.generated_file:
            out.print(f"API token {tokens.tokens[0]}  (stored in {tokens.generated_file})", highlight=False)
        else:
            out.print(f"API tokens: {len(tokens.tokens)} from PLASTICITY_API_TOKENS", highlight=False)
        if settings.dispatcher_enabled:
            _start_ray()
        out.print(f"serving   http://{host}:{port}/  (API docs: http://{host}:{port}/docs)", highlight=False)
        sys.stdout.flush()
        uvicorn.run(application, host=host, port=port, log_level=log_level)


def _start_ray() -> None:
    """Start or join Ray in the main thread (the dispatcher retries on its own if this fails)."""
    try:
        from workers.runtime import ensure_ray, ray_info

        address = ensure_ray()
        info = ray_info()
        cpus = (info.get("resources") or {}).get("CPU")
        where = "local" if info.get("local") else "cluster"
        out.print(f"ray       {where} at {address}" + (f" ({cpus:g} CPUs)" if cpus else ""), highlight=False)
    except Exception as exc:  # noqa: BLE001
        err.print(
            f"[yellow]warning:[/] Ray is not available yet ({exc}); jobs wait until it is", highlight=False
        )


@app.command()
def migrate() -> None:
    """Apply the database migrations (upgrade head)."""
    with _friendly():
        from service.db import make_engine, redact_url
        from service.migrate import upgrade

        settings = _settings()
        engine = make_engine(settings.database_url)
        revision = upgrade(engine)
        engine.dispose()
        out.print(f"{redact_url(settings.database_url)} is at revision {revision}", highlight=False)


@app.command()
def token() -> None:
    """Print the API token (generating it on first use when PLASTICITY_API_TOKENS is unset)."""
    with _friendly():
        from service.auth import load_tokens

        tokens = load_tokens(_settings())
        if not tokens.generated_file:
            raise CliError("tokens come from PLASTICITY_API_TOKENS; nothing is stored")
        print(tokens.tokens[0])


# --- discover -------------------------------------------------------------------------------------------------
def _load_spec(spec_file: Path | None, goal: str | None) -> Any:
    from pydantic import ValidationError

    from discovery.goal import GoalError, input_dim, parse_goal
    from discovery.spec import DiscoverySpec

    if (spec_file is None) == (goal is None):
        raise CliError('give a SPEC.json file or --goal "..." (one of them)')
    if goal is not None:
        try:
            parsed = parse_goal(goal)
        except GoalError as exc:
            understood = f"\nUnderstood: {'; '.join(exc.understood)}" if exc.understood else ""
            vocab = "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.vocabulary.items())
            raise CliError(f"{exc.message}{understood}\nVocabulary — {vocab}") from exc
        for note in parsed.understood:
            out.print(f"  [dim]{note}[/]", highlight=False)
        spec = parsed.spec
    else:
        assert spec_file is not None
        try:
            text = spec_file.read_text()
        except OSError as exc:
            raise CliError(f"cannot read the spec file {spec_file}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"{spec_file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from exc
        if not isinstance(data, dict):
            raise CliError(
                f"{spec_file} must hold a JSON object (a DiscoverySpec), not {type(data).__name__}"
            )
        try:
            spec = DiscoverySpec.model_validate(data)
        except ValidationError as exc:
            lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(spec)'}: {e['msg']}" for e in exc.errors()]
            raise CliError(f"{spec_file} is not a valid spec:\n" + "\n".join(lines)) from exc
    expected = input_dim(spec.task.dataset, upsample=spec.task.upsample)
    if expected is not None and spec.network.widths[0] != expected:
        raise CliError(
            f"network.widths[0] is {spec.network.widths[0]} but data set {spec.task.dataset!r} has "
            f"{expected} inputs"
        )
    return spec


@app.command()
def discover(
    spec_file: Annotated[
        Path | None, typer.Argument(metavar="SPEC.json", help="a DiscoverySpec as JSON")
    ] = None,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="where to write the result JSON")] = Path(
        "result.json"
    ),
    goal: Annotated[str | None, typer.Option(help="a plain-language goal instead of a spec file")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="checkpoint here and resume from here")] = None,
) -> None:
    """Meta-learn a rule from a spec (no server, no Ray) and write the result JSON. Ctrl-C stops cleanly."""
    with _friendly():
        spec = _load_spec(spec_file, goal)
        run_discover = _engine()

        stop = threading.Event()
        total = spec.meta.episodes
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]meta-training[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err, transient=False) as bar:
            task = bar.add_task("discover", total=total, info="")

            def progress(event: Any) -> None:
                acc = getattr(event, "meta_accuracy", None)
                theta = getattr(event, "theta", {}) or {}
                shown = " ".join(f"{k}={v:+.2e}" for k, v in list(theta.items())[:4])
                info = (f"acc {acc:.3f} " if isinstance(acc, float) else "") + shown
                bar.update(
                    task,
                    completed=getattr(event, "episode", 0),
                    total=getattr(event, "total", total),
                    info=info,
                )

            def first_interrupt(_signum: int, _frame: Any) -> None:
                # first Ctrl-C: stop after the current episode (checkpoint + partial result); second: abort
                stop.set()
                err.print("[yellow]stopping after this episode (Ctrl-C again to abort)[/]")
                signal.signal(signal.SIGINT, signal.default_int_handler)

            previous = signal.signal(signal.SIGINT, first_interrupt)
            try:
                result = run_discover(
                    spec, progress=progress, checkpoint_dir=checkpoint_dir, should_stop=stop.is_set
                )
            except KeyboardInterrupt:
                raise CliError(
                    "interrupted"
                    + (f"; resume with --checkpoint-dir {checkpoint_dir}" if checkpoint_dir else "")
                ) from None
            finally:
                signal.signal(signal.SIGINT, previous)
        data = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
        _write_json(out_file, _finite(data))
        rule = (data or {}).get("rule") or {}
        acc = data.get("heldout_accuracy")
        ci = data.get("heldout_ci95")
        out.print(f"rule      ΔW = {rule.get('expression', '?')}", highlight=False)
        if acc is not None:
            out.print(f"held-out  {acc:.3f}" + (f" ± {ci:.3f}" if ci is not None else ""), highlight=False)
        if stop.is_set():
            out.print(
                "stopped   before the last episode: the result is partial"
                + (f"; resume with --checkpoint-dir {checkpoint_dir}" if checkpoint_dir else ""),
                highlight=False,
            )
        out.print(f"wrote     {out_file}", highlight=False)


def _engine() -> Callable[..., Any]:
    """``discovery.discover`` (the contract), or ``discovery.meta.discover`` before the package exports it."""
    import discovery

    engine = getattr(discovery, "discover", None)
    if engine is None or not callable(engine):
        from discovery.meta import discover as engine
    return engine


def _finite(value: Any) -> Any:
    from service.db import finite_json

    return finite_json(value)


# --- benchmark / suites / bench ---------------------------------------------------------------------------------
def _rule_expression(rule_id: int) -> str:
    from service.db import make_engine, make_session_factory, session_scope
    from service.migrate import upgrade
    from service.models import Rule

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        with session_scope(make_session_factory(engine)) as s:
            rule = s.get(Rule, rule_id)
            if rule is None:
                raise CliError(
                    f"rule {rule_id} does not exist in {settings.database_url.split('://')[0]} "
                    "database (PLASTICITY_DATABASE_URL / PLASTICITY_DATA_DIR)"
                )
            from service.rulebook import benchmark_text

            return benchmark_text(rule.canonical, rule.expression)  # a recurrent rule: its canonical text
    finally:
        engine.dispose()


@app.command()
def benchmark(
    suite: Annotated[str, typer.Option(help="suite name (see `plasticity suites`)")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="where to write the report JSON")] = Path(
        "benchmark.json"
    ),
    rule_id: Annotated[int | None, typer.Option(help="a stored rule's id")] = None,
    expression: Annotated[str | None, typer.Option(help='a rule expression, e.g. "-0.01*e*x.T"')] = None,
    tiny: Annotated[bool, typer.Option(help="the suite's smoke-test size")] = False,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    feedback: Annotated[
        str | None, typer.Option(help="feedback mode the rule runs with (bp, fa, dfa, sign); default per suite")
    ] = None,
    rule_only: Annotated[bool, typer.Option(help="score the rule alone (skip tuning the baselines)")] = False,
) -> None:
    """Run a named suite for a rule (or the baselines alone) and write its report JSON."""
    with _friendly():
        if rule_id is not None and expression is not None:
            raise CliError("give --rule-id or --expression, not both")
        from discovery import suites as suite_registry

        names = sorted(_suite_names())
        if suite not in names:
            raise CliError(f"unknown suite {suite!r}; known suites: {', '.join(names)}")
        if feedback is not None and feedback not in ("bp", "fa", "dfa", "sign"):
            raise CliError(f"unknown feedback mode {feedback!r}; use bp, fa, dfa or sign")
        if rule_only and rule_id is None and expression is None:
            raise CliError("--rule-only needs --rule-id or --expression")
        text = _rule_expression(rule_id) if rule_id is not None else expression
        rule = None
        if text is not None:
            from service.rulebook import InvalidRule, parse_rule

            try:
                parse_rule(text)
            except InvalidRule as exc:
                where = f" at position {exc.position}" if exc.position is not None else ""
                pointer = f"\n  {text}\n  {' ' * exc.position}^" if exc.position is not None else ""
                raise CliError(f"invalid expression{where}: {exc.message}{pointer}") from exc
            from rules.recurrent import parse_rule_text

            rule = parse_rule_text(text)  # recurrent when the text names a recurrent term (rules.recurrent)
            from service.catalog import registered_suites
            from service.rulebook import suite_rejects

            reason = suite_rejects(registered_suites().get(suite), rule.canonical())
            if reason is not None:
                raise CliError(reason)
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]}[/] {task.fields[learner]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("suite", total=None, stage=suite, learner="")

            def progress(event: dict[str, Any]) -> None:
                bar.update(
                    task,
                    completed=event.get("done", 0),
                    total=event.get("total"),
                    stage=str(event.get("stage", "")),
                    learner=str(event.get("learner", "")),
                )

            extra: dict[str, Any] = {"overrides": {"baselines": []}} if rule_only else {}
            report = suite_registry.run_suite(
                suite, rule, tiny=tiny, seed=seed, progress=progress, feedback=feedback, **extra
            )
        _write_json(out_file, _finite(report))
        if report.get("skipped"):
            out.print(f"[yellow]skipped:[/] {report['skipped']}", highlight=False)
        for entry in sorted(report.get("entries") or [], key=lambda e: -(e.get("score") or 0.0)):
            score = entry.get("score")
            half = entry.get("ci95_halfwidth")
            out.print(
                f"  {entry.get('learner', '?'):<28} {score if score is None else f'{score:.3f}'}"
                + (f" ± {half:.3f}" if half is not None else "")
                + f"  ({entry.get('kind', '')})",
                highlight=False,
                markup=False,
            )
        out.print(f"wrote {out_file}", highlight=False)


def _suite_names() -> list[str]:
    from service.catalog import registered_suites

    return list(registered_suites())


@app.command()
def suites() -> None:
    """List the benchmark suites."""
    with _friendly():
        from service.catalog import suites_payload

        payload = suites_payload()
        if not payload:
            raise CliError("no suites are registered (discovery.suites is missing)")
        for info in payload:
            title = info.get("title") or info.get("description") or ""
            out.print(f"[bold]{info['name']}[/] (v{info.get('version', '?')})  {title}", highlight=False)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def bench(ctx: typer.Context) -> None:
    """Engine throughput and memory benchmark (``discovery.bench``); extra options are passed through."""
    with _friendly():
        from discovery import bench as bench_module

        main: Callable[..., Any] = bench_module.main
        try:
            main(list(ctx.args))
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise typer.Exit(int(exc.code) if isinstance(exc.code, int) else 2) from None


# --- against a server: jobs, rules, benchmarks, leaderboard (service.client) -----------------------------------------
jobs_app = typer.Typer(help="Discovery jobs on a server (/api/jobs).", no_args_is_help=True)
rules_app = typer.Typer(help="Stored rules on a server (/api/rules).", no_args_is_help=True)
benchmarks_app = typer.Typer(help="Benchmark runs on a server (/api/benchmarks).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(rules_app, name="rules")
app.add_typer(benchmarks_app, name="benchmarks")

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
IdArg = Annotated[int, typer.Argument(min=1, help="the id")]


def _fail_line(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """One line on stderr (never wrapped), then exit ``code``."""
    from rich.text import Text

    err.print(Text.assemble(("error: ", "bold red"), " ".join(str(message).split())), soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _remote(server: str | None, token: str | None) -> Iterator[Any]:
    """A ``service.client.Client``; client errors end as one line: exit 2 (1 for a run that failed)."""
    from service.client import Client, PlasticityError, RunFailed

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
        ("θ", ", ".join(f"{k} {v:+.3e}" for k, v in theta.items() if v is not None) or "—"),
        ("held-out", held or "—"), ("rules", ", ".join(map(str, job.rule_ids)) or "—"),
        ("error", job.error or "—"), ("attempts", job.attempts), ("created", str(job.created_at)),
        ("finished", str(job.finished_at) if job.finished_at else "—"),
    ])


def _show_rule(rule: Any) -> None:
    _pairs(f"rule {rule.id}: {rule.name}", [
        ("ΔW", rule.expression), ("origin", rule.origin), ("hash", rule.hash),
        ("coefficients", ", ".join(f"{k} {v:+.4g}" for k, v in rule.coefficients.items() if v is not None)),
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
    timeout: Annotated[float | None, typer.Option(help="with --wait: give up after this many seconds")] = None,
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
    with _remote(server, token) as client:
        job = client.job(job_id)
        _print_json(job) if as_json else _show_job(job)


@jobs_app.command("cancel")
def jobs_cancel(job_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued or running job (POST /api/jobs/{id}/cancel)."""
    with _remote(server, token) as client:
        job = client.cancel(job_id)
        _print_json(job) if as_json else out.print(f"job {job.id} {job.status}", highlight=False)


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
    with _remote(server, token) as client:
        rule = client.rule(rule_id)
        _print_json(rule) if as_json else _show_rule(rule)


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
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends and print its scores")] = False,
    timeout: Annotated[float | None, typer.Option(help="with --wait: give up after this many seconds")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark a stored rule, an expression, or the baselines alone on a suite (POST /api/benchmarks)."""
    with _remote(server, token) as client:
        if rule_id is not None and expression is not None:
            raise CliError("give --rule-id or --expression, not both")
        rule = rule_id if rule_id is not None else expression
        run = client.benchmark(rule, suite, wait=False, tiny=tiny, seed=seed)
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
    with _remote(server, token) as client:
        run = client.benchmark_run(run_id)
        _print_json(run) if as_json else _show_benchmark(run)


@benchmarks_app.command("cancel")
def benchmarks_cancel(
    run_id: IdArg, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a queued or running benchmark (POST /api/benchmarks/{id}/cancel)."""
    with _remote(server, token) as client:
        run = client.cancel_benchmark(run_id)
        _print_json(run) if as_json else out.print(f"benchmark {run.id} {run.status}", highlight=False)


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


if __name__ == "__main__":
    app()
