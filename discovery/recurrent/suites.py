"""Benchmark suites of the recurrent fixed-point systems (docs/science.md S2), registered by discovery.benchmarks.registry.

- ``fixedpoint-linear``: N = 200, m = 100, full batch, loss J = (1/m)‖A X − R̂‖²_F after T iterations of each rule
  (dW1 Euclidean, dW2 reparameterized exact, dW3 linearized) over the published η grid; the score is the final
  log10 J per rule at its best η (lower is better), with the whole curve grid in the metrics.
- ``fixedpoint-mnist``: N = 300 tanh units on mnist5k, scored by discovery.recurrent.scoring (test accuracy and
  spectral abscissa max Re λ(W)).
"""

from __future__ import annotations

import math
from typing import Any

from discovery.benchmarks.suite import Suite
from discovery.recurrent.network import RHO_INIT, load_mnist5k_split
from discovery.recurrent.scoring import (
    SCORE_PROTOCOL,
    SUITE_BASELINES,
    as_recurrent_rule,
    score_recurrent_rule,
)
from discovery.recurrent.trainer import KIND

LINEAR_RULES = ("dW1", "dW2", "dW3")


def linear_suite_runner(suite: Suite, ctx: Any) -> dict:
    """Every rule over the η grid on the same task; entry per rule at its best η (score = final log10 J)."""
    from discovery.recurrent.fixedpoint import run_fixedpoint_linear

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
            "learner": rule, "kind": "baseline", "score": score, "ci95": None, "ci95_halfwidth": None,
            "episodes": 1, "locality": "global error",
            "metrics": {"final_loss": final, "loss_at": checkpoints, "best_eta": best_eta},
            "cost_per_sample_ms": None, "hyperparameters": {"eta": best_eta}, "tuning": None,
        })
    notes = [("score = log10 of the final loss J at the best η (lower is better); the suite scores the published "
              "rules only")]
    if ctx.rule is not None:
        notes.append("this suite scores the published rules dW1, dW2, dW3 only; the given rule was not run")
    return {"entries": entries, "notes": notes}


def linear_suite() -> Suite:
    return Suite(
        name="fixedpoint-linear", version="1", kind="fixed-point", metric="log10 final loss J",
        higher_is_better=False, rule_family=None,
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


def fixedpoint_suite_runner(suite: Any, ctx: Any) -> dict[str, Any]:
    """discovery.benchmarks.registry runner: the suite's baselines (SUITE_BASELINES) and ctx.rule (anything
    ``as_recurrent_rule`` reads), all scored by ``score_recurrent_rule`` on the same seeds (paired)."""
    proto = {**suite.network, **suite.data, **suite.protocol}
    proto = {k: proto[k] for k in SCORE_PROTOCOL["full"] if k in proto}
    data = load_mnist5k_split()
    jobs: list[tuple[str, str, Any]] = [(b, "baseline", SUITE_BASELINES[b]) for b in suite.baselines]
    notes: list[str] = []
    if ctx.rule is not None:
        try:
            jobs.append(("rule", "rule", as_recurrent_rule(ctx.rule)))
        except (ValueError, TypeError, KeyError) as exc:  # a feedforward rule has no recurrent reading
            notes.append(f"the given rule is not a recurrent rule and was not scored: {exc}")
    entries = []
    for k, (name, kind, rule) in enumerate(jobs):
        ctx.emit({"stage": "score", "learner": name, "done": k, "total": len(jobs)})
        entries.append(score_recurrent_rule(rule, seed=ctx.seed, data=data, protocol=proto, device=ctx.device,
                                            learner=name if kind == "baseline" else None, kind=kind))
    return {"entries": entries, "notes": notes}


def fixedpoint_mnist_suite() -> Any:
    """The ``fixedpoint-mnist`` Suite (not registered here: ``register_suite(fixedpoint_mnist_suite())``)."""
    full, tiny = SCORE_PROTOCOL["full"], SCORE_PROTOCOL["tiny"]
    return Suite(
        name=KIND, version="1", kind="recurrent-fixedpoint", metric="test accuracy", rule_family="recurrent",
        title="Fixed-point RNN on MNIST (S2)",
        description="Learning the recurrent weights of a tanh fixed-point network r = tanh(W r + W_x x) on mnist5k.",
        network={"N": full["N"], "activation": "tanh", "rho_init": RHO_INIT},
        data={"dataset": "mnist5k", "n_train": full["n_train"], "n_test": full["n_test"]},
        protocol={"batch": full["batch"], "epochs": full["epochs"], "episodes": full["episodes"]},
        metrics=["test_accuracy", "spectral_abscissa", "max_spectral_abscissa", "failures"],
        baselines=list(SUITE_BASELINES),
        tiny={"network": {"N": tiny["N"]}, "data": {"n_train": tiny["n_train"], "n_test": tiny["n_test"]},
              "protocol": {"batch": tiny["batch"], "epochs": tiny["epochs"], "episodes": tiny["episodes"]}},
        protocol_text=(
            "S2 fixed-point RNN: {network[N]} tanh units, r = tanh(W r + W_x x) solved by Anderson iteration, fixed "
            "W_x ~ N(0, 1/784) and readout R ~ N(0, 1/N), W₀ with spectral radius {network[rho_init]}; only W "
            "learns, by ΔW = Σ θ_k F_k (batch-averaged) over {protocol[epochs]} epochs of minibatches of "
            "{protocol[batch]} mnist5k training images (4,000; n_train={data[n_train]}). Score = test accuracy on "
            "the 1,000 mnist5k test images (n_test={data[n_test]}), mean ± 95% t-interval over {protocol[episodes]} "
            "episodes (fresh W₀, W_x, R, order; seeded as discovery.recurrent.fixedpoint.run_fixedpoint_mnist). Baselines: "
            "the paper's dW1 / dW3 / dW4 at their published learning rates .01 / .25 / .1 (no tuning). A lost "
            "fixed point scores 0. Diagnostics: spectral abscissa max Re λ(W) at the end and its maximum."),
        runner=fixedpoint_suite_runner,
    )
