"""A plasticity rule ΔW_ℓ = Σ_r θ_r F^r_ℓ (docs/science.md S3): one scalar θ_r per term, shared by all layers.

Term ids are library ids (``rules.terms.TERMS``: F0..F9, hebb) or custom monomials ``"X:<monomial>"`` whose
text (user syntax, e.g. ``"X:y*(y.T*W)"``) *is* the term: ``Rule({"X:y*(y.T*W)": -0.5})`` rebuilds its
expression by parsing it, so custom rules survive JSON / a database without any registry.

Identity: ``canonical()`` is the expanded Σ c_k·monomial_k with monomials in normal form (see rules.terms),
sorted by text, coefficients rounded to 6 significant digits; ``hash()`` is its sha256. It does not depend on
dict order, on how the user wrote the expression, nor on the term decomposition.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property, lru_cache

import sympy as sp
from sympy import MatrixExpr

from rules.base import CoefficientRule, finite_coefficient
from rules.parser import parse_poly
from rules.terms import (
    TERMS,
    UPDATE,
    ExpressionError,
    Monomial,
    Poly,
    expand,
    fmt_shape,
    join_signed,
    round_sig,
    signed_latex,
    term,
)

CUSTOM_PREFIX = "X:"
CANONICAL_DIGITS = 6


@lru_cache(maxsize=4096)
def _custom_monomial(text: str) -> tuple[Monomial, float]:
    """Parse the text of a custom term: exactly one n×m monomial with its coefficient."""
    poly = parse_poly(text)
    if len(poly) != 1:
        raise ValueError(f"a custom term must be a single nonzero monomial, got {poly.text()!r}")
    (mono, c), = poly.terms.items()
    return mono, c


def term_poly(term_id: str) -> Poly:
    """Expanded monomials of a library id or a custom "X:<monomial>" id (unit coefficient)."""
    if term_id.startswith(CUSTOM_PREFIX):
        return Poly(UPDATE, {_custom_monomial(term_id[len(CUSTOM_PREFIX):])[0]: 1.0})
    return TERMS[term_id].poly


def _order_key(term_id: str) -> tuple[int, str]:
    ids = list(TERMS)
    return (ids.index(term_id), "") if term_id in TERMS else (len(ids), term_id)


class Rule(CoefficientRule):
    """ΔW = Σ θ_r F_r over library ids / names and custom ``"X:<monomial>"`` terms."""

    PRUNE_TOL = 1e-4
    """``pruned`` default: absolute, since θ are per-sample learning rates, comparable across rules."""

    def __init__(self, coefficients: Mapping[str, float], name: str | None = None) -> None:
        coefs: dict[str, float] = {}
        for key, value in coefficients.items():
            theta = finite_coefficient(key, value)
            if key.startswith(CUSTOM_PREFIX):
                mono, c = _custom_monomial(key[len(CUSTOM_PREFIX):])
                key, theta = CUSTOM_PREFIX + mono.text, theta * c
            else:
                key = term(key).id
            coefs[key] = coefs.get(key, 0.0) + theta
        self._coefficients = {k: coefs[k] for k in sorted(coefs, key=_order_key)}
        self.name = name

    # --- views -------------------------------------------------------------------------------------------
    @cached_property
    def poly(self) -> Poly:
        """Expanded Σ θ_r F_r as monomials."""
        out = Poly(UPDATE)
        for k in self.terms:
            out = out + term_poly(k).scale(self._coefficients[k])
        return out

    @cached_property
    def expression(self) -> MatrixExpr:
        """sympy Σ θ_r F_r, expanded: MatAdd of MatMul(coefficient, chain…) in canonical monomial order.

        Chains are flat (scalars sit at the first cut; ``Trace`` coefficients when there is none);
        ZeroMatrix(n, m) when every θ is zero. Equal rules give equal expressions.
        """
        return self.poly.to_sympy()

    # --- printing ------------------------------------------------------------------------------------------
    def _summands(self) -> list[tuple[float, Poly]]:
        """(coefficient, unit poly) per term; a single-monomial term's sign is folded into the coefficient."""
        out = []
        for k in self.terms:
            poly, theta = term_poly(k), self._coefficients[k]
            if len(poly) == 1:
                (mono, c), = poly.terms.items()
                out.append((theta * c, Poly(UPDATE, {mono: 1.0})))
            else:
                out.append((theta, poly))
        return out

    def to_text(self) -> str:
        """The rule in user syntax, e.g. '-0.012*e*x.T + 0.065*e*e_pre.T + 0.008*(y*x.T - y*(y.T*W))'."""
        parts = []
        for c, poly in self._summands():
            body = poly.text() if len(poly) == 1 else f"({poly.text()})"
            parts.append(body if c == 1 else "-" + body if c == -1 else f"{c!r}*{body}")
        return join_signed(parts) if parts else "0*W"

    def latex(self) -> str:
        """LaTeX via sympy's printer, e.g. '- 0.012 e x^{T} + 0.008 \\left(y x^{T} - y y^{T} W\\right)'."""
        parts = []
        for c, poly in self._summands():
            body = poly.latex() if len(poly) == 1 else rf"\left({poly.latex()}\right)"
            parts.append(signed_latex(c, body))
        return join_signed(parts) if parts else "0"

    def canonical(self) -> str:
        """Deterministic text of the expanded expression, coefficients rounded to 6 significant digits."""
        return self.poly.text(canonical=True)

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_poly(cls, poly: Poly, name: str | None = None) -> Rule:
        """Decompose expanded monomials onto the library (see ``decompose``)."""
        if poly.shape != UPDATE:
            raise ExpressionError(f"the expression must be an n×m weight update, got {fmt_shape(poly.shape)}")
        return cls(decompose(poly), name)

    @classmethod
    def from_expression(cls, expr: sp.Basic, name: str | None = None) -> Rule:
        """Rule from a sympy expression over the primitives (ExpressionError / ValueError if invalid)."""
        return cls.from_poly(expand(expr), name)

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> Rule:
        """Rule from user text via the safe parser (RuleSyntaxError if invalid)."""
        return cls.from_poly(parse_poly(text), name)


def decompose(poly: Poly) -> dict[str, float]:
    """θ with Σ θ_r expand(F_r) = poly, preferring library terms.

    Multi-monomial terms (F9 = y xᵀ − y (yᵀW)) are used only when all their monomials are present with one
    common ratio (equal at 6 significant digits); single-monomial terms (F0..F8, hebb) then take their
    monomial; every other monomial becomes a custom term ``"X:<monomial>"`` with coefficient 1·θ.
    """
    rest = dict(poly.terms)
    coefs: dict[str, float] = {}
    for tid, t in TERMS.items():
        tp = t.poly.terms
        if len(tp) < 2 or not all(mono in rest for mono in tp):
            continue
        ratios = [rest[mono] / c for mono, c in tp.items()]
        if len({round_sig(r, CANONICAL_DIGITS) for r in ratios}) == 1:
            coefs[tid] = ratios[0]
            for mono in tp:
                del rest[mono]
    single = {
        mono: (tid, c) for tid, t in TERMS.items() if len(t.poly) == 1 for mono, c in t.poly.terms.items()
    }
    for mono, c in rest.items():
        if mono in single:
            tid, tc = single[mono]
            coefs[tid] = coefs.get(tid, 0.0) + c / tc
        else:
            coefs[CUSTOM_PREFIX + mono.text] = c
    return coefs
