"""Safe parser for rule expressions (docs/http-api.md, "Rule expressions"); never eval/sympify on the raw text.

Whitelist grammar (column-vector convention, ``e*x.T`` = e xᵀ):

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '@') unary)*          both are the matrix / scalar product
    unary   := '-'* power
    power   := postfix ('**' INT)?                 only on a 1×1 scalar, 0 ≤ INT ≤ MAX_EXPONENT
    postfix := primary ('.T')*
    primary := NUMBER | x | y | e | e_pre | W | one | '(' expr ')'

Numbers (``2``, ``0.5``, ``.5``, ``1e-3``) are scalars. A 1×1 factor (e.g. ``one.T*y``) commutes, so
``(one.T*y)*e*x.T`` is read as e (1ᵀy) xᵀ. The result is expanded into monomials (``rules.terms.Poly``)
and must be an n×m weight update. Limits: MAX_LENGTH characters, MAX_TOKENS tokens, MAX_DEPTH nested
parentheses, MAX_EXPONENT, and at most MAX_MONOMIALS monomials in any product.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sympy import MatrixExpr

from rules.primitives import PRIMITIVES
from rules.terms import MAX_EXPONENT, MAX_MONOMIALS, UPDATE, ExpressionError, Poly, fmt_shape

MAX_LENGTH = 8000
MAX_TOKENS = 1000
MAX_DEPTH = 32

__all__ = [
    "MAX_DEPTH", "MAX_EXPONENT", "MAX_LENGTH", "MAX_MONOMIALS", "MAX_TOKENS",
    "RuleSyntaxError", "parse_expression", "parse_poly",
]

_NUMBER = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = ("**", "+", "-", "*", "@", "(", ")")
_ALLOWED = ", ".join(PRIMITIVES)


class RuleSyntaxError(ValueError):
    """Invalid rule expression; ``position`` is a 0-based character offset, ``token`` the offending text."""

    def __init__(self, message: str, position: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.token = token


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "name", "T" (the .T postfix), "op", "end"
    text: str
    pos: int


def _at(pos: int) -> str:
    return f"at position {pos}"


def tokenize(text: str, names: Collection[str] | None = None, allowed: str | None = None) -> list[Token]:
    """Split ``text`` into whitelisted tokens (ends with an 'end' token).

    ``names``: the identifiers accepted as 'name' tokens (default: the feedforward PRIMITIVES); ``allowed``: how
    an unknown-name error lists them (default: ``names`` joined). rules.recurrent reuses this with its term names.
    """
    names = PRIMITIVES if names is None else names
    allowed = (_ALLOWED if names is PRIMITIVES else ", ".join(names)) if allowed is None else allowed
    if len(text) > MAX_LENGTH:
        raise RuleSyntaxError(
            f"expression is too long: {len(text)} characters (limit {MAX_LENGTH})", MAX_LENGTH, None
        )
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if len(tokens) >= MAX_TOKENS:
            raise RuleSyntaxError(f"too many tokens (limit {MAX_TOKENS}) {_at(i)}", i, ch)
        if num := _NUMBER.match(text, i):
            tokens.append(Token("num", num.group(), i))
        elif name := _NAME.match(text, i):
            word = name.group()
            if word not in names:
                raise RuleSyntaxError(f"unknown name {word!r} {_at(i)}; allowed names: {allowed}", i, word)
            tokens.append(Token("name", word, i))
        elif ch == ".":
            attr = _NAME.match(text, i + 1)
            if attr is None:
                raise RuleSyntaxError(f"unexpected '.' {_at(i)}", i, ".")
            if attr.group() != "T":
                word = "." + attr.group()
                raise RuleSyntaxError(
                    f"attribute access {word!r} {_at(i)} is not allowed (only .T, the transpose)", i, word
                )
            tokens.append(Token("T", ".T", i))
        elif op := next((o for o in _OPS if text.startswith(o, i)), None):
            tokens.append(Token("op", op, i))
        else:
            raise RuleSyntaxError(_bad_char_message(ch, i), i, ch)
        i += len(tokens[-1].text)
    tokens.append(Token("end", "", len(text)))
    return tokens


def _bad_char_message(ch: str, pos: int) -> str:
    if ch in "\"'":
        return f"strings are not allowed: {ch!r} {_at(pos)}"
    if ch in "[]{}":
        return f"brackets are not allowed: {ch!r} {_at(pos)}; use parentheses"
    if ch == ",":
        return f"commas are not allowed: {ch!r} {_at(pos)}"
    return f"unexpected character {ch!r} {_at(pos)}"


class TokenCursor:
    """A position in a token list: ``peek`` the next token, ``take`` it (shared by the rule parsers)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok


class _Parser(TokenCursor):
    """Recursive descent over the token list, building a Poly (expanded monomials)."""

    def __init__(self, tokens: list[Token]) -> None:
        super().__init__(tokens)
        self.depth = 0

    def unexpected(self, tok: Token, hint: str = "") -> RuleSyntaxError:
        if tok.kind == "end":
            return RuleSyntaxError(f"unexpected end of expression {_at(tok.pos)}{hint}", tok.pos, "")
        return RuleSyntaxError(f"unexpected token {tok.text!r} {_at(tok.pos)}{hint}", tok.pos, tok.text)

    @staticmethod
    def apply(op: Token, fn: Callable[..., Poly], *args: Any) -> Poly:
        """fn(*args), turning an ExpressionError (shape mismatch…) into a RuleSyntaxError at ``op``."""
        try:
            return fn(*args)
        except ExpressionError as exc:
            raise RuleSyntaxError(f"{exc} ({op.text!r} {_at(op.pos)})", op.pos, op.text) from None

    def parse(self) -> Poly:
        if self.peek().kind == "end":
            raise RuleSyntaxError("empty expression", 0, "")
        poly = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            hint = " (function calls are not allowed)" if tok.text == "(" else " (missing operator?)"
            raise self.unexpected(tok, hint)
        return poly

    def expr(self) -> Poly:
        left = self.term()
        while self.peek().text in ("+", "-") and self.peek().kind == "op":
            op = self.take()
            right = self.term()
            left = self.apply(op, Poly.__add__ if op.text == "+" else Poly.__sub__, left, right)
        return left

    def term(self) -> Poly:
        left = self.unary()
        while self.peek().text in ("*", "@") and self.peek().kind == "op":
            op = self.take()
            right = self.unary()
            left = self.apply(op, Poly.__mul__, left, right)
        return left

    def unary(self) -> Poly:
        negate = False
        while self.peek().kind == "op" and self.peek().text == "-":
            self.take()
            negate = not negate
        poly = self.power()
        return -poly if negate else poly

    def power(self) -> Poly:
        base = self.postfix()
        if not (self.peek().kind == "op" and self.peek().text == "**"):
            return base
        op = self.take()
        exp = self.take()
        if exp.kind != "num" or not exp.text.isdigit():
            raise RuleSyntaxError(
                f"the exponent after '**' {_at(op.pos)} must be an integer literal 0..{MAX_EXPONENT}, "
                f"got {exp.text!r}", exp.pos, exp.text
            )
        if int(exp.text) > MAX_EXPONENT:
            raise RuleSyntaxError(
                f"exponent {exp.text} {_at(exp.pos)} exceeds the limit {MAX_EXPONENT}", exp.pos, exp.text
            )
        return self.apply(op, Poly.power, base, int(exp.text))

    def postfix(self) -> Poly:
        poly = self.primary()
        while self.peek().kind == "T":
            self.take()
            poly = poly.transpose()
        return poly

    def primary(self) -> Poly:
        tok = self.take()
        if tok.kind == "num":
            value = float(tok.text)
            if not math.isfinite(value):
                raise RuleSyntaxError(f"number {tok.text} {_at(tok.pos)} is out of range", tok.pos, tok.text)
            return Poly.constant(value)
        if tok.kind == "name":
            if self.peek().text == "(" and self.peek().kind == "op":
                call = self.peek()
                raise RuleSyntaxError(
                    f"function calls are not allowed: {tok.text}( {_at(call.pos)}", call.pos, "("
                )
            return Poly.primitive(tok.text)
        if tok.kind == "op" and tok.text == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise RuleSyntaxError(
                    f"parentheses nested deeper than {MAX_DEPTH} levels {_at(tok.pos)}", tok.pos, "("
                )
            poly = self.expr()
            close = self.take()
            if not (close.kind == "op" and close.text == ")"):
                self.i -= 1
                raise self.unexpected(close, f" (expected ')' closing the '(' {_at(tok.pos)})")
            self.depth -= 1
            return poly
        self.i -= 1
        raise self.unexpected(tok)


def parse_poly(text: str, *, require_update: bool = True) -> Poly:
    """Parse ``text`` into expanded monomials; require_update: it must be an n×m weight update."""
    if not isinstance(text, str):
        raise RuleSyntaxError(f"expression must be a string, got {type(text).__name__}", 0, None)
    poly = _Parser(tokenize(text)).parse()
    if require_update and poly.shape != UPDATE:
        raise RuleSyntaxError(
            f"the expression must be an n×m weight update, got {fmt_shape(poly.shape)}", 0, text[:40]
        )
    for c in poly.terms.values():
        if not math.isfinite(c):
            raise RuleSyntaxError(f"coefficient overflow: {c}", 0, None)
    return poly


def parse_expression(text: str) -> MatrixExpr:
    """Parse a rule expression into a sympy MatrixExpr (expanded, canonical order); RuleSyntaxError else."""
    return parse_poly(text).to_sympy()
