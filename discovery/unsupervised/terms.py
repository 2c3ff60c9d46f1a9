"""The unsupervised family's term library and its batched torch evaluation.

The sympy library (grammar, canonical ids, dedupe, names) lives in ``rules.unsupervised`` (rules/ may not import
discovery/); this module lists it and evaluates ΔW = Σ_r θ_r F_r for a batch of episodes in one pass, using that
every term is g · u vᵀ (g ∈ {1, 1ᵀy, yᵀy}, u ∈ {y, 1}, v ∈ {x, 1_pre, Wᵀy}) or g · W:

    ΔW_b = Σ_u u_b (Σ_{r: u_r = u} θ_{b,r} g_r(y_b) v_{r,b})ᵀ + (Σ_{r: decay} θ_{b,r} g_r(y_b)) W_b.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedTerm, unsupervised_term

#: the whole generated library, in grammar order (the pool an open search starts from)
POOL: list[str] = list(UNSUPERVISED_TERMS)
POOLS: dict[str, list[str]] = {"hebbian": POOL}

OJA_HEBB = unsupervised_term("hebb").id            # y xᵀ
OJA_DECAY = unsupervised_term("oja_decay").id      # y (yᵀW), Oja's second term


def term_library() -> list[UnsupervisedTerm]:
    """Every term of the generated library (17), in grammar order."""
    return list(UNSUPERVISED_TERMS.values())


def library_table() -> list[dict[str, str]]:
    """id, name, formula, user-syntax text, LaTeX and grammar family of every term (for docs and the API)."""
    return [{"id": t.id, "name": t.name, "formula": t.formula, "text": t.text, "latex": t.latex(),
             "family": t.family} for t in term_library()]


def resolve_ids(ids_or_names: Sequence[str]) -> list[str]:
    """Term ids of ids or names (KeyError listing the names for unknown ones)."""
    return [unsupervised_term(t).id for t in ids_or_names]


class TermEvaluator:
    """Batched ΔW of the terms ``ids`` (a sub-list of the library): ``delta(theta, W, x)``.

    Only what the terms need is computed (Wᵀy, the gates), and the terms are summed per post vector first
    (ΔW = y (Σ_r c_r v_r)ᵀ + 1 (Σ_r c_r v_r)ᵀ + (Σ_r c_r) W), so a two-term rule costs a handful of tensor ops."""

    def __init__(self, ids: Sequence[str], dtype: torch.dtype = torch.float64) -> None:
        self.ids = list(ids)
        self.terms = [UNSUPERVISED_TERMS[i] for i in self.ids]
        self.dtype = dtype
        self.gates = sorted({t.gate for t in self.terms if t.gate})
        self.need_wty = any(t.pre == "Wᵀy" for t in self.terms)

    def delta(self, theta: Tensor, W: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ΔW, y) for θ (B, R), W (B, k, d), x (B, d): y = W x and ΔW = Σ_r θ_r F_r(x, y, W) (ΔW may broadcast
        against W when every term is constant along a dimension, e.g. y 1ᵀ)."""
        y = torch.bmm(W, x.unsqueeze(-1)).squeeze(-1)                         # (B, k)
        pre = {"x": x}
        if self.need_wty:
            pre["Wᵀy"] = torch.bmm(y.unsqueeze(1), W).squeeze(1)              # (B, d): (Wᵀy)ᵀ = yᵀW
        gate = {"1ᵀy": y.sum(1) if "1ᵀy" in self.gates else None,
                "yᵀy": (y * y).sum(1) if "yᵀy" in self.gates else None}
        v: dict[str, Tensor | None] = {"y": None, "1": None}
        decay: Tensor | None = None
        for r, t in enumerate(self.terms):
            c = theta[:, r] if not t.gate else theta[:, r] * gate[t.gate]     # (B,)
            if t.pre == "W":
                decay = c if decay is None else decay + c
                continue
            part = c.unsqueeze(1) if t.pre == "1_pre" else c.unsqueeze(1) * pre[t.pre]
            v[t.post] = part if v[t.post] is None else v[t.post] + part
        dW: Tensor = torch.zeros((), dtype=W.dtype)
        if v["y"] is not None:
            dW = y.unsqueeze(2) * v["y"].unsqueeze(1)
        if v["1"] is not None:
            dW = dW + v["1"].unsqueeze(1)
        if decay is not None:
            dW = dW + decay[:, None, None] * W
        return dW, y

    def term_norms(self, W: Tensor, X: Tensor) -> Tensor:
        """Mean ‖F_r(W, x)‖_F over the samples X (N, d) for one W (k, d): (R,) — each term alone, θ_r = 1."""
        n, R = X.shape[0], len(self.ids)
        Wb = W.expand(n, *W.shape)
        out = []
        for r in range(R):
            theta = torch.zeros(n, R, dtype=X.dtype)
            theta[:, r] = 1.0
            dW, _ = self.delta(theta, Wb, X)
            out.append(dW.expand(n, *W.shape).flatten(1).norm(dim=1).mean())
        return torch.stack(out)
