"""What every ``plasticity`` command shares: the typer app, the consoles, and the turning of failures into one
message and an exit code (see service.cli.main)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

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
