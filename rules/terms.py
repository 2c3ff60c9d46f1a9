"""The rule terms: the paper's named pool F0..F9 (docs/science.md S3) and the generated library (``rules.library``).

``TERMS`` holds every term by id: the named ones first (F0..F9, hebb), then the grammar's terms that are not
already named (ids ``T<hash>``). ``POOLS`` names term lists: ``paper3``, ``bio10``, ``library`` (the 16 base
terms u vᵀ and W) and ``library_gated`` (the base terms and the 27 gated ones). The monomial algebra lives in
``rules.algebra`` and is re-exported here.
"""

from __future__ import annotations

from rules.algebra import (  # noqa: F401  (re-exported: the public algebra of the rule language)
    MAX_EXPONENT,
    MAX_MONOMIALS,
    SCALAR,
    UPDATE,
    Chain,
    ExpressionError,
    Factor,
    Monomial,
    Poly,
    Shape,
    expand,
    fmt_shape,
    join_signed,
    round_sig,
    signed_latex,
)
from rules.library import Term, generate
from rules.primitives import W, e, e_pre, one, x, y

_NAMED = [
    Term("F0", "pseudo_grad", -e * x.T, "−e xᵀ: pseudo-gradient (the backprop / FA update)"),
    Term("F1", "post_err_pre", -y * e_pre.T, "−y e_preᵀ: post activity × pre-synaptic error"),
    Term("F2", "ehebb", -e * e_pre.T, "−e e_preᵀ: error-based Hebbian (eHebb)"),
    Term("F3", "decay", -W, "−W: weight decay", certain=False),
    Term("F4", "pre_err_bias", -one * e_pre.T, "−1 e_preᵀ: pre-synaptic error, same for every post unit",
         certain=False),
    Term("F5", "rate_scaled_grad", -e * (one.T * y) * x.T,
         "−(1ᵀy) e xᵀ: pseudo-gradient scaled by total activity", certain=False),
    Term("F6", "gated_post_err_pre", -y * (y.T * W * e_pre) * e_pre.T,
         "−(yᵀW e_pre) y e_preᵀ: post × pre-error gated by yᵀW e_pre", certain=False),
    Term("F7", "gated_grad", -e * (y.T * W * e_pre) * x.T,
         "−(yᵀW e_pre) e xᵀ: pseudo-gradient gated by yᵀW e_pre", certain=False),
    Term("F8", "cross_gated_post_err_pre", -y * (x.T * W.T * e) * e_pre.T,
         "−(xᵀWᵀe) y e_preᵀ: post × pre-error gated by xᵀWᵀe", certain=False),
    Term("F9", "oja", y * x.T - y * (y.T * W), "y xᵀ − y (yᵀW): Oja's subspace rule (evaluated as y (yᵀW))"),
    Term("hebb", "hebb", y * x.T, "y xᵀ: plain Hebbian (unstable alone; F9 is its Oja-stabilized form)"),
]

_BASE = generate(_NAMED, ("base",))
_GENERATED = generate(_NAMED)

TERMS: dict[str, Term] = {t.id: t for t in [*_NAMED, *_GENERATED]}
"""Terms by id: F0..F9 (docs/science.md S3 table, F3–F8 uncertain), ``hebb``, then the generated ``T<hash>`` terms."""

POOLS: dict[str, list[str]] = {
    "paper3": ["F0", "F2", "F9"],
    "bio10": [f"F{i}" for i in range(10)],
    "library": [t.id for t in _BASE],
    "library_gated": [t.id for t in _GENERATED],
}
"""Named term pools: the released code's three terms, the paper's F_bio (R = 10), the 16-term base library and
the 43-term library with gates."""

_BY_NAME: dict[str, Term] = {t.name: t for t in TERMS.values()}


def term(id_or_name: str) -> Term:
    """Library term by id ('F9') or name ('oja'); KeyError listing the known ids otherwise."""
    found = TERMS.get(id_or_name) or _BY_NAME.get(id_or_name)
    if found is None:
        known = f"known ids: {', '.join(TERMS)}; names: {', '.join(_BY_NAME)}"
        raise KeyError(f"unknown term {id_or_name!r}; {known}")
    return found
