"""Safe whitelist parser: accepted syntax, canonical scalar placement, and rejections with useful messages."""

from __future__ import annotations

import pytest
import sympy as sp

from rules import Rule, RuleSyntaxError, parse_expression
from rules.parser import MAX_DEPTH, MAX_EXPONENT, MAX_LENGTH, MAX_TOKENS
from rules.primitives import W, e, e_pre, m, n, one, x, y


def test_api_example() -> None:
    expr = parse_expression("-0.012*e*x.T + 0.065*e*e_pre.T + 0.008*(y*x.T - y*(y.T*W))")
    assert isinstance(expr, sp.MatAdd) and expr.shape == (n, m)
    assert Rule.from_expression(expr).coefficients == pytest.approx({"F0": 0.012, "F2": -0.065, "F9": 0.008})


@pytest.mark.parametrize(
    "text",
    ["e*x.T", "e@x.T", "(x*e.T).T", "1*e*x.T", "2.5e-1*4*e*x.T", "e*x.T*1", "--e*x.T", " e *\n x.T ",
     "((e))*x.T.T.T"],
)
def test_accepted_forms_of_the_outer_product(text: str) -> None:
    assert Rule.parse(text).canonical() == "e*x.T"


def test_numbers() -> None:
    assert Rule.parse("1e-3*e*x.T").coefficients == {"F0": -0.001}
    assert Rule.parse(".5*e*x.T - 0.25*e*x.T").coefficients == {"F0": -0.25}
    assert Rule.parse("3*W - 2*2*W").coefficients == {"F3": 1.0}


def test_scalar_factor_is_moved_into_the_chain() -> None:
    assert parse_expression("(one.T*y)*e*x.T") == e * one.T * y * x.T
    assert parse_expression("(y.T*W*e_pre)*y*e_pre.T") == y * y.T * W * e_pre * e_pre.T
    assert parse_expression("e*x.T*(one.T*y)") == parse_expression("e*(one.T*y)*x.T")
    assert parse_expression("(y.T*one + one.T*y)*e*x.T") == sp.Float(2) * e * one.T * y * x.T
    assert Rule.parse("(y.T*y)**2*e*x.T").hash() == Rule.parse("e*(y.T*y)*(y.T*y)*x.T").hash()
    assert Rule.parse("(y.T*y)**0*e*x.T").coefficients == {"F0": -1.0}


def test_scalar_times_full_matrix_uses_trace() -> None:
    expr = parse_expression("(one.T*y)*W")
    assert expr.shape == (n, m) and sp.Trace(one.T * y) in expr.args


def _reject(text: str) -> RuleSyntaxError:
    with pytest.raises(RuleSyntaxError) as info:
        parse_expression(text)
    err = info.value
    assert isinstance(err, ValueError) and err.message == str(err)
    return err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('__import__("os")', "__import__"),
        ("x.__class__", ".__class__"),
        ("foo*x.T", "foo"),
        ("os", "os"),
        ("e*x.T + 'a'", "strings"),
        ("[e]*x.T", "brackets"),
        ("e*x.T, y*x.T", "commas"),
        ("e*x.T;", "';'"),
        ("x(y)", "function calls"),
        ("e*x.T**2", "1×1"),
        ("(y.T*y)**-1*e*x.T", "integer literal"),
        ("(y.T*y)**1.5*e*x.T", "integer literal"),
        ("e*x.T e", "'e'"),
        ("(e*x.T", "')'"),
        ("e*x.T)", "')'"),
        ("e*", "end"),
        ("", "empty"),
        ("1e999*e*x.T", "out of range"),
        ("1e300*1e300*e*x.T", "overflow"),
    ],
)
def test_rejections_name_the_token(text: str, needle: str) -> None:
    assert needle in _reject(text).message


def test_rejection_positions() -> None:
    err = _reject("e*x.T + foo")
    assert (err.position, err.token) == (8, "foo")
    err = _reject("x.__class__")
    assert (err.position, err.token) == (1, ".__class__")


def test_power_limit() -> None:
    err = _reject("x**999999")
    assert "999999" in err.message and str(MAX_EXPONENT) in err.message
    assert "limit" in _reject(f"(y.T*y)**{MAX_EXPONENT + 1}*e*x.T").message


def test_size_limits() -> None:
    err = _reject("e*x.T + " * 1250 + "e*x.T")  # 10 kB
    assert str(MAX_LENGTH) in err.message and "too long" in err.message
    deep = "(" * (MAX_DEPTH + 1) + "e*x.T" + ")" * (MAX_DEPTH + 1)
    assert str(MAX_DEPTH) in _reject(deep).message
    ok = "(" * MAX_DEPTH + "e*x.T" + ")" * MAX_DEPTH
    assert Rule.parse(ok).coefficients == {"F0": -1.0}
    assert str(MAX_TOKENS) in _reject("+".join(["e*x.T"] * (MAX_TOKENS // 4 + 1))).message
    assert "-" * 150  # unary chains are iterative, not recursive
    assert Rule.parse("-" * 150 + "e*x.T").coefficients == {"F0": -1.0}


def test_expansion_blowup_is_bounded() -> None:
    s = "(y.T*y + one.T*y + y.T*W*e_pre + e.T*W*x)"
    assert "monomials" in _reject(f"{s}*{s}*{s}*{s}*e*x.T").message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("e + x", "shape mismatch"),
        ("e*x", "shape mismatch"),
        ("W*W", "shape mismatch"),
        ("e*x.T + 1", "shape mismatch"),
        ("y.T*W", "n×m weight update, got 1×m"),
        ("(e*x.T).T", "n×m weight update, got m×n"),
        ("3", "n×m weight update, got 1×1"),
    ],
)
def test_shape_errors(text: str, needle: str) -> None:
    assert needle in _reject(text).message


def test_sympy_str_of_expression_parses_back() -> None:
    r = Rule({"F0": 0.012, "F2": -0.065, "F9": 0.008, "F6": 0.5})
    assert Rule.parse(str(r.expression)).hash() == r.hash()
    assert Rule.parse(r.canonical()).hash() == r.hash()
    assert e_pre.shape == (m, 1)
