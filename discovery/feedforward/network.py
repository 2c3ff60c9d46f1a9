"""Functional MLP without biases, batched over episodes, and its teaching signals (docs/science.md S3).

Shapes: activities y_ℓ are (B, n_ℓ) (row vectors, B = episodes in the meta-batch), weights W_ℓ are
(B, n_ℓ, n_{ℓ−1}); z_ℓ = y_{ℓ−1} W_ℓᵀ; hidden y_ℓ = softplus_β(z_ℓ); the last layer gives logits.
Feedback: e_L = softmax(z_L) − onehot; e_ℓ = (e_{ℓ+1} B_{ℓ+1}) ⊙ (1 − exp(−β y_ℓ)) with B = W (bp), random
(fa), sign(W)⊙|B| (sign), or e_L D_ℓ for direct feedback alignment (dfa, D_ℓ of shape n_L × n_ℓ).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def xavier_range(n_in: int, n_out: int) -> float:
    """r = √(6 / (fan_in + fan_out)) of the Xavier/Glorot-uniform U(−r, r)."""
    return math.sqrt(6.0 / (n_in + n_out))


def uniform(shape: Sequence[int], r: float, gen: torch.Generator, device, dtype) -> Tensor:
    """U(−r, r) drawn on the CPU generator (reproducible across devices), then moved."""
    t = torch.rand(tuple(shape), generator=gen, dtype=torch.float64) * (2 * r) - r
    return t.to(device=device, dtype=dtype)


def init_weights(widths: Sequence[int], batch: int, gen: torch.Generator, scale: float = 1.0,
                 device="cpu", dtype=torch.float32) -> list[Tensor]:
    """W_ℓ ~ U(−s·r_ℓ, s·r_ℓ), one independent draw per episode: list of (B, n_ℓ, n_{ℓ−1})."""
    return [uniform((batch, n_out, n_in), scale * xavier_range(n_in, n_out), gen, device, dtype)
            for n_in, n_out in itertools.pairwise(widths)]


def init_feedback(widths: Sequence[int], mode: str, batch: int, gen: torch.Generator,
                  device="cpu", dtype=torch.float32) -> list[Tensor] | None:
    """Fixed feedback matrices for one episode: None for bp (B = W), Xavier-uniform B_ℓ of W_ℓ's shape for fa and
    sign, D_ℓ of shape (B, n_L, n_ℓ) for the hidden layers ℓ = 1..L−1 for dfa (index ℓ−1 in the list)."""
    if mode == "bp":
        return None
    if mode in ("fa", "sign"):
        return init_weights(widths, batch, gen, 1.0, device, dtype)
    if mode == "dfa":
        n_out = widths[-1]
        return [uniform((batch, n_out, n), xavier_range(n, n_out), gen, device, dtype) for n in widths[1:-1]]
    raise ValueError(f"unknown feedback mode {mode!r}")


def softplus(z: Tensor, beta: float) -> Tensor:
    """y = (1/β) log(1 + exp(β z))."""
    return F.softplus(z, beta=beta)


def softplus_grad_from_output(y: Tensor, beta: float) -> Tensor:
    """σ'(z) = sigmoid(β z) = 1 − exp(−β y), written with the post-activation y (local)."""
    return -torch.expm1(-beta * y)


def matvec(W: Tensor, v: Tensor) -> Tensor:
    """Batched W v: (B, n, m) × (B, m) → (B, n), computed as vᵀWᵀ (contiguous rows: faster than gemv)."""
    return torch.bmm(v.unsqueeze(1), W.transpose(1, 2)).squeeze(1)


def vecmat(v: Tensor, W: Tensor) -> Tensor:
    """Batched vᵀ W: (B, n) × (B, n, m) → (B, m)."""
    return torch.bmm(v.unsqueeze(1), W).squeeze(1)


def forward(Ws: Sequence[Tensor], x: Tensor, beta: float) -> list[Tensor]:
    """Activities [y_0 = x, y_1, …, y_{L−1}, z_L (logits)]."""
    ys = [x]
    for i, W in enumerate(Ws):
        z = matvec(W, ys[-1])
        ys.append(z if i == len(Ws) - 1 else softplus(z, beta))
    return ys


def feedback_matrices(Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, mode: str) -> Sequence[Tensor]:
    """The matrices that carry the error down: W (bp), B (fa), sign(W)⊙|B| (sign)."""
    if mode == "bp" or Bs is None:
        return Ws
    if mode == "sign":
        return [torch.sign(W) * B.abs() for W, B in zip(Ws, Bs)]
    return Bs


def errors(ys: Sequence[Tensor], target: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
           mode: str, beta: float) -> list[Tensor]:
    """Teaching signals [e_0, …, e_L]: e_L = softmax(z_L) − onehot, e_ℓ = (e_{ℓ+1}B_{ℓ+1}) ⊙ (1 − e^{−β y_ℓ}).

    For dfa, e_ℓ = (e_L D_ℓ) ⊙ σ' for hidden ℓ, and e_0 = 0 (no feedback pathway reaches the input; using W_1
    would be weight transport). ``target`` is one-hot (B, n_L)."""
    L = len(Ws)
    e = torch.softmax(ys[-1], dim=-1) - target
    es: list[Tensor] = [e]
    if mode == "dfa":
        assert Bs is not None
        for ell in range(L - 1, 0, -1):
            es.append(vecmat(e, Bs[ell - 1]) * softplus_grad_from_output(ys[ell], beta))
        es.append(torch.zeros_like(ys[0]))
    else:
        Fb = feedback_matrices(Ws, Bs, mode)
        for ell in range(L - 1, -1, -1):
            e = vecmat(e, Fb[ell]) * softplus_grad_from_output(ys[ell], beta)
            es.append(e)
    return es[::-1]


def post_activities(ys: Sequence[Tensor]) -> list[Tensor]:
    """The activities a rule sees: hidden y_ℓ as computed, and softmax(z_L) for the output layer."""
    return [*ys[:-1], torch.softmax(ys[-1], dim=-1)]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over all leading dims; logits (..., n_L), labels (...)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
