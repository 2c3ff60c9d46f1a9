"""Metrics of the unsupervised family (W is k×d, its rows span the learned subspace; U is d×k orthonormal).

subspace error = 1 − (1/k) Σᵢ cos² θᵢ over the principal angles θᵢ between row(W) and span(U) (cos θᵢ = the
singular values of Q_Wᵀ U, Q_W an orthonormal basis of row(W)); reconstruction error = mean ‖x − WᵀW x‖² / mean ‖x‖²
(normalized: 1 for W = 0, 1 − Σ_{i≤k} λᵢ / tr Σ at the optimum W Wᵀ = I with row(W) the top-k subspace).
"""

from __future__ import annotations

import torch
from torch import Tensor


def subspace_error(W: Tensor, U: Tensor) -> Tensor:
    """1 − mean cos² of the principal angles between row(W) and span(U); W (..., k, d), U (d, k). By SVD."""
    q, _ = torch.linalg.qr(W.transpose(-1, -2).to(U.dtype))
    cos = torch.linalg.svdvals(q.transpose(-1, -2) @ U)
    return 1.0 - (cos ** 2).mean(-1)


def subspace_error_smooth(W: Tensor, U: Tensor, ridge: float = 1e-9) -> Tensor:
    """The same quantity as a differentiable trace: 1 − tr(P_W U Uᵀ)/k, P_W = Wᵀ (W Wᵀ + εI)⁻¹ W the projector
    on row(W) (Σ cos² θᵢ = tr(P_W P_U)); W (..., k, d)."""
    k = U.shape[1]
    gram = W @ W.transpose(-1, -2)
    eye = torch.eye(gram.shape[-1], dtype=W.dtype, device=W.device)
    wu = W @ U                                            # (..., k, k)
    sol = torch.linalg.solve(gram + ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye, wu)
    return 1.0 - (wu * sol).sum((-1, -2)) / k


def reconstruction_error(W: Tensor, X: Tensor) -> Tensor:
    """mean_x ‖x − WᵀW x‖² / mean_x ‖x‖² for W (..., k, d) and samples X (N, d)."""
    y = X @ W.transpose(-1, -2)                          # (..., N, k)
    resid = X - y @ W
    return (resid ** 2).sum(-1).mean(-1) / (X ** 2).sum(-1).mean()
