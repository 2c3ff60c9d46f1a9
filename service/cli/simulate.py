"""``plasticity simulate``: write a ground-truth recording of a small circuit learning under a known rule (NWB or
npz; layout in docs/inference.md), with observation noise, neuron subsampling, the weights left out, or a deep
feed-forward network under feedback alignment with its per-layer errors (``--layered``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import CliError, _friendly, app, out


def parse_rule(text: str) -> dict[str, float]:
    """``"hebb=0.005, oja_decay=-0.005"`` → {term: θ}; a message (not a traceback) for anything else."""
    rule: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            theta = float(value)
        except ValueError:
            theta = math.nan
        if not sep or not name.strip() or not math.isfinite(theta):
            raise CliError(f"--rule: {part!r} is not 'term=number' (e.g. --rule 'hebb=0.005,oja_decay=-0.005')")
        rule[name.strip()] = theta
    if not rule:
        raise CliError("--rule: give at least one 'term=number'")
    return rule


@app.command()
def simulate(
    output: Annotated[Path, typer.Argument(help="file to write: .nwb or .npz")],
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    noise: Annotated[float, typer.Option(min=0.0, help="observation noise, × the std of each series")] = 0.1,
    trials: Annotated[int, typer.Option(min=1, help="trials (each from a fresh small W_0)")] = 8,
    steps: Annotated[int, typer.Option(min=3, help="time steps per trial")] = 400,
    rule: Annotated[str | None, typer.Option(help="the rule as 'term=θ,...' (default: Oja, or the S3 rule with "
                                             "--layered)")] = None,
    pre: Annotated[int, typer.Option(min=1, help="pre-synaptic neurons")] = 100,
    post: Annotated[int, typer.Option(min=1, help="post-synaptic neurons")] = 10,
    subsample_pre: Annotated[int | None, typer.Option(min=1, help="record only this many pre neurons")] = None,
    subsample_post: Annotated[int | None, typer.Option(min=1, help="record only this many post neurons")] = None,
    weights: Annotated[bool, typer.Option(help="record the weights (--no-weights: activity only)")] = True,
    layered: Annotated[bool, typer.Option(help="a depth-3 network under feedback alignment (y_ℓ, e_ℓ, W_ℓ)")] = False,
) -> None:
    """Simulate a circuit learning under a known rule and write its recording (NWB or npz)."""
    with _friendly():
        nwb = output.suffix.lower() != ".npz"
        if layered:
            from discovery.inference.errors import (
                S3_RULE,
                simulate_layered,
                write_layered_npz,
                write_layered_nwb,
            )

            rec = simulate_layered(parse_rule(rule) if rule else S3_RULE, noise=noise, n_steps=steps,
                                   n_trials=trials, seed=seed)
            path = (write_layered_nwb if nwb else write_layered_npz)(rec, output)
            out.print(f"wrote {path} (depth {rec.depth}, {rec.n_steps} steps, {trials} trials)", highlight=False)
            return
        from discovery.inference.recording import validate
        from discovery.inference.simulate import OJA, write_npz, write_nwb
        from discovery.inference.simulate import simulate as run_simulation

        sub = None
        if subsample_pre is not None or subsample_post is not None:
            sub = (subsample_pre or pre, subsample_post or post)
        try:
            sim = run_simulation(parse_rule(rule) if rule else OJA, n_pre=pre, n_post=post, noise=noise,
                                 n_trials=trials, n_steps=steps, subsample=sub, seed=seed)
        except KeyError as exc:
            raise CliError(f"--rule: {exc.args[0] if exc.args else exc}") from None
        rec = sim.recording
        if not weights:
            rec = validate(rec.pre, rec.post, None, dt=rec.dt, trial_starts=rec.trial_starts, source=rec.source)
        path = (write_nwb if nwb else write_npz)(rec, output)
        out.print(f"wrote {path} ({rec.n_steps} steps, {trials} trials, {rec.circuit.n_pre} → {rec.circuit.n_post}"
                  f"{'' if weights else ', weights not recorded'})", highlight=False)
