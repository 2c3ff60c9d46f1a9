"""The ``plasticity`` command line (typer app ``app``): serve, migrate, discover, benchmark, bench, suites, token,
simulate; and, against a running server (built on ``service.client.http``): jobs, rules, benchmarks, leaderboard.

Every failure a user can cause (a missing or invalid spec file, an unknown suite, a bad expression, an unknown
rule id) ends with a one-paragraph message on stderr and exit code 2; unexpected errors exit 1, also without a
traceback (``PLASTICITY_DEBUG=1`` shows it).
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from discovery.results import jsonable
from service.cli.common import (
    CliError,
    _friendly,
    _settings,
    _write_json,
    app,
    err,
    out,
)


# --- serve / migrate / token ------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes behind the port (one dispatcher "
                                         "is active among them; docs/operations.md)")] = 1,
) -> None:
    """Migrate the database, start Ray (local unless RAY_ADDRESS) and serve the API and pages."""
    with _friendly():
        import uvicorn

        from service.app import create_app
        from service.db.session import redact_url

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
        if workers > 1:  # each process builds its app from the environment; one of them holds the dispatch lease
            uvicorn.run("service.app:create_app", factory=True, host=host, port=port, log_level=log_level,
                        workers=workers)
        else:
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
        from service.db.migrate import upgrade
        from service.db.session import make_engine, redact_url

        settings = _settings()
        engine = make_engine(settings.database_url)
        revision = upgrade(engine)
        engine.dispose()
        out.print(f"{redact_url(settings.database_url)} is at revision {revision}", highlight=False)


@app.command()
def token() -> None:
    """Print the API token (generating it on first use when PLASTICITY_API_TOKENS is unset)."""
    with _friendly():
        from service.api.auth import load_tokens

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
        _write_json(out_file, jsonable(data))
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
    """``discovery.router.discover``, the engine's one entry point."""
    from discovery.router import discover

    return discover


# --- benchmark / suites / bench ---------------------------------------------------------------------------------
def _rule_expression(rule_id: int) -> str:
    from service.db.migrate import upgrade
    from service.db.models import Rule
    from service.db.session import make_engine, make_session_factory, session_scope

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
    retune: Annotated[bool, typer.Option(help="tune the baselines again instead of using the suite's cache")] = False,
) -> None:
    """Run a named suite for a rule (or the baselines alone) and write its report JSON."""
    with _friendly():
        if rule_id is not None and expression is not None:
            raise CliError("give --rule-id or --expression, not both")
        from discovery.benchmarks import registry as suite_registry

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

            reason = suite_rejects(registered_suites().get(suite), rule.FAMILY)
            if reason is not None:
                raise CliError(reason)
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]}[/] {task.fields[learner]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}% {task.fields[info]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("suite", total=1000, stage=suite, learner="", info="")

            def progress(event: Any) -> None:  # a discovery.benchmarks.progress.BenchmarkProgress (or its dump)
                if hasattr(event, "model_dump"):   # --rule-only hands the model itself (ProgressTracker)
                    event = event.model_dump()
                left = event.get("remaining")
                where = f" {event.get('episode')}/{event.get('total')}" if event.get("total") else ""
                bar.update(
                    task,
                    completed=round(1000 * float(event.get("fraction") or 0.0)),
                    stage=str(event.get("phase", "")),
                    learner=f"{event.get('learner') or ''} ({event.get('learner_index')}/{event.get('learners')})",
                    info=where + (f" · ~{left:.0f} s left" if left is not None else ""),
                )

            if rule_only:
                from discovery.benchmarks.progress import ProgressTracker

                tracker = ProgressTracker(progress, ["rule"], baselines="cached")
                report = suite_registry.run_suite(suite, rule, tiny=tiny, seed=seed, progress=tracker.on_suite_event,
                                                  feedback=feedback, overrides={"baselines": []})
            else:  # the baselines from the suite's cache in the database (tuned and stored on a miss)
                from service.db.repositories.baselines import local_benchmark

                report = local_benchmark(_settings().database_url, suite, rule, tiny=tiny, seed=seed, retune=retune,
                                         progress=progress, feedback=feedback)
        _write_json(out_file, jsonable(report))
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
        from service.web.render import vs_delta

        for name, v in (report.get("vs") or {}).items():  # the rule − each baseline, paired on the same episodes
            lo, hi = v["ci95"]
            out.print(f"  rule vs {name:<20} {vs_delta(v['delta'], report.get('metric'))} "
                      f"[{lo:+.3f}, {hi:+.3f}] {v['verdict']}", highlight=False, markup=False)
        if report.get("baselines"):
            out.print(f"baselines: {report['baselines']}", highlight=False)
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
            raise CliError("no suites are registered (discovery.benchmarks.registry is missing)")
        for info in payload:
            title = info.get("title") or info.get("description") or ""
            out.print(f"[bold]{info['name']}[/] (v{info.get('version', '?')})  {title}", highlight=False)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def bench(ctx: typer.Context) -> None:
    """Engine throughput and memory benchmark (``discovery.benchmarks.speed``); extra options are passed through."""
    with _friendly():
        from discovery.benchmarks import speed as bench_module

        main: Callable[..., Any] = bench_module.main
        try:
            main(list(ctx.args))
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise typer.Exit(int(exc.code) if isinstance(exc.code, int) else 2) from None


# the commands against a server register themselves on the same app
import service.cli.infer_remote  # `plasticity recordings`, `plasticity infer` (docs/inference.md)
import service.cli.remote
import service.cli.simulate  # noqa: F401  (`plasticity simulate`, docs/inference.md)

if __name__ == "__main__":
    app()
