"""The ``transfer`` suite: a rule's fixed θ on a grid of cells (depths × data sets) beside BP and FA with their own
meta-tuned θ0, paired per cell (docs/transfer.md, docs/science.md S3).

Each baseline's θ0 is meta-tuned on every cell with the run's seed (the cache key's seed); every learner is then
scored on the same ``eval_episodes`` held-out episodes of the evaluation seed on each cell
(discovery.transfer.scoring). An entry's ``per_episode`` is its cells' values in grid order, so the generic
paired ``vs`` is the grid mean; ``metrics.cells`` holds one row per cell (score, 95 % CI, per-episode values,
diverged episodes, ``failed``), and the benchmark cache adds each cell's paired Δ = rule − baseline
(discovery.benchmarks.cache.compare_cells), which the rule page shows as a heat table.
"""

from __future__ import annotations

from typing import Any

from discovery.analysis.stats import t_interval
from discovery.benchmarks.suite import RunContext, Suite
from discovery.transfer.cells import Cell
from discovery.transfer.scoring import CellScore, TransferProtocol, score_cell, tune_theta0

#: baseline name → the feedback its F0 runs under
BASELINE_FEEDBACK = {"BP": "bp", "FA": "fa"}
#: the grid of the issue-26 table (docs/results.md)
TRANSFER_CELLS = [{"dataset": "digits28", "depth": 5}, {"dataset": "mnist5k", "depth": 3},
                  {"dataset": "mnist5k", "depth": 5}, {"dataset": "mnist5k", "depth": 7}]


def rule_terms(rule: Any) -> tuple[list[str], dict[str, float]]:
    """(term ids, θ) of a rule given as a ``rules.Rule`` (or any CoefficientRule) or an expression; every term must
    be a library term (the meta-trainer runs them). A ``LayeredRule`` gives its layered θ (profile or per-layer,
    discovery.transfer.layered), which is what then runs on each cell."""
    from rules.rule import Rule

    if isinstance(rule, str):
        rule = Rule.parse(rule)
    coefficients = dict(getattr(rule, "coefficients", {}) or {})
    custom = [k for k in coefficients if ":" in k]
    if not coefficients or custom:
        raise ValueError("the transfer suite scores rules made of library terms (GET /api/rules/terms); "
                         f"not {', '.join(custom) or 'an empty rule'}")
    theta = getattr(rule, "layered", None) or coefficients
    return list(coefficients), {k: float(v) for k, v in theta.items()}


def cell_entry(name: str, kind: str, scores: list[CellScore], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """One learner's entry: per_episode = its cells' values in grid order (the grid mean ± 95 % CI as score),
    metrics.cells = the per-cell rows."""
    values = [v for s in scores for v in s.per_episode]
    mean, lo, hi = t_interval(values)
    return {"learner": name, "kind": kind, "score": mean, "ci95": [lo, hi], "episodes": len(values),
            "per_episode": values, "hyperparameters": hyperparameters,
            "locality": "weight transport" if name == "BP" else "global error",
            "metrics": {"cells": [s.model_dump() for s in scores],
                        "diverged_episodes": sum(s.diverged for s in scores),
                        "failed_cells": [s.cell for s in scores if s.failed]}}


def transfer_runner(suite: Suite, ctx: RunContext) -> dict[str, Any]:
    """Tune each baseline's θ0 per cell (seed ``ctx.seed``) and score it; score the rule's fixed θ on every cell."""
    protocol = TransferProtocol.model_validate({**suite.protocol, **suite.data,
                                                "rule_feedback": suite.network.get("rule_feedback", "fa")})
    cells = [Cell.model_validate(c) for c in suite.network["cells"]]
    n = len(cells)
    entries: list[dict[str, Any]] = []
    for name in suite.baselines:
        fb = BASELINE_FEEDBACK[name]
        scores = []
        for i, cell in enumerate(cells):
            ctx.emit({"stage": "tune", "learner": name, "config": cell.label, "done": i, "total": n})
            theta = tune_theta0(cell, fb, protocol, ctx.seed)
            scores.append(score_cell(cell, ["F0"], theta, protocol, feedback=fb))
        ctx.emit({"stage": "score", "learner": name, "done": n, "total": n})
        entries.append(cell_entry(name, "baseline", scores, {"feedback": fb, "theta0": {
            s.cell: s.theta.get("F0") for s in scores}, "tune_seed": ctx.seed}))
    if ctx.rule is not None:
        terms, theta = rule_terms(ctx.rule)
        fb = ctx.feedback or protocol.rule_feedback
        scores = []
        for i, cell in enumerate(cells):
            ctx.emit({"stage": "score", "learner": "rule", "config": cell.label, "done": i, "total": n})
            scores.append(score_cell(cell, terms, theta, protocol, feedback=fb))
        entries.append(cell_entry(str(getattr(ctx.rule, "name", None) or "rule"), "rule", scores,
                                  {"feedback": fb, "theta": theta}))
    labels = "; ".join(f"{c.label} ({c.role})" for c in cells)
    return {"entries": entries, "protocol": f"{suite.describe()} Cells: {labels}."}


_TEXT = ("Transfer: the rule's θ fixed, scored on {protocol[eval_episodes]} held-out episodes (evaluation seed "
         "{protocol[eval_seed]}) of every cell of the grid (network.cells), {data[ways]}-way {data[shots]}-shot, "
         "{data[queries]} queries, held-out fraction {data[heldout_fraction]}, under '{network[rule_feedback]}' "
         "feedback; BP and FA with their own θ0 meta-tuned per cell ({protocol[tune_episodes]} one-episode Adam "
         "steps, lr {protocol[tune_lr]}, the run's seed); Δ = rule − baseline paired per cell, 95 % t-interval.")


def transfer_suite(cells: list[dict[str, Any]] | None = None) -> Suite:
    """The registered ``transfer`` suite (the issue-26 grid by default)."""
    grid = list(cells or TRANSFER_CELLS)
    return Suite(
        name="transfer", version="1.0", kind="transfer-grid", runner=transfer_runner,
        title="Transfer: a rule's fixed θ across depths and data sets, beside BP and FA tuned per cell",
        description="A learning rule should work where it was not tuned: its θ is fixed and scored on every cell "
                    "of a grid; BP and FA get their own meta-tuned θ0 on each cell (docs/transfer.md).",
        network={"cells": grid, "rule_feedback": "fa"},
        data={"ways": 5, "shots": 50, "queries": 10, "heldout_fraction": 0.4},
        protocol={"eval_episodes": 100, "eval_seed": 7, "tune_episodes": 600, "tune_lr": 1e-3, "theta0": 1e-3,
                  "term_scale": "norm", "dtype": "float32"},
        metrics=["accuracy", "ci95", "cells", "diverged_episodes", "failed_cells"],
        baselines=["BP", "FA"],
        tiny={"network": {"cells": [{"dataset": "digits", "widths": [64, 16, 10]},
                                    {"dataset": "digits", "widths": [64, 16, 12, 10]}]},
              "data": {"shots": 5, "queries": 3},
              "protocol": {"eval_episodes": 4, "tune_episodes": 3}},
        protocol_text=_TEXT,
    )
