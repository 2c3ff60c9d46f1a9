"""The unsupervised family's term library and its batched torch evaluation.

The sympy library (grammar, canonical ids, dedupe, names) lives in ``rules.unsupervised`` (rules/ may not import
discovery/); this module lists it and evaluates ΔW = Σ_r θ_r F_r for a batch of episodes in one pass, using that
every term is g · u vᵀ (g ∈ {1, 1ᵀy, yᵀy}, u ∈ {y, 1}, v ∈ {x, 1_pre, Wᵀy}) or g · W:

    c_{b,(u,v)} = Σ_r θ_{b,r} g_r(y_b) [term r has (u, v)],   ΔW_b = Σ_{(u,v)} c_{b,(u,v)} u_b v_bᵀ + c_{b,W} W_b.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedTerm, unsupervised_term

GATE_ORDER: tuple[str, ...] = ("", "1ᵀy", "yᵀy")
POST_ORDER: tuple[str, ...] = ("y", "1")
PRE_ORDER: tuple[str, ...] = ("x", "1_pre", "Wᵀy")
N_SLOTS = len(POST_ORDER) * len(PRE_ORDER) + 1        # the (u, v) pairs and the decay W

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


def _slot(t: UnsupervisedTerm) -> int:
    if t.pre == "W":
        return N_SLOTS - 1
    return POST_ORDER.index(t.post) * len(PRE_ORDER) + PRE_ORDER.index(t.pre)


class TermEvaluator:
    """Batched ΔW of the terms ``ids`` (a sub-list of the library): ``delta(theta, W, x)``."""

    def __init__(self, ids: Sequence[str], dtype: torch.dtype = torch.float64) -> None:
        self.ids = list(ids)
        terms = [UNSUPERVISED_TERMS[i] for i in self.ids]
        self.gate_index = torch.tensor([GATE_ORDER.index(t.gate) for t in terms], dtype=torch.long)
        self.slots = torch.zeros(len(terms), N_SLOTS, dtype=dtype)
        for r, t in enumerate(terms):
            self.slots[r, _slot(t)] = 1.0

    def delta(self, theta: Tensor, W: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ΔW, y) for θ (B, R), W (B, k, d), x (B, d): y = W x and ΔW = Σ_r θ_r F_r(x, y, W)."""
        y = torch.bmm(W, x.unsqueeze(-1)).squeeze(-1)                         # (B, k)
        wty = torch.bmm(y.unsqueeze(1), W).squeeze(1)                          # (B, d): (Wᵀy)ᵀ = yᵀW
        gates = torch.stack([torch.ones_like(y[:, 0]), y.sum(1), (y * y).sum(1)], 1)   # (B, 3)
        c = (theta * gates.index_select(1, self.gate_index)) @ self.slots     # (B, N_SLOTS)
        pre = torch.stack([x, torch.ones_like(x), wty], 1)                    # (B, 3, d)
        mixed = torch.bmm(c[:, :-1].reshape(-1, len(POST_ORDER), len(PRE_ORDER)), pre)   # (B, 2, d): Σ_v c v
        dW = y.unsqueeze(2) * mixed[:, :1] + mixed[:, 1:] + c[:, -1, None, None] * W
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
            out.append(dW.flatten(1).norm(dim=1).mean())
        return torch.stack(out)
