"""The unsupervised library's terms F_r(x, y, W) evaluated on *recorded* activity (numpy, float64).

In a recording the post activity y is observed, not computed as W x, so every term is evaluated on the observed
x_t (m), y_t (n) and W_t (n×m) as the grammar of ``rules.unsupervised`` writes it: F = g · u vᵀ with a gate
g ∈ {1, 1ᵀy, yᵀy}, a post vector u ∈ {y, 1} and a pre vector v ∈ {x, 1_pre, Wᵀy}, or F = g · W (the decay).
``features(x, y, W)`` returns all of them for a block of time steps at once: (T, R, n, m).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedTerm, unsupervised_term

#: every term of the generated library, in grammar order (the pool the inference searches)
LIBRARY: list[str] = list(UNSUPERVISED_TERMS)


def term_names(ids: Sequence[str]) -> list[str]:
    return [UNSUPERVISED_TERMS[i].name for i in ids]


def resolve(ids_or_names: Sequence[str]) -> list[str]:
    """Term ids of ids or readable names (KeyError listing the names for an unknown one)."""
    return [unsupervised_term(t).id for t in ids_or_names]


def needs_weights(ids: Sequence[str]) -> bool:
    """Whether any term reads W (Wᵀy or the decay)."""
    return any(UNSUPERVISED_TERMS[i].pre in ("W", "Wᵀy") for i in ids)


def features(x: np.ndarray, y: np.ndarray, W: np.ndarray, ids: Sequence[str] = LIBRARY) -> np.ndarray:
    """F_r(x_t, y_t, W_t) for x (T, m), y (T, n), W (T, n, m): an array (T, R, n, m), R = len(ids)."""
    T, m = x.shape
    n = y.shape[1]
    terms: list[UnsupervisedTerm] = [UNSUPERVISED_TERMS[i] for i in ids]
    post = {"y": y, "1": np.ones((T, n))}
    pre = {"x": x, "1_pre": np.ones((T, m))}
    if any(t.pre == "Wᵀy" for t in terms):
        pre["Wᵀy"] = np.einsum("tn,tnm->tm", y, W)
    gate = {"": np.ones(T), "1ᵀy": y.sum(1), "yᵀy": (y * y).sum(1)}
    out = np.empty((T, len(terms), n, m))
    for r, t in enumerate(terms):
        if t.pre == "W":
            out[:, r] = gate[t.gate][:, None, None] * W
        else:
            out[:, r] = gate[t.gate][:, None, None] * post[t.post][:, :, None] * pre[t.pre][:, None, :]
    return out


def apply_rule(theta: np.ndarray, x: np.ndarray, y: np.ndarray, W: np.ndarray,
               ids: Sequence[str] = LIBRARY) -> np.ndarray:
    """ΔW = Σ_r θ_r F_r(x, y, W) for one step: x (m,), y (n,), W (n, m), θ (R,) → (n, m)."""
    F = features(x[None], y[None], W[None], ids)[0]
    return np.tensordot(np.asarray(theta, dtype=float), F, axes=1)
