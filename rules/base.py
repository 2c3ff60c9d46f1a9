"""Behaviour shared by the coefficient-vector rules (rules.rule.Rule, rules.recurrent.RecurrentRule, ...).

A subclass stores ``_coefficients`` (θ by canonical term id, in its stable order) and ``name``, is built as
``cls(coefficients, name)``, and provides ``canonical()``, ``to_text()`` and ``latex()``. Its ``expression`` is
ΔW = Σ_k θ_k F_k over the class's ``LIBRARY`` (ZeroMatrix of ``ZERO_SHAPE`` when every θ is 0), unless the subclass
overrides it (the feedforward and unsupervised rules expand it into monomials).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from typing import Any, ClassVar, Self, TypeVar

import sympy as sp
from sympy import MatAdd, MatMul, MatrixExpr, ZeroMatrix

from rules.terms import round_sig

K = TypeVar("K")
V = TypeVar("V")


class LazyMapping(Mapping[K, V]):
    """A read-only mapping that ``build()`` makes on its first use (a lookup, ``in``, iteration, ``len``), then
    keeps: a library that is costly to generate is paid for by its first user, not by whoever imports its module.
    Threads that ask at once wait for one build."""

    def __init__(self, build: Callable[[], Mapping[K, V]]) -> None:
        self._build = build
        self._data: Mapping[K, V] | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether ``build()`` has run."""
        return self._data is not None

    def _mapping(self) -> Mapping[K, V]:
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = self._build()
        return self._data

    def __getitem__(self, key: K) -> V:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self._mapping())!r})"


def finite_coefficient(key: str, value: float) -> float:
    """``float(value)``; ValueError naming ``key`` when it is not finite."""
    theta = float(value)
    if not math.isfinite(theta):
        raise ValueError(f"coefficient of {key!r} is not finite: {value!r}")
    return theta


class CoefficientRule:
    """ΔW = Σ θ_k F_k with one scalar θ per term id; equality and hashing follow ``canonical()``."""

    PRUNE_TOL: float = 1e-4
    """Default ``pruned`` threshold."""
    FAMILY: str = "feedforward"
    """The rule family (``feedforward`` ΔW_ℓ over layer primitives, ``recurrent`` ΔW of a fixed-point network):
    the column ``rules.family`` and the spec's ``rule.family``."""

    LIBRARY: ClassVar[Mapping[str, Any]]
    """The term library: term id → term with ``expr`` (its sympy matrix F_k), in the library's stable order."""
    ZERO_SHAPE: ClassVar[tuple[sp.Expr, sp.Expr]]
    """(rows, columns) of ΔW, the shape of the ZeroMatrix that ``expression`` is when every θ is 0."""

    _coefficients: dict[str, float]
    name: str | None

    @staticmethod
    def collect(coefficients: Mapping[str, float], lookup: Callable[[str], Any],
                order: Mapping[str, Any]) -> dict[str, float]:
        """{term id: θ} from ids or names (``lookup`` resolves either to a term with an ``id``; an unknown one is a
        ValueError), equal terms summed, in the library's ``order``; a non-finite θ is a ValueError."""
        coefs: dict[str, float] = {}
        for key, value in coefficients.items():
            theta = finite_coefficient(key, value)
            try:
                tid = lookup(key).id
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
            coefs[tid] = coefs.get(tid, 0.0) + theta
        return {k: coefs[k] for k in order if k in coefs}

    # --- views -------------------------------------------------------------------------------------------
    @property
    def coefficients(self) -> dict[str, float]:
        """θ by term id in the rule's stable order, zeros included."""
        return dict(self._coefficients)

    @property
    def terms(self) -> list[str]:
        """Ids with a nonzero coefficient, in the stable order."""
        return [k for k, v in self._coefficients.items() if v != 0]

    @cached_property
    def expression(self) -> MatrixExpr:
        """sympy ΔW = Σ_k θ_k F_k (unevaluated MatAdd of MatMul(θ_k, F_k) over ``LIBRARY``);
        ZeroMatrix(*ZERO_SHAPE) when every θ is 0."""
        parts = [MatMul(sp.Float(self._coefficients[k]), self.LIBRARY[k].expr) for k in self.terms]
        if not parts:
            return ZeroMatrix(*self.ZERO_SHAPE)
        return parts[0] if len(parts) == 1 else MatAdd(*parts)

    # --- transforms ----------------------------------------------------------------------------------------
    def pruned(self, tol: float | None = None) -> Self:
        """Drop terms with |θ| < tol (absolute; default ``PRUNE_TOL``)."""
        tol = self.PRUNE_TOL if tol is None else tol
        return type(self)({k: v for k, v in self._coefficients.items() if abs(v) >= tol}, self.name)

    def rounded(self, sig: int = 3) -> Self:
        """Every θ rounded to ``sig`` significant digits."""
        if sig < 1:
            raise ValueError("sig must be >= 1")
        return type(self)({k: round_sig(v, sig) for k, v in self._coefficients.items()}, self.name)

    # --- identity / serialisation ----------------------------------------------------------------------------
    def canonical(self) -> str:
        raise NotImplementedError

    def to_text(self) -> str:
        raise NotImplementedError

    def latex(self) -> str:
        raise NotImplementedError

    def id_canonical(self, prefix: str, digits: int = 6) -> str:
        """``prefix`` and the nonzero θ_k (``digits`` significant digits) times their term ids in library order, e.g.
        'recurrent/v1: 0.25*rec_dW3 + -0.01*rec_decay' ('<prefix> 0' when none is left): the identity of a rule
        whose terms are linearly independent, so equal text ⇔ equal rule."""
        body = " + ".join(f"{round_sig(self._coefficients[k], digits)!r}*{k}" for k in self.terms
                          if round_sig(self._coefficients[k], digits) != 0)
        return f"{prefix} {body or '0'}"

    def hash(self) -> str:
        """sha256 hex digest of ``canonical()``."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def srepr(self) -> str:
        return sp.srepr(self.expression)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: name, expression (text), latex, coefficients, terms, hash, srepr."""
        return {
            "name": self.name,
            "expression": self.to_text(),
            "latex": self.latex(),
            "coefficients": self.coefficients,
            "terms": self.terms,
            "hash": self.hash(),
            "srepr": self.srepr(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of ``to_dict`` (uses ``coefficients`` and ``name``)."""
        return cls(data["coefficients"], data.get("name"))

    # --- dunder --------------------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.canonical() == other.canonical()

    def __hash__(self) -> int:
        return hash(self.canonical())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._coefficients!r}, name={self.name!r})"

    def __str__(self) -> str:
        return self.to_text()
