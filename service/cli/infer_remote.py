"""``plasticity recordings upload|list`` and ``plasticity infer`` against a server (docs/inference.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.common import app, out
from service.cli.remote import IdArg, JsonOpt, ServerOpt, TokenOpt, _answer, _print_json, _remote, _table
from service.client import inference as calls

recordings_app = typer.Typer(help="Recordings for rule inference on a server (/api/recordings).",
                             no_args_is_help=True)
app.add_typer(recordings_app, name="recordings")


def _show_recording(r: Any) -> None:
    out.print(f"recording {r.id} {r.name!r}: {r.kind} {'→'.join(map(str, r.widths))}, {r.n_steps} steps, "
              f"{r.n_trials} trials, weights {'observed' if r.weights_observed else 'not observed'}, "
              f"sha256 {r.sha256[:12]}", highlight=False)


@recordings_app.command("upload")
def recordings_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="NWB or .npz recording")],
    name: Annotated[str | None, typer.Option(help="default: the file's name")] = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Upload a recording (POST /api/recordings)."""
    _answer(server, token, as_json, lambda client: calls.upload_recording(client, file, name), _show_recording)


@recordings_app.command("list")
def recordings_list(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Uploaded recordings, newest first (GET /api/recordings)."""
    with _remote(server, token) as client:
        rows = calls.recordings(client)
        if as_json:
            _print_json(rows)
            return
        _table("recordings", ["id", "name", "kind", "widths", "steps", "trials", "weights", "sha256"], [
            [r.id, r.name, r.kind, "→".join(map(str, r.widths)), r.n_steps, r.n_trials, r.weights_observed,
             r.sha256[:12]] for r in rows])


def _show_inference(i: Any) -> None:
    theta = ", ".join(f"{k} {v:+.4g}" for k, v in (i.theta or {}).items())
    ev = f", held-out EV {i.heldout_explained_variance:.3f}" if i.heldout_explained_variance is not None else ""
    out.print(f"inference {i.id} {i.status}" + (f": rule {i.rule_id} ({theta}){ev}" if i.rule_id else "")
              + (f" — {i.error}" if i.error else ""), highlight=False)
    for w in i.warnings:
        out.print(f"  warning: {w}", highlight=False)


@app.command("infer")
def infer_cmd(
    recording_id: IdArg,
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    bootstrap: Annotated[int, typer.Option(min=0, max=2000, help="bootstrap resamples")] = 200,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Infer the plasticity rule behind an uploaded recording (POST /api/inferences)."""
    def fetch(client: Any) -> Any:
        started = calls.infer(client, recording_id, n_bootstrap=bootstrap)
        return calls.wait_inference(client, started.id) if wait else started

    _answer(server, token, as_json, fetch, _show_inference)
