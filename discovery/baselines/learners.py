"""Baseline learners behind the same ``Learner`` protocol as a compiled rule (docs/science.md S3, S1, S4).

Every learner updates all layers once per sample (batch 1 per episode, B episodes in parallel) and returns new
weights W_ℓ of shape (B, n_ℓ, n_{ℓ−1}).

* Pseudo-gradient (BP / FA / DFA / sign):  W_ℓ ← W_ℓ − η e_ℓ y_{ℓ−1}ᵀ, with e_ℓ from
  :func:`discovery.feedforward.network.errors` for the learner's feedback mode (B = W for bp, random B for fa, e_L D_ℓ for dfa).
* Pseudo-gradient + Oja (S1; F9 with γ):  ΔW_ℓ = −η e_ℓ y_{ℓ−1}ᵀ + γ (y_ℓ y_{ℓ−1}ᵀ − y_ℓ (y_ℓᵀ W_ℓ)), the decay
  evaluated the cheap way y (yᵀW); the output layer's post-activity is softmax(z_L), as a rule sees it.
* Predictive coding Strict / FixedPred / Exact: :mod:`discovery.baselines.pc`.

Locality (leaderboard column): "weight transport" when the teaching signal needs W in the feedback path (bp,
sign, predictive coding), "global error" when an output error reaches every layer through fixed random pathways
(fa, dfa), "local" for rules that use no error at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from discovery.feedforward.network import errors, forward, post_activities, vecmat

Weights = list[Tensor]

#: The three values of the leaderboard's locality column.
LOCALITIES = ("weight transport", "global error", "local")


def locality_of(feedback: str) -> str:
    """Locality of a learner whose teaching signal travels through ``feedback`` (bp | sign | fa | dfa | none)."""
    if feedback in ("bp", "sign"):
        return "weight transport"
    if feedback in ("fa", "dfa"):
        return "global error"
    if feedback in ("none", "local"):
        return "local"
    raise ValueError(f"unknown feedback mode {feedback!r}")


@dataclass
class PseudoGradientLearner:
    """W_ℓ ← W_ℓ − η e_ℓ y_{ℓ−1}ᵀ + γ (y_ℓ y_{ℓ−1}ᵀ − y_ℓ (y_ℓᵀ W_ℓ)); γ = 0 gives BP / FA / DFA.

    ``feedback`` selects e_ℓ (bp: exact backprop δ_ℓ; fa: random B; dfa: e_L D_ℓ; sign: sign(W)⊙|B|)."""

    lr: float
    feedback: str = "bp"
    gamma: float = 0.0
    beta: float = 10.0
    name: str = ""
    hyperparameters: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        if not self.name:
            base = {"bp": "BP", "fa": "FA", "dfa": "DFA", "sign": "Sign"}[self.feedback]
            self.name = base + ("+Oja" if self.gamma else "")
        self.hyperparameters = {"lr": float(self.lr)}
        if self.gamma:
            self.hyperparameters["gamma"] = float(self.gamma)

    @property
    def locality(self) -> str:
        return locality_of(self.feedback)

    def teaching_signals(self, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor,
                         target: Tensor) -> list[Tensor]:
        """[e_1, …, e_L]: the pre-activation errors this learner's update uses."""
        ys = forward(Ws, x, self.beta)
        return errors(ys, target, Ws, Bs, self.feedback, self.beta)[1:]

    def step(self, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor, target: Tensor) -> Weights:
        ys = forward(Ws, x, self.beta)
        es = errors(ys, target, Ws, Bs, self.feedback, self.beta)
        post = post_activities(ys) if self.gamma else ys
        out: Weights = []
        for i, W in enumerate(Ws):
            pre = ys[i].unsqueeze(1)  # (B, 1, m)
            new = torch.baddbmm(W, es[i + 1].unsqueeze(2), pre, alpha=-self.lr)
            if self.gamma:
                y = post[i + 1]
                resid = ys[i] - vecmat(y, W)  # y_{ℓ−1} − yᵀW (old W): Oja = y (y_{ℓ−1} − yᵀW)ᵀ
                new = torch.baddbmm(new, y.unsqueeze(2), resid.unsqueeze(1), alpha=self.gamma)
            out.append(new)
        return out


def backprop(lr: float, beta: float = 10.0) -> PseudoGradientLearner:
    """Online SGD with exact backprop: W_ℓ ← W_ℓ − η δ_ℓ y_{ℓ−1}ᵀ."""
    return PseudoGradientLearner(lr=lr, feedback="bp", beta=beta)


def feedback_alignment(lr: float, beta: float = 10.0) -> PseudoGradientLearner:
    """FA: e_ℓ = (e_{ℓ+1} B_{ℓ+1}) ⊙ σ'_ℓ with fixed random B."""
    return PseudoGradientLearner(lr=lr, feedback="fa", beta=beta)


def direct_feedback_alignment(lr: float, beta: float = 10.0) -> PseudoGradientLearner:
    """DFA: e_ℓ = (e_L D_ℓ) ⊙ σ'_ℓ with fixed random D_ℓ (n_L × n_ℓ)."""
    return PseudoGradientLearner(lr=lr, feedback="dfa", beta=beta)


def bp_oja(lr: float, gamma: float, beta: float = 10.0) -> PseudoGradientLearner:
    """S1: ΔW_ℓ = −η δ_ℓ y_{ℓ−1}ᵀ + γ (y_ℓ y_{ℓ−1}ᵀ − y_ℓ (y_ℓᵀ W_ℓ))."""
    return PseudoGradientLearner(lr=lr, feedback="bp", gamma=gamma, beta=beta)


# ----------------------------------------------------------------------------------------- tuning grids

#: Budget: every baseline evaluates exactly this many hyperparameter points (× the same meta-train episodes).
GRID_POINTS = 9
#: 9 log-spaced online learning rates for single-hyperparameter learners (BP, FA, DFA, PC-Exact).
LR_GRID_9: tuple[float, ...] = (0.003, 0.006, 0.01, 0.02, 0.03, 0.06, 0.1, 0.2, 0.3)
#: Two-hyperparameter learners: coordinate search in two stages, 5 + 4 = 9 points. Stage 1: these learning rates
#: with the second hyperparameter at its default; stage 2: 4 other values of the second one at the best lr.
LR_GRID_5: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3)
OJA_GAMMA_DEFAULT = 0.001
OJA_GAMMA_STAGE2: tuple[float, ...] = (0.0003, 0.003, 0.01, 0.03)
#: (η, n) of the PC relaxation: default the paper's (0.1, 20); FixedPred(1, L) would be exactly BP (left out).
PC_DEFAULT: tuple[float, int] = (0.1, 20)
PC_FIXEDPRED_STAGE2: tuple[tuple[float, int], ...] = ((0.05, 20), (0.2, 10), (0.3, 20), (0.5, 5))
PC_STRICT_STAGE2: tuple[tuple[float, int], ...] = ((0.05, 20), (0.1, 10), (0.2, 10), (0.4, 5))

Stages = tuple[tuple[dict[str, Any], ...], ...]


@dataclass(frozen=True)
class BaselineSpec:
    """A named baseline: its factory (beta, **hyperparameters) → Learner, its feedback mode, and its tuning plan.

    ``stages``: stage 0 lists full hyperparameter points; each later stage lists partial points merged onto the
    best point so far (coordinate search). Every baseline evaluates :data:`GRID_POINTS` points in total."""

    name: str
    feedback: str
    factory: Callable[..., Any]
    stages: Stages

    @property
    def grid_points(self) -> int:
        return sum(len(st) for st in self.stages)

    def make(self, beta: float, **hp: Any) -> Any:
        return self.factory(beta=beta, **hp)


def _pc_factory(mode: str) -> Callable[..., Any]:
    def make(beta: float, lr: float, eta: float = 1.0, n: int | None = None) -> Any:
        from discovery.baselines.pc import PCLearner

        return PCLearner(mode=mode, lr=lr, eta=eta, n=n, beta=beta)

    return make


def _two_stage(first: Mapping[str, Any], second: Sequence[Mapping[str, Any]]) -> Stages:
    return (tuple({"lr": lr, **first} for lr in LR_GRID_5), tuple(dict(p) for p in second))


def _registry() -> dict[str, BaselineSpec]:
    lr9: Stages = (tuple({"lr": lr} for lr in LR_GRID_9),)
    eta0, n0 = PC_DEFAULT
    return {
        "BP": BaselineSpec("BP", "bp", lambda beta, lr: backprop(lr, beta), lr9),
        "FA": BaselineSpec("FA", "fa", lambda beta, lr: feedback_alignment(lr, beta), lr9),
        "DFA": BaselineSpec("DFA", "dfa", lambda beta, lr: direct_feedback_alignment(lr, beta), lr9),
        "BP+Oja": BaselineSpec("BP+Oja", "bp", lambda beta, lr, gamma: bp_oja(lr, gamma, beta),
                               _two_stage({"gamma": OJA_GAMMA_DEFAULT}, [{"gamma": g} for g in OJA_GAMMA_STAGE2])),
        "PC-Exact": BaselineSpec("PC-Exact", "bp", _pc_factory("exact"), lr9),
        "PC-FixedPred": BaselineSpec("PC-FixedPred", "bp", _pc_factory("fixedpred"),
                                     _two_stage({"eta": eta0, "n": n0},
                                                [{"eta": e, "n": n} for e, n in PC_FIXEDPRED_STAGE2])),
        "PC-Strict": BaselineSpec("PC-Strict", "bp", _pc_factory("strict"),
                                  _two_stage({"eta": eta0, "n": n0},
                                             [{"eta": e, "n": n} for e, n in PC_STRICT_STAGE2])),
    }


#: Named baselines with their tuning plans (same number of evaluated points each).
BASELINES: dict[str, BaselineSpec] = _registry()
assert all(b.grid_points == GRID_POINTS for b in BASELINES.values())


def make_baseline(name: str, beta: float = 10.0, **hp: float) -> Any:
    """A baseline learner by name with explicit hyperparameters, e.g. ``make_baseline("BP+Oja", lr=.03, gamma=.003)``."""
    try:
        spec = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}") from None
    return spec.make(beta, **hp)
