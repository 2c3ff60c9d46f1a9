"""User-written recurrent rules (rules.recurrent.parse_recurrent) and their path through the REST API.

Grammar: a sum of signed terms c*name, name*c, name, -name over the recurrent term ids / names / aliases
(rec_dW1, rec_dW3, rec_dW4, rec_oja, rec_decay; dW1, dW3, dW4, oja, decay, ...), or the canonical 'recurrent/v1: …'.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from rules.parser import MAX_LENGTH, MAX_TOKENS, RuleSyntaxError, tokenize
from rules.recurrent import (
    RECURRENT_TERMS,
    RecurrentRule,
    is_recurrent_text,
    parse_recurrent,
    parse_rule_text,
)
from rules.rule import Rule
from service.db.models import BenchmarkRun
from service.db.models import Rule as RuleRow
from service.db.session import session_scope
from service.runs.dispatcher import Dispatcher
from tests.conftest import FakeWorkers

# --- the grammar -------------------------------------------------------------------------------------------------
ACCEPTED = [
    ("0.25*rec_dW3", {"rec_dW3": 0.25}),
    ("rec_dW4*0.1", {"rec_dW4": 0.1}),
    ("rec_oja", {"rec_oja": 1.0}),
    ("-rec_decay", {"rec_decay": -1.0}),
    ("0.25*dW3 + 0.001*oja - 0.01*decay", {"rec_dW3": 0.25, "rec_oja": 0.001, "rec_decay": -0.01}),
    ("euclidean_gradient*1e-2", {"rec_dW1": 0.01}),
    ("2*oja + rec_oja - 0.5*recurrent_oja", {"rec_oja": 2.5}),  # repeated names add up
    ("rec_oja*-2", {"rec_oja": -2.0}),
    ("(-0.5)*2*rec_oja", {"rec_oja": -1.0}),
    ("  .5 * dW1  -  -1e-3*dW4 ", {"rec_dW1": 0.5, "rec_dW4": 0.001}),
    ("recurrent/v1: 0.25*rec_dW3 + -0.01*rec_decay", {"rec_dW3": 0.25, "rec_decay": -0.01}),
    ("recurrent/v1: 0", {}),
]


@pytest.mark.parametrize(("text", "coefficients"), ACCEPTED)
def test_accepted(text: str, coefficients: dict[str, float]) -> None:
    rule = parse_recurrent(text)
    assert isinstance(rule, RecurrentRule)
    assert rule.coefficients == pytest.approx(coefficients)
    assert rule.hash() == RecurrentRule(coefficients).hash()
    again = parse_recurrent(rule.canonical())
    assert again.canonical() == rule.canonical() and again.hash() == rule.hash()


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(list(RECURRENT_TERMS)),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda v: v == 0 or abs(v) > 1e-9),
        min_size=1,
    )
)
def test_round_trip_keeps_the_hash(coefficients: dict[str, float]) -> None:
    """user text → rule → canonical → rule: same canonical text and hash; from_canonical agrees."""
    text = " + ".join(f"({c!r})*{k}" for k, c in coefficients.items())
    rule = parse_recurrent(text)
    assert rule.coefficients == pytest.approx(coefficients, rel=1e-12)
    canonical = rule.canonical()
    assert parse_recurrent(canonical).hash() == rule.hash() == RecurrentRule.from_canonical(canonical).hash()
    assert parse_recurrent(canonical).canonical() == canonical


REJECTED = [
    # text, position, token, words in the message
    ("rec_oja*rec_decay", 8, "rec_decay", "product of two recurrent terms"),
    ("oja*decay*2", 4, "decay", "product of two recurrent terms"),
    ("x*rec_oja", 0, "x", "feedforward primitive"),
    ("rec_oja - 0.01*e*x.T", 15, "e", "feedforward primitive"),
    ("0.1*W", 4, "W", "variable of the recurrent terms"),
    ("delta*rec_dW1", 0, "delta", "variable of the recurrent terms"),
    ("foo + rec_oja", 0, "foo", "unknown name 'foo'"),
    ("rec_dW2", 0, "rec_dW2", "unknown name 'rec_dW2'"),
    ("rec_oja**2", 7, "**", "exponents"),
    ("rec_oja.T", 7, ".T", "transposes"),
    ("rec_oja @ 2", 8, "@", "'@'"),
    ("(rec_oja + decay)*2", 1, "rec_oja", "parentheses may enclose a number only"),
    ("((2))*rec_oja", 1, "(", "parentheses may enclose a number only"),
    ("rec_oja(2)", 7, "(", "function calls"),
    ("2", 0, "2", "without a recurrent term name"),
    ("rec_oja + 1", 10, "1", "without a recurrent term name"),
    ("rec_oja +", 9, "", "unexpected end"),
    ("", 0, "", "empty expression"),
    ("rec_oja; import os", 7, ";", "unexpected character"),
    ("rec_oja/2", 7, "/", "unexpected character"),
    ("1e400*rec_oja", 0, "1e400", "out of range"),
    ("1e300*1e300*rec_oja", 6, "1e300", "overflow"),
    ("1e308*oja + 1e308*oja", 12, "1e308", "overflows"),
    ("recurrent/v2: 1.0*rec_oja", 0, "recurrent/v2", "unknown recurrent text version"),
    ("recurrent/v1: 0.5*rec_oja*x", 26, "x", "feedforward primitive"),
    ("oja+" * (MAX_TOKENS // 2 + 1), None, None, "too many tokens"),
    ("rec_oja" + " " * MAX_LENGTH, None, None, f"(limit {MAX_LENGTH})"),
]


@pytest.mark.parametrize(("text", "position", "token", "words"), REJECTED)
def test_rejected(text: str, position: int | None, token: str | None, words: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse_recurrent(text)
    err = info.value
    assert words in err.message, err.message
    if position is not None:
        assert err.position == position, err.message
        assert f"position {position}" in err.message
    if token is not None:
        assert err.token == token


def test_not_a_string() -> None:
    with pytest.raises(RuleSyntaxError):
        parse_recurrent(3)  # type: ignore[arg-type]


def test_family_decision() -> None:
    """Recurrent when the text starts with 'recurrent/' or names a recurrent term; feedforward otherwise."""
    assert is_recurrent_text("0.1*oja") and is_recurrent_text("recurrent/v1: 0")
    assert is_recurrent_text("rec_dW2") and is_recurrent_text("rec_oja + e*x.T")
    for feedforward in ("-0.01*e*x.T", "1e-3*e*x.T", "0.008*(y*x.T - y*(y.T*W))", "foo", ""):
        assert not is_recurrent_text(feedforward), feedforward
    assert not is_recurrent_text(None)
    assert isinstance(parse_rule_text("0.1*dW4", name="mine"), RecurrentRule)
    assert parse_rule_text("0.1*dW4", name="mine").name == "mine"
    ff = parse_rule_text("-0.01*e*x.T")
    assert isinstance(ff, Rule) and ff.hash() == Rule.parse("-0.01*e*x.T").hash()
    with pytest.raises(RuleSyntaxError) as info:
        parse_rule_text("rec_oja + e*x.T")
    assert info.value.token == "e"


def test_feedforward_tokenizer_unchanged() -> None:
    with pytest.raises(RuleSyntaxError) as info:
        tokenize("rec_oja")
    assert "allowed names: x, y, e, e_pre, W, one" in info.value.message


def test_worker_reads_user_and_canonical_text() -> None:
    from workers.contract import BenchmarkTask

    def _parse_rule(text: str | None) -> object:
        return BenchmarkTask(suite="fixedpoint-linear", expression=text).rule()

    user = _parse_rule("0.1*dW4 - 0.01*decay")
    assert isinstance(user, RecurrentRule)
    assert _parse_rule(user.canonical()).hash() == user.hash()
    assert isinstance(_parse_rule("-0.01*e*x.T"), Rule)
    assert _parse_rule(None) is None


# --- the REST API --------------------------------------------------------------------------------------------------
def count(app: Any, model: type) -> int:
    with session_scope(app.state.sessions) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_api_stores_a_recurrent_rule(client: TestClient, auth: dict[str, str], app: Any) -> None:
    text = "0.25*dW3 + 0.001*oja - 0.01*decay"
    r = client.post("/api/rules", json={"name": "my recurrent", "expression": text}, headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    expected = parse_recurrent(text)
    assert body["hash"] == expected.hash()
    assert body["coefficients"] == pytest.approx({"rec_dW3": 0.25, "rec_oja": 0.001, "rec_decay": -0.01})
    assert body["terms"] == ["rec_dW3", "rec_oja", "rec_decay"] and body["origin"] == "user"
    # the same rule written as its canonical text (or with other aliases) is the stored one
    for same in (expected.canonical(), "rec_dW3*0.25 - 0.01*rec_decay + 0.001*recurrent_oja"):
        again = client.post("/api/rules", json={"name": "again", "expression": same}, headers=auth)
        assert again.status_code == 200 and again.json()["id"] == body["id"], again.text
    assert client.get(f"/rules/{body['id']}").status_code == 200
    assert [x["name"] for x in client.get("/api/rules", params={"term": "rec_oja"}).json()] == ["my recurrent"]


@pytest.mark.parametrize(
    ("expression", "position", "token"),
    [("0.25*rec_dW3*oja", 13, "oja"), ("rec_oja + e*x.T", 10, "e"), ("rec_oja**2", 7, "**"),
     ("recurrent/v1: 1*nope", 16, "nope")],
)
def test_api_rejects_a_bad_recurrent_rule(
    client: TestClient, auth: dict[str, str], app: Any, expression: str, position: int, token: str
) -> None:
    kept = client.post("/api/rules", json={"name": "kept", "expression": "0.1*dW4"}, headers=auth).json()
    r = client.post("/api/rules", json={"name": "bad", "expression": expression}, headers=auth)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["field"] == "expression" and detail["message"]
    assert detail["position"] == position and detail["token"] == token
    assert detail["context"].endswith("\n" + " " * position + "^")
    r = client.post("/api/benchmarks", json={"suite": "fixedpoint-mnist", "expression": expression}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"]["position"] == position
    assert count(app, RuleRow) == 1 and count(app, BenchmarkRun) == 0
    assert client.get(f"/api/rules/{kept['id']}").json()["hash"] == kept["hash"]


def test_api_benchmarks_a_recurrent_rule(
    client: TestClient, auth: dict[str, str], app: Any, settings: Any, fake_workers: FakeWorkers
) -> None:
    dispatcher = Dispatcher(settings, app.state.sessions, fake_workers)
    app.state.dispatcher = dispatcher
    r = client.post(
        "/api/benchmarks", json={"suite": "fixedpoint-mnist", "expression": "0.1*dW4", "tiny": True}, headers=auth
    )
    assert r.status_code == 201, r.text
    rule_id = r.json()["rule_id"]
    r = client.post("/api/benchmarks", json={"suite": "fixedpoint-linear", "rule_id": rule_id}, headers=auth)
    assert r.status_code == 201, r.text
    dispatcher.tick()
    canonical = parse_recurrent("0.1*dW4").canonical()
    assert [(h.args["suite"], h.args["expression"]) for h in fake_workers.handles] == [
        ("fixedpoint-mnist", canonical),
        ("fixedpoint-linear", canonical),
    ]
    # a feedforward suite compiles feedforward rules only: 422 naming the field, nothing queued or stored
    runs, rules = count(app, BenchmarkRun), count(app, RuleRow)
    for body in ({"suite": "fa5-online", "rule_id": rule_id}, {"suite": "fa5-online", "expression": "0.2*oja"}):
        r = client.post("/api/benchmarks", json=body, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["field"] == "suite" and "recurrent" in r.json()["detail"]["message"]
    assert count(app, BenchmarkRun) == runs and count(app, RuleRow) == rules


def test_importing_leaves_the_generated_library_unbuilt() -> None:
    """The generated recurrent library (seconds of sympy expansion) is built on first use (docs/architecture.md):
    importing the rules or telling a feedforward text from a recurrent one never builds it; a generated term's
    name does."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = ("import rules, rules.recurrent_library, rules.recurrent as m\n"
            "m.is_recurrent_text('0.1*x*e.T - 0.01*W')\n"
            "print(m.RECURRENT_LIBRARY.built, m.RECURRENT_POOLS.built, m.DEFAULT_THETA.built, m._LOOKUP.built)\n"
            "assert m.is_recurrent_text('0.1*hebb_rr')\n"
            "print(m.RECURRENT_LIBRARY.built, len(m.RECURRENT_LIBRARY) > len(m.RECURRENT_TERMS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"] * 4 + ["True", "True"], out.stdout
