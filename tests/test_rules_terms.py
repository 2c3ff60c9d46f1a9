"""Term library and Rule: shapes, decomposition, canonical hash, pruning / rounding / LaTeX."""

from __future__ import annotations

import json

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import POOLS, PRIMITIVES, TERMS, Rule, Term, term
from rules.primitives import W, e, e_pre, m, n, one, x, y
from rules.terms import expand

API_EXAMPLE = "-0.012*e*x.T + 0.065*e*e_pre.T + 0.008*(y*x.T - y*(y.T*W))"


def test_primitive_shapes() -> None:
    shapes = {k: v.shape for k, v in PRIMITIVES.items()}
    assert shapes == {"x": (m, 1), "y": (n, 1), "e": (n, 1), "e_pre": (m, 1), "W": (n, m), "one": (n, 1),
                      "one_pre": (m, 1)}


@pytest.mark.parametrize("tid", list(TERMS))
def test_every_term_is_an_update(tid: str) -> None:
    t = TERMS[tid]
    assert isinstance(t, Term) and t.id == tid
    assert t.expr.shape == (n, m)
    assert t.poly.shape == ("n", "m")
    assert Rule.parse(t.text).hash() == Rule({tid: 1.0}).hash()


def test_library_matches_science_table() -> None:
    assert list(TERMS)[:11] == [f"F{i}" for i in range(10)] + ["hebb"]
    assert all(t.startswith("T") for t in list(TERMS)[11:])
    assert [TERMS[f"F{i}"].certain for i in range(10)] == [True] * 3 + [False] * 6 + [True]
    assert {TERMS[k].name for k in ("F0", "F2", "F3", "F9")} == {"pseudo_grad", "ehebb", "decay", "oja"}
    assert expand(TERMS["F0"].expr).text() == "-e*x.T"
    assert TERMS["F9"].text == "y*x.T - y*(y.T*W)"
    assert TERMS["F5"].text == "-e*(one.T*y)*x.T"
    assert TERMS["F6"].text == "-y*(y.T*W*e_pre)*e_pre.T"
    # sympy value checks of the written forms
    assert sp.simplify(TERMS["F9"].expr - (y * x.T - y * y.T * W)) == sp.ZeroMatrix(n, m)
    assert Rule({"F8": 1}).hash() == Rule.from_expression(-y * (e.T * W * x) * e_pre.T).hash()
    assert Rule({"F4": 1}).hash() == Rule.from_expression(-one * e_pre.T).hash()
    assert POOLS["paper3"] == ["F0", "F2", "F9"] and POOLS["bio10"] == [f"F{i}" for i in range(10)]


def test_term_lookup() -> None:
    assert term("oja") is TERMS["F9"] and term("F0").name == "pseudo_grad"
    with pytest.raises(KeyError, match="F0"):
        term("nope")


def test_api_example_decomposes() -> None:
    r = Rule.parse(API_EXAMPLE)
    assert r.coefficients == pytest.approx({"F0": 0.012, "F2": -0.065, "F9": 0.008})
    assert r.terms == ["F0", "F2", "F9"]
    assert r.to_text() == API_EXAMPLE
    assert r == Rule({"F9": 0.008, "F2": -0.065, "F0": 0.012})


def test_canonical_independent_of_writing() -> None:
    variants = ["-0.03*e*x.T", "-(0.03*e)*x.T", "-0.03*e@x.T", "(x*e.T).T*(-0.03)", "0.03*-e*x.T"]
    assert len({Rule.parse(v).canonical() for v in variants}) == 1
    from_sympy = Rule.from_expression(-(0.03 * e) * x.T)
    assert from_sympy.hash() == Rule.parse(variants[0]).hash() == Rule({"F0": 0.03}).hash()


def test_hash_stable_across_dict_order() -> None:
    a = Rule({"F0": 0.1, "F2": -0.05, "F9": 0.01, "X:(one.T*y)*W": 0.2})
    b = Rule({"X:(one.T*y)*W": 0.2, "F9": 0.01, "F2": -0.05, "F0": 0.1})
    assert a.canonical() == b.canonical() and a.hash() == b.hash()
    assert a.terms == b.terms == ["F0", "F2", "F9", "X:(one.T*y)*W"]
    assert len(a.hash()) == 64
    assert Rule({"F0": 0.1}).hash() != Rule({"F0": 0.100001}).hash()
    assert Rule({"F0": 0.1}).hash() == Rule({"F0": 0.1000001}).hash()  # 6 significant digits


def test_oja_recognized_only_with_equal_coefficients() -> None:
    assert Rule.parse("0.5*y*x.T - 0.5*y*(y.T*W)").coefficients == {"F9": 0.5}
    assert Rule.parse("0.5*y*x.T - 0.5*y*y.T*W").coefficients == {"F9": 0.5}
    split = Rule.parse("0.7*y*x.T - 0.5*y*(y.T*W)")
    assert split.coefficients == {"hebb": 0.7, term("y*(y.T*W)").id: -0.5}   # the generated library term
    assert split.hash() == Rule({"F9": 0.5, "hebb": 0.2}).hash()


def test_scalar_factors_commute_into_the_chain() -> None:
    assert Rule.parse("(one.T*y)*e*x.T").coefficients == {"F5": -1.0}
    assert Rule.parse("-(y.T*W*e_pre)*y*e_pre.T").coefficients == {"F6": 1.0}
    assert Rule.parse("(e_pre.T*W.T*y)*e*x.T").coefficients == {"F7": -1.0}  # sᵀ = s
    assert Rule.parse("-(x.T*W.T*e)*y*e_pre.T").coefficients == {"F8": 1.0}


def test_custom_terms_round_trip() -> None:
    r = Rule.parse("(one.T*y)*W + 2*(y.T*y)**2*e*x.T - y*(y.T*W)")
    assert set(r.terms) == {"X:(one.T*y)*W", "X:e*(y.T*y)*(y.T*y)*x.T", term("y*(y.T*W)").id}
    again = Rule(json.loads(json.dumps(r.to_dict()))["coefficients"])
    assert again.hash() == r.hash() == Rule.parse(r.to_text()).hash()
    assert isinstance(r.expression, sp.MatAdd)
    assert any(isinstance(a, sp.Trace) for a in sp.preorder_traversal(r.expression))
    # a custom id is normalized to the canonical monomial text
    assert Rule({"X:y*y.T*W": 1}).terms == ["X:y*(y.T*W)"]
    with pytest.raises(ValueError):
        Rule({"X:e*x.T + y*x.T": 1.0})


def test_zero_rule() -> None:
    z = Rule({"F0": 0.0})
    assert z.terms == [] and z.expression == sp.ZeroMatrix(n, m) and z.canonical() == "0*W"
    assert Rule.parse(z.to_text()).hash() == z.hash() == Rule.parse("e*x.T - e*x.T").hash()


def test_pruned_rounded_latex_dict() -> None:
    r = Rule({"F0": 0.0123456, "F2": -0.0654321, "F9": 0.00001, "F3": 0.0}, name="demo")
    p = r.pruned(1e-4)
    assert p.terms == ["F0", "F2"] and p.name == "demo"
    assert r.rounded(3).coefficients == {"F0": 0.0123, "F2": -0.0654, "F3": 0.0, "F9": 1e-05}
    tex = Rule.parse(API_EXAMPLE).latex()
    assert r"e_{\mathrm{pre}}^{T}" in tex and "x^{T}" in tex and r"\left(y x^{T} - y y^{T} W\right)" in tex
    assert Rule({"F5": 1}).latex() == r"-e \left(\mathbf{1}^{T} y\right) x^{T}"
    d = r.to_dict()
    assert set(d) == {"name", "expression", "latex", "coefficients", "terms", "hash", "srepr"}
    assert Rule.parse(d["expression"]).hash() == d["hash"] and json.dumps(d)
    assert "MatrixSymbol" in d["srepr"]


def test_rule_validation() -> None:
    with pytest.raises(KeyError):
        Rule({"F42": 1.0})
    with pytest.raises(ValueError):
        Rule({"F0": float("nan")})
    assert Rule({"oja": 1.0}).terms == ["F9"]


def test_from_expression_rejects_non_updates() -> None:
    with pytest.raises(ValueError, match="n×m"):
        Rule.from_expression(y.T * W)
    with pytest.raises(ValueError, match="unknown matrix symbol"):
        Rule.from_expression(sp.MatrixSymbol("Z", n, m))


coef = st.floats(min_value=-10, max_value=10, allow_nan=False, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(list(TERMS)), coef, max_size=len(TERMS)))
def test_to_text_round_trip_keeps_hash(coefficients: dict[str, float]) -> None:
    r = Rule(coefficients)
    back = Rule.parse(r.to_text())
    assert back.hash() == r.hash()
    assert Rule.from_expression(r.expression).hash() == r.hash()
    assert Rule(dict(reversed(list(coefficients.items())))).hash() == r.hash()
