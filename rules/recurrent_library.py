"""The generated recurrent term library (docs/science.md S2, "The generated recurrent library").

A grammar over the recurrent primitives (rules.recurrent: r, δ, G = diag(f'), W, I, the adjoint u = δ + Wᵀ G u)
gives every outer product a bᵀ of a post-side vector a and a pre-side vector b:

    error-driven   −a bᵀ  for a ∈ {δ, G δ, G u, (I − W G) δ, (I − W G) G δ}
                          and b ∈ {r, Wᵀ r, (I − G W)ᵀ(I − G W) r, (I − W G)ᵀ(I − W G) r}          (20 candidates)
    Hebbian        +r rᵀ, +r (Wᵀ r)ᵀ = r (rᵀ W)                                                   (Oja's two halves)

next to the five published additive terms rec_dW1, rec_dW3, rec_dW4, rec_oja, rec_decay, which are library members
under their own names. The error-driven candidates carry the descent sign of the published ones (F = −dW, θ > 0
descends). A candidate is canonicalized by expanding it (sympy; Gᵀ = G, G diagonal) into a sum of noncommutative
monomials, sorting them and dividing by the first one's coefficient: equal canonical text ⇔ the same term up to
scale. A candidate equal to a published term is that term (−G u rᵀ is rec_dW1, the (I − W G) G δ,
(I − G W)ᵀ(I − G W) r pair is rec_dW3, the (I − W G) δ, (I − W G)ᵀ(I − W G) r pair is rec_dW4); the others get the
stable id ``rec_T`` + sha256(canonical)[:8] (the ``rec_`` prefix keeps them recurrent for
``rules.recurrent.is_recurrent_text``). Complexity = Σ over the expanded monomials of their matrix factors.

This module is pure sympy; rules.recurrent builds its RecurrentTerm objects from :func:`generated_candidates`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sympy as sp
from sympy import Identity, MatAdd, MatMul, MatrixExpr, MatrixSymbol, Transpose


@dataclass(frozen=True)
class Candidate:
    """One generated term F = sign · body: the body, its user-syntax text, LaTeX and a readable name."""

    name: str
    sign: int
    body: MatrixExpr
    text: str
    description: str


def expanded_monomials(expr: MatrixExpr) -> list[tuple[float, str, int]]:
    """(coefficient, monomial text, number of matrix factors) of the expansion of ``expr`` (Gᵀ = G, Iᵀ = I)."""
    G = next((s for s in expr.atoms(MatrixSymbol) if s.name == "G"), None)
    x = expr.doit()
    if G is not None:
        x = x.xreplace({Transpose(G): G})
    x = sp.expand(x)
    parts = x.args if isinstance(x, MatAdd) else (x,)
    out: dict[str, list] = {}
    for p in parts:
        coeff, mono = p.as_coeff_mmul()
        factors = [a for a in (mono.args if isinstance(mono, MatMul) else (mono,)) if a.is_Matrix]
        n = sum(int(f.exp) if isinstance(f, sp.MatPow) else 1 for f in factors
                if not isinstance(f, Identity))
        key = str(mono)
        out.setdefault(key, [0.0, n])[0] += float(coeff)
    return [(c, k, n) for k, (c, n) in sorted(out.items()) if c != 0.0]


def canonical_form(expr: MatrixExpr) -> str:
    """The term's identity up to a nonzero scale: sorted monomials divided by the first one's coefficient."""
    monos = expanded_monomials(expr)
    if not monos:
        return "0"
    lead = monos[0][0]
    return " + ".join(f"{float(sp.Float(c / lead, 6)):.6g}*{k}" for c, k, _ in monos)


def complexity(expr: MatrixExpr) -> int:
    """Σ over the expanded monomials of their matrix factors (δ rᵀ = 2, W G δ rᵀ = 4, rec_dW4 = 32)."""
    return sum(n for _, _, n in expanded_monomials(expr))


def generated_id(canonical: str) -> str:
    """'rec_T' + the first 8 hex digits of sha256('recurrent:' + canonical)."""
    return "rec_T" + hashlib.sha256(("recurrent:" + canonical).encode()).hexdigest()[:8]


def generated_candidates(prims: dict[str, MatrixExpr]) -> list[Candidate]:
    """The grammar of the module docstring over ``prims`` (rules.recurrent.RECURRENT_PRIMITIVES), in a fixed order."""
    r, delta, G, W, u, I = (prims[k] for k in ("r", "delta", "G", "W", "u", "I"))
    a4 = MatAdd(I, MatMul(sp.Integer(-1), W, G))      # I − W G
    a3 = MatAdd(I, MatMul(sp.Integer(-1), G, W))      # I − G W
    post: list[tuple[str, str, MatrixExpr, str]] = [
        ("d", "δ", delta, "delta"),
        ("Gd", "G δ", MatMul(G, delta), "G*delta"),
        ("Gu", "G u", MatMul(G, u), "G*u"),
        ("Ad", "(I − W G) δ", MatMul(a4, delta), "(I - W*G)*delta"),
        ("AGd", "(I − W G) G δ", MatMul(a4, G, delta), "(I - W*G)*G*delta"),
    ]
    pre: list[tuple[str, str, MatrixExpr, str]] = [
        ("r", "r", r, "r.T"),
        ("Wr", "Wᵀ r", MatMul(Transpose(W), r), "(r.T*W)"),
        ("A3r", "(I − G W)ᵀ(I − G W) r", MatMul(Transpose(a3), a3, r), "((I - G*W).T*(I - G*W)*r).T"),
        ("A4r", "(I − W G)ᵀ(I − W G) r", MatMul(Transpose(a4), a4, r), "((I - W*G).T*(I - W*G)*r).T"),
    ]
    out = [Candidate(f"neg_{pn}_{qn}", -1, MatMul(a, Transpose(b)), f"{at}*{bt}",
                     f"−[{ad}][{bd}]ᵀ: error-driven outer product (descent sign)")
           for pn, ad, a, at in post for qn, bd, b, bt in pre]
    out.append(Candidate("hebb_rr", 1, MatMul(r, Transpose(r)), "r*r.T", "r rᵀ: Hebbian (Oja's first half)"))
    out.append(Candidate("hebb_rrW", 1, MatMul(r, Transpose(MatMul(Transpose(W), r))), "r*(r.T*W)",
                         "r (rᵀ W): Oja's second half (alone)"))
    return out


__all__ = ["Candidate", "canonical_form", "complexity", "expanded_monomials", "generated_candidates",
           "generated_id"]
