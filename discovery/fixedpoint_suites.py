"""Benchmark suites of the recurrent fixed-point systems (SCIENCE.md S2), registered on import.

- ``fixedpoint-linear``: N = 200, m = 100, full batch, loss J = (1/m)‖A X − R̂‖²_F after T iterations of each rule
  (dW1 Euclidean, dW2 reparameterized exact, dW3 linearized) over the published η grid; the score is the final
  log10 J per rule at its best η (lower is better), with the whole curve grid in the metrics.
- ``fixedpoint-mnist``: N = 300 tanh units on mnist5k; defined in discovery.recurrent_discovery (test accuracy and
  spectral abscissa max Re λ(W)).
"""

from __future__ import annotations

import math
from typing import Any

from discovery.suites import Suite, register_suite

LINEAR_RULES = ("dW1", "dW2", "dW3")


def linear_suite_runner(suite: Suite, ctx: Any) -> dict:
    """Every rule over the η grid on the same task; entry per rule at its best η (score = final log10 J)."""
    from discovery.fixedpoint import run_fixedpoint_linear

    p = {**suite.network, **suite.protocol}
    entries = []
    for k, rule in enumerate(LINEAR_RULES):
        ctx.emit({"stage": "score", "learner": rule, "done": k, "total": len(LINEAR_RULES)})
        curves = {float(eta): [float(v) for v in run_fixedpoint_linear(
            rule, float(eta), iterations=int(p["iterations"]), N=int(p["N"]), m=int(p["m"]),
            seed=int(ctx.seed)).reshape(-1)] for eta in p["etas"]}
        final = {eta: c[-1] for eta, c in curves.items()}
        best_eta = min(final, key=lambda e: final[e] if math.isfinite(final[e]) else math.inf)
        checkpoints = {str(i): {str(eta): c[min(i, len(c) - 1)] for eta, c in curves.items()}
                       for i in p["checkpoints"]}
        score = math.log10(max(final[best_eta], 1e-300))
        entries.append({
            "learner": rule, "kind": "baseline", "score": score, "ci95": [score, score], "ci95_halfwidth": 0.0,
            "episodes": 1, "locality": "global error",
            "metrics": {"lower_is_better": True, "final_loss": final, "loss_at": checkpoints, "best_eta": best_eta},
            "cost_per_sample_ms": None, "hyperparameters": {"eta": best_eta}, "tuning": None,
        })
    notes = [("score = log10 of the final loss J at the best η (lower is better); the suite scores the published "
              "rules only")]
    if ctx.rule is not None:
        notes.append("this suite scores the published rules dW1, dW2, dW3 only; the given rule was not run")
    return {"entries": entries, "notes": notes}


def linear_suite() -> Suite:
    return Suite(
        name="fixedpoint-linear", version="1", kind="fixed-point",
        title="Learning fixed points of a linear recurrent network (S2)",
        description="r = W r + X, N = 200, m = 100 samples, full-batch; Euclidean gradient vs reparameterized rules.",
        network={"N": 200, "activation": "linear", "rho_target": 0.5, "rho_init": 0.75},
        data={"m": 100, "sigma_x": 0.1, "noise": 0.01},
        protocol={"N": 200, "m": 100, "iterations": 3500, "etas": [0.03, 0.1, 0.3, 1.0, 3.0],
                  "checkpoints": [600, 1800, 3500]},
        metrics=["final_loss", "loss_at", "best_eta"],
        baselines=list(LINEAR_RULES),
        tiny={"protocol": {"N": 20, "m": 10, "iterations": 60, "etas": [0.3, 1.0], "checkpoints": [30, 60]}},
        protocol_text=("S2 linear task, N={protocol[N]}, m={protocol[m]}, {protocol[iterations]} full-batch "
                       "iterations per η in {protocol[etas]}; score = log10 J at the best η (lower is better)."),
        runner=linear_suite_runner,
    )


def _register() -> None:
    register_suite(linear_suite())
    from discovery.recurrent_discovery import fixedpoint_mnist_suite

    register_suite(fixedpoint_mnist_suite())


_register()
