"""Torch engine of the recurrent rules (docs/science.md S2): implicit fixed-point layers and ΔW = Σ_k θ_k F_k.

Network: N tanh units at the fixed point r = tanh(W r + W_x x), logits R r, per-sample loss CE(R r, y), δ = ∂CE/∂r
= Rᵀ(softmax(R r) − onehot(y)), G = diag(1 − r²). Rows are samples: r, δ are (..., B, N), W is (..., N, N).
F_k are the batch-averaged terms of rules.recurrent (checked against the sympy expressions in the tests).

Implicit differentiation: r* is solved without autograd (Anderson, discovery.recurrent.fixedpoint.solve_fixed_point); with
(I − Wᵀ G) u = ∂ℓ/∂r and q = G u, the backward is ∂ℓ/∂W = Σ_b q_b r_bᵀ and ∂ℓ/∂X = q (implicit function theorem,
dr = (I − G W)⁻¹ G (dW r + dX)). rec_dW1's adjoint u = (I − Wᵀ G)⁻¹ δ is a second implicit layer whose backward
solves (I − G W) w = ū: ∂/∂δ = w, ∂/∂W = Σ_b (g⊙u)_b w_bᵀ, ∂/∂g = (W w) ⊙ u. Linear systems use LU for N ≤
SOLVE_MAX_N, else Anderson iteration on the right-hand side scaled to unit max-norm (so the tolerance is relative).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from discovery.recurrent.fixedpoint import (
    FixedPointError,
    anderson,
    solve_fixed_point,
    spectral_abscissa,
)
from rules.recurrent import recurrent_term
from rules.recurrent_compiler import CompiledRecurrentTerm, compile_recurrent

INPUT_DIM = 784
N_CLASSES = 10
RHO_INIT = 0.5
SOLVE_MAX_N = 128
"""Adjoint systems of at most this many units are solved by LU ('solve'); larger ones by Anderson iteration."""

DIVERGENCE_ERRORS: tuple[type[Exception], ...] = (FixedPointError, torch.linalg.LinAlgError)
"""What a lost fixed point raises (the solver's own error, or a singular Anderson / adjoint system)."""

AdjointMethod = Literal["solve", "anderson"]
MnistData = tuple[Tensor, Tensor, Tensor, Tensor]


def load_mnist5k_split() -> MnistData:
    """(x_train, y_train, x_test, y_test): the 4,000 / 1,000 split of discovery.recurrent.fixedpoint.load_mnist_5k (same
    images, same order), read through the cached fast loader discovery.data.load_dataset("mnist5k")."""
    from discovery.data import load_dataset

    d = load_dataset("mnist5k")
    perm = torch.randperm(len(d.labels), generator=torch.Generator().manual_seed(0))
    test, train = perm[:1000], perm[1000:]
    return d.images[train], d.labels[train], d.images[test], d.labels[test]


# ================================================================================ implicit layers

def _normalized_linear_fp(g_map: Callable[[Tensor], Tensor], rhs: Tensor, tol: float, max_iter: int,
                          what: str) -> Tensor:
    """x = rhs + L(x) (L linear) by Anderson, on rhs scaled to max |rhs| = 1 so that `tol` is relative."""
    scale = rhs.abs().amax()
    if not torch.isfinite(scale):
        raise FixedPointError(f"{what}: non-finite right-hand side", math.inf)
    if float(scale) == 0.0:
        return torch.zeros_like(rhs)
    b = rhs / scale
    x, res, it = anderson(lambda v: b + g_map(v), b.clone(), tol=tol, max_iter=max_iter)
    if not res <= tol:
        raise FixedPointError(f"{what} not reached", res, it)
    return x * scale


def solve_left(W: Tensor, g: Tensor, b: Tensor, method: AdjointMethod, tol: float, max_iter: int = 500) -> Tensor:
    """u with (I − Wᵀ G) u = b per sample (rows (..., B, N)), i.e. u = b + Wᵀ(g ⊙ u); 'anderson' falls back to
    LU when the iteration does not converge (spectral radius of G W near or above 1)."""
    if method == "anderson":
        try:
            return _normalized_linear_fp(lambda v: (g * v) @ W, b, tol, max_iter, "adjoint u = b + Wᵀ(g⊙u)")
        except FixedPointError:
            if not torch.isfinite(b).all():
                raise
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)                   # LU (or iteration fallback)
    M = eye - W.transpose(-1, -2).unsqueeze(-3) * g.unsqueeze(-2)
    return torch.linalg.solve(M, b.unsqueeze(-1)).squeeze(-1)


def solve_right(W: Tensor, g: Tensor, b: Tensor, method: AdjointMethod, tol: float, max_iter: int = 500) -> Tensor:
    """w with (I − G W) w = b per sample (rows (..., B, N)), i.e. w = b + g ⊙ (W w); fallback as solve_left."""
    if method == "anderson":
        Wt = W.transpose(-1, -2)
        try:
            return _normalized_linear_fp(lambda v: g * (v @ Wt), b, tol, max_iter, "adjoint w = b + g⊙(W w)")
        except FixedPointError:
            if not torch.isfinite(b).all():
                raise
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)                   # LU (or iteration fallback)
    M = eye - g.unsqueeze(-1) * W.unsqueeze(-3)
    return torch.linalg.solve(M, b.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class SolverConfig:
    """Tolerances of the forward fixed point (relative residual) and of the adjoint solves."""

    tol: float
    adjoint_tol: float
    max_iter: int = 300
    adjoint_method: AdjointMethod = "anderson"

    @staticmethod
    def default(N: int, dtype: torch.dtype) -> SolverConfig:
        f64 = dtype == torch.float64
        return SolverConfig(tol=1e-11 if f64 else 1e-5, adjoint_tol=1e-11 if f64 else 1e-6,
                            max_iter=1000 if f64 else 100, adjoint_method="solve" if N <= SOLVE_MAX_N else "anderson")


class _FixedPoint(torch.autograd.Function):
    """r* = tanh(W r* + X) solved without autograd; backward by the implicit function theorem."""

    @staticmethod
    def forward(ctx: Any, W: Tensor, X: Tensor, cfg: SolverConfig) -> Tensor:  # type: ignore[override]
        r = solve_fixed_point(W, X, activation="tanh", method="anderson", tol=cfg.tol, max_iter=cfg.max_iter).r
        ctx.save_for_backward(W, r)
        ctx.cfg = cfg
        return r

    @staticmethod
    def backward(ctx: Any, grad_r: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        W, r = ctx.saved_tensors
        cfg: SolverConfig = ctx.cfg
        g = 1.0 - r * r
        q = g * solve_left(W, g, grad_r, cfg.adjoint_method, cfg.adjoint_tol)       # G (I − Wᵀ G)⁻¹ ∂ℓ/∂r
        grad_W = q.transpose(-1, -2) @ r if ctx.needs_input_grad[0] else None      # Σ_b q_b r_bᵀ
        return grad_W, q if ctx.needs_input_grad[1] else None, None


class _Adjoint(torch.autograd.Function):
    """u = (I − Wᵀ G)⁻¹ δ (rec_dW1's adjoint) with backward w = (I − G W)⁻¹ ū:
    ∂/∂δ = w, ∂/∂W = Σ_b (g⊙u)_b w_bᵀ, ∂/∂g = (W w) ⊙ u."""

    @staticmethod
    def forward(ctx: Any, W: Tensor, g: Tensor, delta: Tensor, cfg: SolverConfig) -> Tensor:  # type: ignore[override]
        u = solve_left(W, g, delta, cfg.adjoint_method, cfg.adjoint_tol)
        ctx.save_for_backward(W, g, u)
        ctx.cfg = cfg
        return u

    @staticmethod
    def backward(ctx: Any, ubar: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        W, g, u = ctx.saved_tensors
        cfg: SolverConfig = ctx.cfg
        w = solve_right(W, g, ubar, cfg.adjoint_method, cfg.adjoint_tol)
        return (g * u).transpose(-1, -2) @ w, (w @ W.transpose(-1, -2)) * u, w, None


def fixed_point(W: Tensor, X: Tensor, cfg: SolverConfig) -> Tensor:
    """Differentiable r* = tanh(W r* + X) (rows of X (..., B, N)); raises FixedPointError when not reached."""
    return _FixedPoint.apply(W, X, cfg)


# ================================================================================ the rule in torch

@functools.cache
def compiled_term(tid: str) -> CompiledRecurrentTerm:
    """The torch code of recurrent term ``tid``, compiled from its sympy expression (rules.recurrent)."""
    return compile_recurrent(recurrent_term(tid).expr)


def term_directions(W: Tensor, r: Tensor, delta: Tensor, ids: Sequence[str], cfg: SolverConfig) -> list[Tensor]:
    """Batch-averaged F_k (..., N, N) of rules.recurrent for the rows r, δ (..., B, N), each compiled from its
    sympy form (rules.recurrent_compiler); differentiable. The adjoint u is solved only when a term uses it."""
    terms = [compiled_term(t) for t in ids]
    env: dict[str, Tensor] = {"W": W, "g": 1.0 - r * r, "r": r, "delta": delta}
    if any(t.needs_adjoint for t in terms):
        env["u"] = _Adjoint.apply(W, env["g"], delta, cfg)
    return [t(env) for t in terms]


def rule_update(W: Tensor, r: Tensor, delta: Tensor, theta: Tensor, ids: Sequence[str], cfg: SolverConfig) -> Tensor:
    """ΔW = Σ_k θ_k F_k."""
    out: Tensor | None = None
    for k, D in enumerate(term_directions(W, r, delta, ids, cfg)):
        term = theta[k] * D
        out = term if out is None else out + term
    assert out is not None
    return out


@dataclass
class FixedPointNet:
    """Fixed input weights W_x (N × 784) and readout R (10 × N)."""

    Wx: Tensor
    R: Tensor

    @staticmethod
    def random(N: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device, D: int = INPUT_DIM
               ) -> FixedPointNet:
        Wx = torch.randn(N, D, generator=gen, dtype=torch.float64) / math.sqrt(D)
        R = torch.randn(N_CLASSES, N, generator=gen, dtype=torch.float64) / math.sqrt(N)
        return FixedPointNet(Wx.to(device, dtype), R.to(device, dtype))

    def readout(self, W: Tensor, x: Tensor, cfg: SolverConfig) -> tuple[Tensor, Tensor]:
        """(r*, logits R r*) for the rows of x."""
        r = fixed_point(W, x @ self.Wx.T, cfg)
        return r, r @ self.R.T


def inner_step(net: FixedPointNet, W: Tensor, x: Tensor, y: Tensor, theta: Tensor, ids: Sequence[str],
               cfg: SolverConfig) -> tuple[Tensor, Tensor]:
    """One learning step on a minibatch: (W + Σ θ_k F_k, per-sample CE before the step)."""
    r, logits = net.readout(W, x, cfg)
    p = torch.softmax(logits, -1)
    delta = (p - F.one_hot(y, N_CLASSES).to(p.dtype)) @ net.R                      # ∂CE_b/∂r_b
    loss = F.cross_entropy(logits.detach(), y, reduction="none")
    return W + rule_update(W, r, delta, theta, ids, cfg), loss


@dataclass
class EpisodeOutcome:
    """One inner run: query CE / accuracy, ∂CE/∂θ (None without grad), W_T, training CE per step, max Re λ(W_T)."""

    loss: float
    accuracy: float
    grad: Tensor | None
    W: Tensor
    train_loss: list[float]
    abscissa: float


def run_episode(net: FixedPointNet, W0: Tensor, batches: Sequence[tuple[Tensor, Tensor]], query: tuple[Tensor, Tensor],
                theta: Tensor, ids: Sequence[str], cfg: SolverConfig, *, grad: bool = True) -> EpisodeOutcome:
    """T inner steps from W0, then the query CE at the fixed point of W_T; with grad, ∂CE/∂θ by reverse mode.

    Raises FixedPointError when a fixed point (or adjoint) is lost; non-finite values are the caller's to judge.
    """
    th = theta.detach().clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        W = W0
        train_loss = []
        for x, y in batches:
            W, l_t = inner_step(net, W, x, y, th, ids, cfg)
            train_loss.append(float(l_t.mean()))
        xq, yq = query
        _, logits = net.readout(W, xq, cfg)
        loss = F.cross_entropy(logits, yq)
        g = torch.autograd.grad(loss, th)[0] if grad else None
    acc = float((logits.detach().argmax(-1) == yq).to(torch.float64).mean())
    Wd = W.detach()
    absc = float(spectral_abscissa(Wd.cpu())) if torch.isfinite(Wd).all() else math.nan
    return EpisodeOutcome(float(loss.detach()), acc, None if g is None else g.detach(), Wd, train_loss, absc)


def meta_loss(theta: Tensor, net: FixedPointNet, W0: Tensor, batches: Sequence[tuple[Tensor, Tensor]],
              query: tuple[Tensor, Tensor], ids: Sequence[str], cfg: SolverConfig, l1: float = 0.0) -> Tensor:
    """Differentiable meta-loss CE_query(W_T(θ)) + λ‖θ‖₁ of one episode (for checks; training uses run_episode)."""
    W = W0
    for x, y in batches:
        W, _ = inner_step(net, W, x, y, theta, ids, cfg)
    _, logits = net.readout(W, query[0], cfg)
    return F.cross_entropy(logits, query[1]) + l1 * theta.abs().sum()


def accuracy_on(net: FixedPointNet, W: Tensor, x: Tensor, y: Tensor, cfg: SolverConfig, chunk: int = 1000
                  ) -> float:
    """Fraction of x classified correctly by argmax R r*(W, x) (NaN when W is not finite)."""
    if not torch.isfinite(W).all():
        return math.nan
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), chunk):
            _, logits = net.readout(W, x[i:i + chunk], cfg)
            correct += int((logits.argmax(-1) == y[i:i + chunk]).sum())
    return correct / len(y)
