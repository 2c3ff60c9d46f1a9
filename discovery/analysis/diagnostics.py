"""Diagnostics of an adapted network (docs/science.md S3).

α_ℓ: angle between the teaching signal e_ℓ the learner uses (through B) and backprop's δ_ℓ (through W), averaged
over samples; 90° means no alignment. The subspace orthonormality error ‖Y_ℓ − Y_ℓ W_ℓ W_ℓᵀ‖²_F / #samples with Y_ℓ
the layer's activities: how far the rows of W_ℓ are from orthonormal on the subspace the activity occupies (Oja
drives it to 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from discovery.feedforward.network import errors, forward


def _expand(Ws: Sequence[Tensor], q: int) -> list[Tensor]:
    return [w.expand(q, *w.shape[1:]) for w in Ws]


def alignment_angles(Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor, target: Tensor,
                     feedback: str, beta: float) -> list[float]:
    """Mean angle (degrees) between e_ℓ(feedback) and δ_ℓ(bp) for hidden layers ℓ = 1..L−1, one episode.

    Ws are (1, n_ℓ, n_{ℓ−1}); x (Q, n_0); target one-hot (Q, n_L)."""
    q = x.shape[0]
    W = _expand(Ws, q)
    B = None if Bs is None else _expand(Bs, q)
    ys = forward(W, x, beta)
    e_rule = errors(ys, target, W, B, feedback, beta)
    e_bp = errors(ys, target, W, None, "bp", beta)
    out = []
    for ell in range(1, len(Ws)):
        cos = torch.nn.functional.cosine_similarity(e_rule[ell], e_bp[ell], dim=-1, eps=1e-30)
        out.append(float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).mean()))
    return [a if math.isfinite(a) else float("nan") for a in out]


def subspace_orthonormality_error(Ws: Sequence[Tensor], x: Tensor, beta: float) -> list[float]:
    """‖Y_ℓ (I − W_ℓ W_ℓᵀ)‖²_F / Q for hidden layers ℓ = 1..L−1 (Y_ℓ: (Q, n_ℓ) activities): how far W_ℓ is from
    orthonormal on the subspace its activity occupies (the progress events' ``subspace_orth_error``; not the
    paper's E1, which is discovery.benchmarks.evaluate.drive_reconstruction_error)."""
    q = x.shape[0]
    ys = forward(_expand(Ws, q), x, beta)
    out = []
    for ell in range(1, len(Ws)):
        Y = ys[ell]
        W = Ws[ell - 1][0]
        resid = Y - (Y @ W) @ W.T
        out.append(float((resid ** 2).sum() / q))
    return out
