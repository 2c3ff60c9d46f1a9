"""Benchmark suites of the recurrent fixed-point systems (docs/science.md S2), registered by discovery.benchmarks.registry.

- ``fixedpoint-linear``: N = 200, m = 100, full batch, loss J = (1/m)‖A X − R̂‖²_F after T iterations of each rule
  (dW1 Euclidean, dW2 reparameterized exact, dW3 linearized) over the published η grid; the score is the final
  log10 J per rule at its best η (lower is better), with the whole curve grid in the metrics; a given recurrent
  rule runs over the same η grid (its θ normalized to max |θ| = 1) and is scored the same way.
- ``fixedpoint-mnist``: N = 300 tanh units on mnist5k, scored by discovery.recurrent.scoring (test accuracy and
  spectral abscissa max Re λ(W)); the published rules and a given recurrent rule (any stored one, generated library
  terms included) each get their step c·θ tuned on the same grid on a validation split before scoring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from discovery.benchmarks.suite import Suite
from discovery.recurrent.network import RHO_INIT, load_mnist5k_split
from discovery.recurrent.scoring import (
    ETA_SCALES,
    SCORE_PROTOCOL,
    SUITE_BASELINES,
    as_recurrent_rule,
    recurrent_locality,
    tune_and_score,
)
from discovery.recurrent.trainer import KIND
from rules.recurrent import CANONICAL_PREFIX, RecurrentRule, parse_rule_text

LINEAR_RULES = ("dW1", "dW2", "dW3")


def read_recurrent_rule(rule: Any) -> RecurrentRule:
    """A recurrent rule from what a benchmark is given: a RecurrentRule, a stored rule dict, {id: θ}, the canonical
    text or a user text ('0.1*dW3 - 0.01*decay'); ValueError / TypeError for a feedforward rule."""
    if isinstance(rule, str) and not rule.lstrip().startswith(CANONICAL_PREFIX):
        parsed = parse_rule_text(rule)
        if not isinstance(parsed, RecurrentRule):
            raise ValueError(f"{rule!r} is a feedforward rule")
        return parsed
    return as_recurrent_rule(rule)


def run_rule_linear(rule: RecurrentRule, etas: Sequence[float], *, iterations: int, N: int, m: int, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The loss curves J_0..J_T (len(etas), T+1) of a recurrent rule on the S2 linear task (G = I, r = A X).

    Every term is the rule's compiled sympy form (rules.recurrent_compiler) evaluated on the m samples as a batch,
    δ_b = ∂‖r_b − r̂_b‖²/∂r_b = 2 (r_b − r̂_b) (so batch-averaged terms are gradients of J = (1/m)‖A X − R̂‖²_F:
    rec_dW1 = −∇_W J exactly, rec_dW3 = −A⁻¹ ∇_A J A⁻¹). The rule's shape is kept and its size set by η, as for
    the published rules: W ← W + η Σ_k (θ_k / max|θ|) F_k, η over the suite's grid. A run whose loss becomes
    non-finite keeps NaN from then on."""
    from discovery.recurrent.fixedpoint import make_linear_task
    from discovery.recurrent.network import compiled_term

    ids = list(rule.terms)
    scale = max((abs(rule.coefficients[t]) for t in ids), default=0.0) or 1.0
    theta = [rule.coefficients[t] / scale for t in ids]
    terms = [compiled_term(t) for t in ids]
    task = make_linear_task(N, m, seed, dtype=dtype)
    X, R_hat = task.X, task.R_hat
    E = len(etas)
    eta = torch.tensor([float(e) for e in etas], dtype=dtype).view(-1, 1, 1)
    W = task.W_init.expand(E, N, N).clone()
    eye = torch.eye(N, dtype=dtype)
    losses = torch.full((E, iterations + 1), math.nan, dtype=dtype)
    for k in range(iterations + 1):
        LU, piv, _ = torch.linalg.lu_factor_ex(eye - W)
        R = torch.linalg.lu_solve(LU, piv, X.expand(E, N, m))             # columns r_b = A x_b
        D = R - R_hat
        J = (D ** 2).sum((-1, -2)) / m
        losses[:, k] = J
        if k == iterations or not torch.isfinite(J).any():
            break
        env = {"W": W, "r": R.transpose(-1, -2), "delta": 2.0 * D.transpose(-1, -2),
               "g": torch.ones(E, m, N, dtype=dtype)}
        if any(t.needs_adjoint for t in terms):                           # u = δ + Wᵀ u (G = I)
            env["u"] = torch.linalg.lu_solve(LU, piv, 2.0 * D, adjoint=True).transpose(-1, -2)
        update = sum(th * t(env) for th, t in zip(theta, terms, strict=True))
        W = W + eta * update
    return losses.masked_fill(torch.cumsum((~torch.isfinite(losses)).to(torch.int64), -1) > 0, math.nan)


def _linear_entry(learner: str, kind: str, curves: dict[float, list[float]], checkpoints: Sequence[int],
                  locality: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A suite entry at the best η of the curves (score = log10 of the final loss J)."""
    final = {eta: c[-1] for eta, c in curves.items()}
    best_eta = min(final, key=lambda e: final[e] if math.isfinite(final[e]) else math.inf)
    loss_at = {str(i): {str(eta): c[min(i, len(c) - 1)] for eta, c in curves.items()} for i in checkpoints}
    return {
        "learner": learner, "kind": kind, "score": math.log10(max(final[best_eta], 1e-300)), "ci95": None,
        "ci95_halfwidth": None, "episodes": 1, "locality": locality,
        "metrics": {"final_loss": final, "loss_at": loss_at, "best_eta": best_eta},
        "cost_per_sample_ms": None, "hyperparameters": {"eta": best_eta, **(extra or {})}, "tuning": None,
        **({"rule": extra["rule"]} if extra and "rule" in extra else {}),
    }


def linear_suite_runner(suite: Suite, ctx: Any) -> dict:
    """The suite's published rules and the given recurrent rule (if any), each over the same η grid on the same
    task; one entry per learner at its best η (score = final log10 J)."""
    from discovery.recurrent.fixedpoint import run_fixedpoint_linear

    p = {**suite.network, **suite.protocol}
    size = {"iterations": int(p["iterations"]), "N": int(p["N"]), "m": int(p["m"])}
    etas = [float(e) for e in p["etas"]]
    published = [r for r in LINEAR_RULES if r in suite.baselines]
    notes = [("score = log10 of the final loss J at the best η (lower is better); a given recurrent rule runs with "
              "its θ normalized to max |θ| = 1 and η over the same grid as the published rules")]
    rule = None
    if ctx.rule is not None:
        try:
            rule = read_recurrent_rule(ctx.rule)
        except (ValueError, TypeError, KeyError) as exc:
            notes.append(f"the given rule is not a recurrent rule and was not scored: {exc}")
    total = len(published) + (rule is not None)
    entries = []
    for k, name in enumerate(published):
        ctx.emit({"stage": "score", "learner": name, "done": k, "total": total})
        curves = {eta: [float(v) for v in run_fixedpoint_linear(name, eta, seed=int(ctx.seed), **size).reshape(-1)]
                  for eta in etas}
        entries.append(_linear_entry(name, "baseline", curves, p["checkpoints"], "global error"))
    if rule is not None:
        ctx.emit({"stage": "score", "learner": "rule", "done": len(published), "total": total})
        run = run_rule_linear(rule, etas, seed=int(ctx.seed), **size)
        curves = {eta: [float(v) for v in run[i]] for i, eta in enumerate(etas)}
        entries.append(_linear_entry(rule.name or "rule", "rule", curves, p["checkpoints"],
                                     recurrent_locality(rule),
                                     {"coefficients": rule.coefficients, "rule": rule.to_dict()}))
    return {"entries": entries, "notes": notes}


def linear_suite() -> Suite:
    return Suite(
        name="fixedpoint-linear", version="1", kind="fixed-point", metric="log10 final loss J",
        higher_is_better=False, rule_family="recurrent",
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
    everything = {**suite.network, **suite.data, **suite.protocol}
    proto = {k: everything[k] for k in SCORE_PROTOCOL["full"] if k in everything}
    scales = [float(c) for c in everything.get("eta_scales", [1.0])]
    tune_episodes = int(everything.get("tune_episodes", 1))
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
        entries.append(tune_and_score(rule, scales=scales, tune_episodes=tune_episodes, seed=ctx.seed, data=data,
                                      protocol=proto, device=ctx.device,
                                      learner=name if kind == "baseline" else None, kind=kind))
    notes.append(f"η tuned the same way for every learner: ΔW = c·Σ θ_k F_k, c ∈ {scales} chosen on a validation "
                 f"split of the training images ({tune_episodes} episode(s) per c), then scored on the test images")
    return {"entries": entries, "notes": notes}


def fixedpoint_mnist_suite() -> Any:
    """The ``fixedpoint-mnist`` Suite (not registered here: ``register_suite(fixedpoint_mnist_suite())``)."""
    full, tiny = SCORE_PROTOCOL["full"], SCORE_PROTOCOL["tiny"]
    return Suite(
        name=KIND, version="2", kind="recurrent-fixedpoint", metric="test accuracy", rule_family="recurrent",
        title="Fixed-point RNN on MNIST (S2)",
        description="Learning the recurrent weights of a tanh fixed-point network r = tanh(W r + W_x x) on mnist5k.",
        network={"N": full["N"], "activation": "tanh", "rho_init": RHO_INIT},
        data={"dataset": "mnist5k", "n_train": full["n_train"], "n_test": full["n_test"]},
        protocol={"batch": full["batch"], "epochs": full["epochs"], "episodes": full["episodes"],
                  "eta_scales": ETA_SCALES["full"], "tune_episodes": 1},
        metrics=["test_accuracy", "spectral_abscissa", "max_spectral_abscissa", "failures"],
        baselines=list(SUITE_BASELINES),
        tiny={"network": {"N": tiny["N"]}, "data": {"n_train": tiny["n_train"], "n_test": tiny["n_test"]},
              "protocol": {"batch": tiny["batch"], "epochs": tiny["epochs"], "episodes": tiny["episodes"],
                           "eta_scales": ETA_SCALES["tiny"]}},
        protocol_text=(
            "S2 fixed-point RNN: {network[N]} tanh units, r = tanh(W r + W_x x) solved by Anderson iteration, fixed "
            "W_x ~ N(0, 1/784) and readout R ~ N(0, 1/N), W₀ with spectral radius {network[rho_init]}; only W "
            "learns, by ΔW = Σ θ_k F_k (batch-averaged) over {protocol[epochs]} epochs of minibatches of "
            "{protocol[batch]} mnist5k training images (4,000; n_train={data[n_train]}). Score = test accuracy on "
            "the 1,000 mnist5k test images (n_test={data[n_test]}), mean ± 95% t-interval over {protocol[episodes]} "
            "episodes (fresh W₀, W_x, R, order; seeded as discovery.recurrent.fixedpoint.run_fixedpoint_mnist). Baselines: "
            "the paper's dW1 / dW3 / dW4 from their published learning rates .01 / .25 / .1. Every learner, a "
            "given rule included, has its step tuned the same way: ΔW = c·Σ θ_k F_k with c in {protocol[eta_scales]} "
            "chosen on a validation split (the last quarter of the training images, {protocol[tune_episodes]} "
            "episode(s) per c), then scored. A lost fixed point scores 0. Diagnostics: spectral abscissa max Re λ(W) "
            "at the end and its maximum."),
        runner=fixedpoint_suite_runner,
    )
