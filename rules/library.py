"""The generated term library: rule terms from a grammar over the primitives, one term per canonical form.

Grammar (column-vector form, one layer; u post-synaptic n×1, v pre-synaptic m×1, g a 1×1 gate):

    base    u vᵀ  for u ∈ {y, e, 1} and v ∈ {x, e_pre, 1_pre, Wᵀy, Wᵀe}, plus decay W          (16 terms)
    gated   g · u vᵀ  for g ∈ {1ᵀy, yᵀW e_pre, eᵀW x}, u ∈ {y, e, 1}, v ∈ {x, e_pre, 1_pre}       (27 terms)

Oja's rule is then the pair y xᵀ and y (Wᵀy)ᵀ = y (yᵀW) with their own coefficients; F5–F8 of the paper's pool
are gated terms. A candidate is canonicalized by expanding it into normalized monomials (``rules.algebra``) and
scaling it so that its first monomial (in text order) has coefficient +1: two candidates with the same canonical
text are one term. Its id is ``"T" + sha256(canonical text)[:8]``, stable across releases and machines; a
candidate equal to a named term (F0 = −e xᵀ is e xᵀ up to sign) is that named term.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from sympy import MatrixExpr

from rules.algebra import Poly, expand, round_sig
from rules.primitives import W, e, e_pre, one, one_pre, x, y


class PolyTerm:
    """What every library term derives from its sympy expression ``expr``: the expanded polynomial, its text in
    user syntax, its LaTeX and its canonical identity."""

    expr: MatrixExpr

    @cached_property
    def poly(self) -> Poly:
        return expand(self.expr)

    @property
    def text(self) -> str:
        """The term in user syntax, e.g. 'y*x.T - y*(y.T*W)'."""
        return self.poly.text()

    def latex(self) -> str:
        return self.poly.latex()

    @cached_property
    def canonical(self) -> str:
        """The term's identity up to a nonzero scale factor (see :func:`canonical_text`)."""
        return canonical_text(self.poly)


@dataclass(frozen=True)
class Term(PolyTerm):
    """One library term F^r (an n×m sympy expression) with its description; certain=False if uncertain."""

    id: str
    name: str
    expr: MatrixExpr
    description: str
    certain: bool = True
    family: str = "named"
    """'named' (the paper's F0..F9, hebb), 'base' (u vᵀ and W) or 'gated' (g · u vᵀ)."""



def canonical_text(poly: Poly) -> str:
    """Canonical text of a term up to scale: monomials sorted, divided by the first one's coefficient."""
    items = poly.sorted_items()
    if not items:
        return "0"
    lead = items[0][1]
    return Poly(poly.shape, {mono: round_sig(c / lead, 6) for mono, c in items}).text(canonical=True)


def term_id(canonical: str) -> str:
    """Stable id of a generated term: 'T' + the first 8 hex digits of sha256(canonical text)."""
    return "T" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


#: post-synaptic vectors u (n×1), pre-synaptic vectors v (m×1, including the projections Wᵀy, Wᵀe), and gates
POST: dict[str, MatrixExpr] = {"y": y, "e": e, "1": one}
PRE: dict[str, MatrixExpr] = {"x": x, "e_pre": e_pre, "1_pre": one_pre, "Wᵀy": W.T * y, "Wᵀe": W.T * e}
PRE_DIRECT = ("x", "e_pre", "1_pre")
GATES: dict[str, MatrixExpr] = {"1ᵀy": one.T * y, "yᵀW e_pre": y.T * W * e_pre, "eᵀW x": e.T * W * x}


def _candidates() -> list[tuple[str, MatrixExpr, str]]:
    """(family, expression, description) of every grammar candidate, in grammar order."""
    out: list[tuple[str, MatrixExpr, str]] = []
    for vn, v in PRE.items():
        for un, u in POST.items():
            out.append(("base", u * v.T, f"{un} ({vn})ᵀ: outer product of a post and a pre vector"))
    out.append(("base", W, "W: decay (or growth) of every weight"))
    for gn, g in GATES.items():
        for vn in PRE_DIRECT:
            for un, u in POST.items():
                out.append(("gated", u * g * PRE[vn].T, f"({gn}) {un} {vn}ᵀ: outer product gated by {gn}"))
    return out


def generate(named: Sequence[Term], families: Sequence[str] = ("base", "gated")) -> list[Term]:
    """The grammar's terms of the given families, deduplicated by canonical form, in grammar order; a candidate
    equal to a named term is that term."""
    seen: dict[str, Term] = {t.canonical: t for t in named}
    out: list[Term] = []
    for family, expr, description in _candidates():
        if family not in families:
            continue
        poly = expand(expr)
        key = canonical_text(poly)
        if key in seen:
            if seen[key] not in out:
                out.append(seen[key])
            continue
        new = Term(term_id(key), poly.text(), expr, description, certain=True, family=family)
        seen[key] = new
        out.append(new)
    return out


def dedupe(terms: Iterable[Term]) -> list[Term]:
    """Terms with distinct canonical forms, first occurrence kept."""
    seen: set[str] = set()
    out = []
    for t in terms:
        if t.canonical not in seen:
            seen.add(t.canonical)
            out.append(t)
    return out
