"""Scoring of recurrent fixed-point rules on fixedpoint-mnist (docs/science.md S2): the protocol, the paper's baselines as
recurrent rules, and ``score_recurrent_rule`` (one suite entry, mean ± 95% t-interval over episodes)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from discovery.recurrent.fixedpoint import random_matrix, spectral_abscissa
from discovery.recurrent import network as fp
from discovery.recurrent.network import FixedPointError, FixedPointNet, MnistData, SolverConfig
from discovery.recurrent.trainer import record_accuracy
from rules.recurrent import RecurrentRule

SCORE_PROTOCOL: dict[str, dict[str, Any]] = {
    "full": {"N": 300, "batch": 512, "epochs": 3, "episodes": 5, "n_train": None, "n_test": None},
    "tiny": {"N": 32, "batch": 64, "epochs": 1, "episodes": 2, "n_train": 512, "n_test": 256},
}
ETA_SCALES: dict[str, list[float]] = {"full": [0.25, 0.5, 1.0, 2.0, 4.0], "tiny": [0.5, 1.0, 2.0]}
"""The η grid of fixedpoint-mnist, the same for every learner: ΔW = c · Σ θ_k F_k for c in the grid (c = 1: the
published learning rate of a baseline, the learned θ of a rule), c chosen on a validation split."""
VALIDATION_FRACTION = 0.25
TUNE_SEED = 500_000   # tuning episodes are seeded apart from the scoring episodes'

"""S2 MNIST protocol on mnist5k (4,000 train / 1,000 test): SGD epochs over the training images in minibatches,
fresh (W₀, W_x, R, order) per episode seeded exactly as discovery.recurrent.fixedpoint.run_fixedpoint_mnist(seed=...)."""

SUITE_BASELINES: dict[str, dict[str, float]] = {"dW1": {"rec_dW1": 0.01}, "dW3": {"rec_dW3": 0.25},
                                                "dW4": {"rec_dW4": 0.1}}
"""The paper's three MNIST learners at their published learning rates, as recurrent rules."""


def recurrent_locality(rule: RecurrentRule) -> str:
    """'local' when only Oja / decay are used, else 'weight transport' (the dW terms multiply δ by W and Wᵀ)."""
    return "local" if set(rule.terms) <= {"rec_oja", "rec_decay"} else "weight transport"


def as_recurrent_rule(rule: Any) -> RecurrentRule:
    """A RecurrentRule from a RecurrentRule, a stored rule dict ({coefficients, name, ...}), a plain {id: θ}
    mapping, or the canonical text 'recurrent/v1: …' (TypeError / ValueError otherwise)."""
    if isinstance(rule, RecurrentRule):
        return rule
    if isinstance(rule, str):
        return RecurrentRule.from_canonical(rule)
    if isinstance(rule, Mapping):
        if "coefficients" in rule:
            return RecurrentRule.from_dict(rule)
        return RecurrentRule(rule)
    raise TypeError(f"cannot read a recurrent rule from {type(rule).__name__}")


def score_recurrent_rule(coefficients: Mapping[str, float] | RecurrentRule | str, *, tiny: bool = False,
                         seed: int = 0, data: MnistData | None = None, dtype: torch.dtype = torch.float32,
                         protocol: Mapping[str, Any] | None = None, device: str = "cpu",
                         learner: str | None = None, kind: str = "rule") -> dict[str, Any]:
    """Score a recurrent rule on fixedpoint-mnist: mean test accuracy ± 95% t-interval over episodes.

    ``protocol`` overrides keys of SCORE_PROTOCOL["tiny" | "full"]. Returns a suite entry {learner, kind, score,
    ci95: [lo, hi], ci95_halfwidth, episodes, metrics: {spectral_abscissa (mean final max Re λ(W)),
    max_spectral_abscissa, final_train_loss, failures, per_episode_accuracy}, locality, cost_per_sample_ms,
    hyperparameters, tuning: None, rule}.
    """
    from discovery.analysis.stats import t_interval

    rule = as_recurrent_rule(coefficients)
    proto = {**SCORE_PROTOCOL["tiny" if tiny else "full"], **(protocol or {})}
    dev = torch.device(device)
    xtr, ytr, xte, yte = data if data is not None else fp.load_mnist5k_split()
    if proto.get("n_train"):
        xtr, ytr = xtr[:proto["n_train"]], ytr[:proto["n_train"]]
    if proto.get("n_test"):
        xte, yte = xte[:proto["n_test"]], yte[:proto["n_test"]]
    xtr, xte, ytr, yte = xtr.to(dev, dtype), xte.to(dev, dtype), ytr.to(dev), yte.to(dev)
    ids = rule.terms
    theta = torch.tensor([rule.coefficients[t] for t in ids], dtype=dtype, device=dev)
    N, batch = int(proto["N"]), int(proto["batch"])
    cfg = SolverConfig(tol=1e-5 if dtype != torch.float64 else 1e-10, adjoint_tol=1e-6, max_iter=300,
                       adjoint_method="solve" if N <= fp.SOLVE_MAX_N else "anderson")
    accs, absc, max_absc, final_loss = [], [], [], []
    failures, samples, step_time = 0, 0, 0.0
    for i in range(int(proto["episodes"])):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        W = random_matrix(N, fp.RHO_INIT, gen).to(dev, dtype)
        net = FixedPointNet.random(N, gen, dtype, dev, D=xtr.shape[1])
        peak, last, acc = float(spectral_abscissa(W.cpu())), math.nan, math.nan
        try:
            with torch.no_grad():
                for _ in range(int(proto["epochs"])):
                    perm = torch.randperm(len(ytr), generator=gen).to(dev)
                    for j in range(0, len(ytr), batch):
                        idx = perm[j:j + batch]
                        t1 = time.perf_counter()
                        if ids:
                            W, loss = fp.inner_step(net, W, xtr[idx], ytr[idx], theta, ids, cfg)
                        else:
                            loss = F.cross_entropy(net.readout(W, xtr[idx], cfg)[1], ytr[idx], reduction="none")
                        step_time += time.perf_counter() - t1
                        samples += len(idx)
                        last = float(loss.mean())
                        if not torch.isfinite(W).all():
                            raise FixedPointError("weights became non-finite", math.inf)
                        peak = max(peak, float(spectral_abscissa(W.cpu())))
                acc = fp.accuracy_on(net, W, xte, yte, cfg)
        except fp.DIVERGENCE_ERRORS:
            acc = math.nan
        failures += record_accuracy(acc, W, accs, absc)
        max_absc.append(peak)
        final_loss.append(last)
    mean, lo, hi = t_interval(accs)
    return {
        "learner": learner or rule.name or "recurrent rule",
        "kind": kind,
        "score": mean,
        "ci95": [lo, hi],
        "ci95_halfwidth": (hi - lo) / 2,
        "episodes": len(accs),
        "metrics": {
            "spectral_abscissa": sum(absc) / len(absc) if absc else None,
            "max_spectral_abscissa": max(max_absc),
            "final_train_loss": sum(final_loss) / len(final_loss),
            "failures": failures,
            "per_episode_accuracy": accs,
        },
        "locality": recurrent_locality(rule),
        "cost_per_sample_ms": 1000.0 * step_time / max(samples, 1),
        "hyperparameters": {"coefficients": rule.coefficients, **proto},
        "tuning": None,
        "rule": rule.to_dict(),
    }


def scaled(rule: RecurrentRule, c: float) -> RecurrentRule:
    """c · θ (the same rule shape, step size multiplied by c)."""
    return RecurrentRule({t: c * v for t, v in rule.coefficients.items()}, name=rule.name)


def tune_and_score(coefficients: Mapping[str, float] | RecurrentRule | str, *, scales: list[float], seed: int = 0,
                   data: MnistData | None = None, protocol: Mapping[str, Any] | None = None, device: str = "cpu",
                   learner: str | None = None, kind: str = "rule", tune_episodes: int = 1) -> dict[str, Any]:
    """η tuned the same way for every learner, then scored: for each c in ``scales`` the rule c·θ learns on the
    first 1 − VALIDATION_FRACTION of the training images and is scored on the rest (``tune_episodes`` episodes
    seeded apart from the test ones); the c of the best mean validation accuracy is then scored by
    :func:`score_recurrent_rule` on the test images (its entry; ``hyperparameters.eta_scale``, ``tuning``: the
    validation accuracy per c; ``rule``: the given rule, unscaled)."""
    rule = as_recurrent_rule(coefficients)
    xtr, ytr, xte, yte = data if data is not None else fp.load_mnist5k_split()
    proto = dict(protocol or {})
    n_train = proto.get("n_train") or len(ytr)
    n_fit = round(n_train * (1 - VALIDATION_FRACTION))
    split = (xtr[:n_fit], ytr[:n_fit], xtr[n_fit:n_train], ytr[n_fit:n_train])
    tune_proto = {**proto, "n_train": None, "n_test": None, "episodes": tune_episodes}
    tuning: dict[str, float] = {}
    for c in scales:
        entry = score_recurrent_rule(scaled(rule, c), seed=TUNE_SEED + seed, data=split, protocol=tune_proto,
                                     device=device)
        tuning[repr(float(c))] = entry["score"]
    best = max(scales, key=lambda c: (tuning[repr(float(c))], -abs(math.log(c))))
    out = score_recurrent_rule(scaled(rule, best), seed=seed, data=(xtr, ytr, xte, yte), protocol=proto,
                               device=device, learner=learner or rule.name or "recurrent rule", kind=kind)
    out["hyperparameters"] = {**out["hyperparameters"], "eta_scale": float(best)}
    out["tuning"] = {"eta_scale": tuning, "validation_images": n_train - n_fit, "episodes": tune_episodes}
    out["rule"] = rule.to_dict()
    return out
