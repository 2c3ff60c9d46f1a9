"""Monomial algebra of the rule language (docs/science.md S3): expanded, normalized products of primitives.

A rule is ΔW_ℓ = Σ_r θ_r F^r_ℓ. Every F^r expands into monomials c · (f_1 f_2 … f_k), each f a primitive of
``rules.primitives`` or its transpose. A monomial is kept in a normal form that makes equal products equal:

* cut the conformable chain wherever the inner dimension is 1 (a column vector meets a row vector);
* the segments between two cuts are 1×1 scalars s; since s = sᵀ and scalars commute, each is stored in the
  orientation with fewer transposes (then the lexicographically smaller text) and they are kept sorted;
* what remains is the *spine*: at most a leading R×1 segment and a trailing 1×C segment (or one segment
  with no cut at all, e.g. W).

For an n×m update the scalars sit at the first cut, e.g. F5 = −e (1ᵀy) xᵀ, F9 = y xᵀ − y (yᵀW); this also
gives the cheap evaluation order (yᵀW costs n·m, not n²·m). If the spine has no cut (e.g. (1ᵀy) W), the
scalars become ``sympy.Trace`` coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp
from sympy import MatAdd, MatMul, MatPow, MatrixExpr, MatrixSymbol, Trace, Transpose, ZeroMatrix

from rules.primitives import DIMS, LATEX_NAMES, PRIMITIVES, m, n

Factor = tuple[str, bool]
"""(primitive name, transposed)."""
Chain = tuple[Factor, ...]
Shape = tuple[str, str]

SCALAR: Shape = ("1", "1")
UPDATE: Shape = ("n", "m")
MAX_MONOMIALS = 64
"""Largest number of monomials a product may expand to (guards against (a+b)*(c+d)*… blow-up)."""
MAX_EXPONENT = 4
"""Largest integer power of a 1×1 scalar."""

_SYMPY_DIMS: dict[str, sp.Expr] = {"n": n, "m": m, "1": sp.Integer(1)}


class ExpressionError(ValueError):
    """An expression that is not a well-formed product/sum of primitives (shape mismatch, unknown node…)."""


def fmt_shape(shape: Shape) -> str:
    """'n×m' style text of a shape."""
    return f"{shape[0]}×{shape[1]}"


def _factor_shape(f: Factor) -> Shape:
    r, c = DIMS[f[0]]
    return (c, r) if f[1] else (r, c)


def _chain_shape(chain: Chain) -> Shape:
    return (_factor_shape(chain[0])[0], _factor_shape(chain[-1])[1])


def _chain_text(chain: Chain) -> str:
    return "*".join(name + (".T" if t else "") for name, t in chain)


def _chain_transpose(chain: Chain) -> Chain:
    return tuple((name, not t) for name, t in reversed(chain))


def _orient(chain: Chain) -> Chain:
    """Canonical orientation of a 1×1 chain s (s = sᵀ): fewer transposes first, then smaller text."""
    return min(chain, _chain_transpose(chain), key=lambda c: (sum(t for _, t in c), _chain_text(c)))


def _factor_sympy(f: Factor) -> MatrixExpr:
    sym = PRIMITIVES[f[0]]
    return sym.T if f[1] else sym


def _chain_sympy(chain: Chain) -> MatrixExpr:
    return _factor_sympy(chain[0]) if len(chain) == 1 else MatMul(*map(_factor_sympy, chain))


@dataclass(frozen=True)
class Monomial:
    """A product of primitives in normal form: spine segments plus sorted 1×1 scalar chains (unit coef)."""

    spine: tuple[Chain, ...] = ()
    scalars: tuple[Chain, ...] = ()

    @staticmethod
    def from_chain(chain: Iterable[Factor], scalars: Iterable[Chain] = ()) -> Monomial:
        """Normalize a conformable flat chain (cut at inner dimension 1, pull out the 1×1 segments)."""
        chain = tuple(chain)
        segments: list[Chain] = []
        start = 0
        for i in range(1, len(chain)):
            if _factor_shape(chain[i - 1])[1] == "1":
                segments.append(chain[start:i])
                start = i
        if chain:
            segments.append(chain[start:])
        spine = tuple(s for s in segments if _chain_shape(s) != SCALAR)
        pulled = [_orient(s) for s in segments if _chain_shape(s) == SCALAR]
        return Monomial(spine, tuple(sorted([*scalars, *pulled], key=_chain_text)))

    @property
    def shape(self) -> Shape:
        if not self.spine:
            return SCALAR
        return (_chain_shape(self.spine[0])[0], _chain_shape(self.spine[-1])[1])

    def transpose(self) -> Monomial:
        return Monomial(tuple(_chain_transpose(s) for s in reversed(self.spine)), self.scalars)

    def times(self, other: Monomial) -> Monomial:
        """Matrix product; a 1×1 factor commutes into the other operand's chain."""
        sa, sb = self.shape, other.shape
        if sa == SCALAR or sb == SCALAR:
            spine = other.spine if sa == SCALAR else self.spine
            return Monomial(spine, tuple(sorted(self.scalars + other.scalars, key=_chain_text)))
        if sa[1] != sb[0]:
            raise ExpressionError(f"shape mismatch: cannot multiply {fmt_shape(sa)} by {fmt_shape(sb)}")
        flat = [f for seg in self.spine + other.spine for f in seg]
        return Monomial.from_chain(flat, self.scalars + other.scalars)

    def pieces(self) -> list[tuple[Chain, bool]]:
        """Ordered (chain, is_scalar) pieces: scalars at the first cut (or in front when there is none)."""
        sc = [(s, True) for s in self.scalars]
        spine = [(s, False) for s in self.spine]
        if len(spine) == 2:
            return [spine[0], *sc, spine[1]]
        if len(spine) == 1 and self.shape[1] == "1" and self.shape[0] != "1":
            return [spine[0], *sc]
        return [*sc, *spine]

    @property
    def needs_trace(self) -> bool:
        """True when the spine has no cut, so the scalars cannot sit inside the chain (e.g. (1ᵀy) W)."""
        return len(self.spine) == 1 and bool(self.scalars) and "1" not in self.shape

    @cached_property
    def text(self) -> str:
        """User-syntax text; multi-factor pieces are parenthesized, e.g. 'y*(y.T*W*e_pre)*e_pre.T'."""
        pieces = self.pieces()
        if not pieces:
            return "1"
        texts = [_chain_text(c) for c, _ in pieces]
        if len(pieces) > 1:
            texts = [f"({t})" if len(c) > 1 else t for t, (c, _) in zip(texts, pieces, strict=True)]
        return "*".join(texts)

    def to_sympy(self) -> MatrixExpr:
        """Flat sympy chain (scalars in the chain), or Trace coefficients when the spine has no cut."""
        if not self.spine and not self.scalars:
            return sp.Identity(1)
        if self.needs_trace:
            traces = [Trace(_chain_sympy(s)) for s in self.scalars]
            return MatMul(*traces, *map(_factor_sympy, self.spine[0]))
        flat = [f for c, _ in self.pieces() for f in c]
        return _chain_sympy(tuple(flat))

    def latex(self) -> str:
        """LaTeX via sympy's printer; 1×1 scalar pieces in parentheses (tr(·) when the spine has no cut)."""
        parts = []
        for chain, is_scalar in self.pieces():
            body = sp.latex(_chain_sympy(chain), symbol_names=LATEX_NAMES)
            if is_scalar and self.needs_trace:
                body = rf"\operatorname{{tr}}\left({body}\right)"
            elif is_scalar and len(self.pieces()) > 1:
                body = rf"\left({body}\right)"
            parts.append(body)
        return " ".join(parts) or "1"


def _num(c: float) -> str:
    return repr(float(c))


@dataclass(frozen=True)
class Poly:
    """Σ c_k · monomial_k, all of one shape; insertion order kept (display), ``sorted_items`` canonical."""

    shape: Shape
    terms: Mapping[Monomial, float] = field(default_factory=dict)

    @staticmethod
    def constant(value: float) -> Poly:
        return Poly(SCALAR, {Monomial(): float(value)} if value != 0 else {})

    @staticmethod
    def primitive(name: str) -> Poly:
        return Poly(DIMS[name], {Monomial.from_chain([(name, False)]): 1.0})

    def __len__(self) -> int:
        return len(self.terms)

    def __add__(self, other: Poly) -> Poly:
        if self.shape != other.shape:
            raise ExpressionError(
                f"shape mismatch: cannot add {fmt_shape(self.shape)} and {fmt_shape(other.shape)}"
            )
        out = dict(self.terms)
        for mono, c in other.terms.items():
            out[mono] = out.get(mono, 0.0) + c
        return Poly(self.shape, {k: v for k, v in out.items() if v != 0.0})

    def scale(self, c: float) -> Poly:
        return Poly(self.shape, {k: v * c for k, v in self.terms.items() if v * c != 0.0})

    def __neg__(self) -> Poly:
        return self.scale(-1.0)

    def __sub__(self, other: Poly) -> Poly:
        return self + (-other)

    def __mul__(self, other: Poly) -> Poly:
        sa, sb = self.shape, other.shape
        if sa == SCALAR:
            shape = sb
        elif sb == SCALAR:
            shape = sa
        elif sa[1] == sb[0]:
            shape = (sa[0], sb[1])
        else:
            raise ExpressionError(f"shape mismatch: cannot multiply {fmt_shape(sa)} by {fmt_shape(sb)}")
        if len(self) * len(other) > MAX_MONOMIALS:
            raise ExpressionError(
                f"expression too large: more than {MAX_MONOMIALS} monomials after expansion"
            )
        out: dict[Monomial, float] = {}
        for ma, ca in self.terms.items():
            for mb, cb in other.terms.items():
                mono = ma.times(mb)
                out[mono] = out.get(mono, 0.0) + ca * cb
        return Poly(shape, {k: v for k, v in out.items() if v != 0.0})

    def power(self, k: int) -> Poly:
        """Integer power 0 ≤ k ≤ MAX_EXPONENT of a 1×1 scalar."""
        if self.shape != SCALAR:
            raise ExpressionError(f"'**' is only allowed on a 1×1 scalar, got {fmt_shape(self.shape)}")
        if not 0 <= k <= MAX_EXPONENT:
            raise ExpressionError(f"exponent {k} is outside 0..{MAX_EXPONENT}")
        out = Poly.constant(1.0)
        for _ in range(k):
            out = out * self
        return out

    def transpose(self) -> Poly:
        return Poly((self.shape[1], self.shape[0]), {k.transpose(): v for k, v in self.terms.items()})

    def sorted_items(self) -> list[tuple[Monomial, float]]:
        return sorted(self.terms.items(), key=lambda kv: kv[0].text)

    def text(self, *, canonical: bool = False) -> str:
        """User-syntax text. canonical=True: monomials sorted, coefficients rounded to 6 significant digits.

        The zero update prints as '0*W' so that every text parses back.
        """
        items = self.sorted_items() if canonical else list(self.terms.items())
        if canonical:
            items = [(mono, round_sig(c, 6)) for mono, c in items]
        parts = []
        for mono, c in items:
            body = mono.text
            parts.append(body if c == 1 else "-" + body if c == -1 else f"{_num(c)}*{body}")
        if not parts:
            return "0*W" if self.shape == UPDATE else "0"  # parseable zero update
        return join_signed(parts)

    def latex(self) -> str:
        """LaTeX of Σ c_k monomial_k in insertion order."""
        return join_signed([signed_latex(c, mono.latex()) for mono, c in self.terms.items()]) or "0"

    def to_sympy(self) -> MatrixExpr:
        """MatAdd of MatMul(coefficient, chain…) in canonical order; ZeroMatrix when empty."""
        if not self.terms:
            return ZeroMatrix(*(_SYMPY_DIMS[d] for d in self.shape))
        exprs = []
        for mono, c in self.sorted_items():
            body = mono.to_sympy()
            if c == 1:
                exprs.append(body)
            else:
                args = body.args if isinstance(body, MatMul) else (body,)
                exprs.append(MatMul(sp.Integer(-1) if c == -1 else sp.Float(c), *args))
        return exprs[0] if len(exprs) == 1 else MatAdd(*exprs)


def round_sig(value: float, sig: int) -> float:
    """value rounded to ``sig`` significant digits."""
    return float(f"{value:.{sig}g}")


def signed_latex(c: float, body: str) -> str:
    """'-0.5 body' / 'body' (|c| = 1) with the number printed by sympy's LaTeX printer."""
    num = "" if abs(c) == 1 else sp.latex(sp.Float(abs(c))) + " "
    return ("-" if c < 0 else "") + num + body


def join_signed(parts: list[str]) -> str:
    """Join signed summands: ['a', '-b'] → 'a - b'."""
    out = parts[0]
    for p in parts[1:]:
        out += f" - {p[1:]}" if p.startswith("-") else f" + {p}"
    return out


def expand(expr: sp.Basic) -> Poly:
    """Expand a sympy expression over the primitives into a Poly (raises ExpressionError if unsupported)."""
    if isinstance(expr, MatrixSymbol):
        name = expr.name
        if PRIMITIVES.get(name) != expr:
            raise ExpressionError(f"unknown matrix symbol {name!r} {expr.shape}")
        return Poly.primitive(name)
    if isinstance(expr, ZeroMatrix):
        return Poly(tuple(str(d) for d in expr.shape))  # type: ignore[arg-type]
    if isinstance(expr, Transpose):
        return expand(expr.arg).transpose()
    if isinstance(expr, (MatAdd, sp.Add)):
        return _sum(expand(a) for a in expr.args)
    if isinstance(expr, (MatMul, sp.Mul)):
        out = Poly.constant(1.0)
        for a in expr.args:
            out = out * expand(a)
        return out
    if isinstance(expr, (MatPow, sp.Pow)):
        base, k = expr.args
        if not (k.is_Integer and 0 <= int(k) <= MAX_EXPONENT):
            raise ExpressionError(f"unsupported exponent {k}")
        return expand(base).power(int(k))
    if isinstance(expr, Trace):
        inner = expand(expr.arg)
        if inner.shape != SCALAR:
            raise ExpressionError(f"Trace is only supported on 1×1 products, got {fmt_shape(inner.shape)}")
        return inner
    if isinstance(expr, sp.Number):
        value = float(expr)
        if not math.isfinite(value):
            raise ExpressionError(f"non-finite coefficient {expr}")
        return Poly.constant(value)
    raise ExpressionError(f"unsupported expression node {type(expr).__name__}: {expr}")


def _sum(polys: Iterable[Poly]) -> Poly:
    it = iter(polys)
    out = next(it)
    for p in it:
        out = out + p
    return out
