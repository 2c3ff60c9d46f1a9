"""The recurrent rule language (docs/science.md S2): plasticity of the recurrent weights W of a fixed-point network.

One recurrent layer of N units at its fixed point r = f(W r + X), column-vector form, one sample:

    r (N×1) fixed-point rates,  delta = δ = ∂𝓛/∂r (N×1),  G = diag(f'(W r + X)) (N×N, diagonal, Gᵀ = G; tanh:
    diag(1 − r²)),  W (N×N),  I = Identity(N),  u (N×1) the adjoint fixed point u = δ + Wᵀ G u.

A rule is ΔW = Σ_k θ_k F_k (batch-averaged over the samples of a minibatch) with the terms

    rec_dW1   = −G u rᵀ                                 = −(G⁻¹ − Wᵀ)⁻¹ δ rᵀ   (minus the Euclidean gradient ∇_W 𝓛)
    rec_dW3   = −(I − W G) G δ [(I − G W)ᵀ(I − G W) r]ᵀ                       (minus the paper's dW3)
    rec_dW4   = −(I − W G) δ [(I − W G)ᵀ(I − W G) r]ᵀ                         (minus the paper's dW4)
    rec_oja   = r rᵀ − r (rᵀ W)                          (Oja's subspace rule on the recurrent weights; S3's F9)
    rec_decay = −W                                       (weight decay; S3's F3)

Sign convention (same as S3's library, where F0 = −e xᵀ): every F_k is an *update direction*, ΔW = +Σ θ_k F_k, so
θ_k > 0 means "apply this term as named": descend the loss for the dW terms (θ_dW is the paper's learning rate,
W ← W − θ·dW), Oja's rule for rec_oja, shrinkage for rec_decay. This is the one convention: the engine runs these
expressions compiled (rules.recurrent_compiler, discovery.recurrent.network.term_directions); the paper's dW1, dW3,
dW4 of discovery.recurrent.fixedpoint are the loss-gradient directions, F = −dW.

rec_dW1 needs the inverse (G⁻¹ − Wᵀ)⁻¹; the language keeps it as the auxiliary symbol u (defined by its fixed-point
equation, solved numerically by the engine); ``RecurrentTerm.closed_form`` holds the explicit sympy ``Inverse``.

Identity: ``canonical()`` lists the nonzero θ_k (6 significant digits) by term id in library order, prefixed with
``recurrent/v1:``; the five terms are linearly independent functions of (W, r, δ, G), so equal canonical text ⇔
equal rule, and a recurrent hash can never equal a feedforward (rules.rule.Rule) hash.

User syntax (``parse_recurrent``; a whitelist grammar on rules/parser.py's tokenizer, never eval/sympify):

    rule   := term (('+' | '-') term)*              or the canonical text 'recurrent/v1: …' (same grammar after it)
    term   := factor ('*' factor)*                  exactly one NAME per term: c*name, name*c, name, -name, 2*name*0.5
    factor := '-'* (NUMBER | NAME | '(' '-'* NUMBER ')')
    NAME   := a recurrent term id, name or alias    (rec_dW1 … rec_decay, euclidean_gradient, dW3, oja, decay, …)

e.g. ``0.25*rec_dW3 + 0.001*oja - 0.01*decay`` = θ_dW3 = 0.25, θ_oja = 0.001, θ_decay = −0.01. Repeated names add
up. Everything else is a RuleSyntaxError naming the token and its position: unknown names, the variables r, delta,
G, W, u, I and the feedforward primitives x, y, e, … (write a term name instead), products of two terms, '@',
'**', '.T', parentheses around anything but a number, a term without a name, non-finite coefficients, and text
over the tokenizer's MAX_LENGTH / MAX_TOKENS. The bare text ``0`` (e.g. 'recurrent/v1: 0') is the zero rule.

Which family a text belongs to (``is_recurrent_text``): it starts with 'recurrent/', or one of its identifiers is a
recurrent term id / name / alias or starts with 'rec_'. The feedforward primitives and the recurrent term names are
disjoint, so every feedforward expression keeps its meaning; ``parse_rule_text`` dispatches on this test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import sympy as sp
from sympy import Identity, MatAdd, MatMul, MatrixExpr, MatrixSymbol, Transpose

from rules.base import CoefficientRule, LazyMapping
from rules.parser import RuleSyntaxError, Token, TokenCursor, tokenize
from rules.primitives import PRIMITIVES
from rules.rule import Rule
from rules.terms import join_signed

N = sp.Symbol("N", integer=True, positive=True)
"""Number of recurrent units."""

r = MatrixSymbol("r", N, 1)
delta = MatrixSymbol("delta", N, 1)
G = MatrixSymbol("G", N, N)
W = MatrixSymbol("W", N, N)
u = MatrixSymbol("u", N, 1)
I = Identity(N)  # the identity matrix, as in the paper

RECURRENT_PRIMITIVES: dict[str, MatrixExpr] = {"r": r, "delta": delta, "G": G, "W": W, "u": u, "I": I}
"""Name → sympy symbol. G is diagonal (treated as symmetric when writing transposes); u = δ + Wᵀ G u."""

ADJOINT_EQUATION = sp.Eq(u, MatAdd(delta, MatMul(Transpose(W), G, u)))
"""The auxiliary definition of u (rec_dW1): u = δ + Wᵀ G u, i.e. u = (I − Wᵀ G)⁻¹ δ and G u = (G⁻¹ − Wᵀ)⁻¹ δ."""

CANONICAL_PREFIX = "recurrent/v1:"
CANONICAL_DIGITS = 6
_CANONICAL_TERM = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\*([A-Za-z_][A-Za-z0-9_]*)")


def _neg(expr: MatrixExpr) -> MatrixExpr:
    return MatMul(sp.Integer(-1), expr)


def _i_minus(a: MatrixExpr, b: MatrixExpr) -> MatrixExpr:
    """I − a b (unevaluated)."""
    return MatAdd(I, MatMul(sp.Integer(-1), a, b))


@dataclass(frozen=True)
class RecurrentTerm:
    """One recurrent term F = sign · body (N×N): sympy expression, user-syntax text and LaTeX of the body."""

    id: str
    name: str
    sign: int
    body: MatrixExpr
    text: str
    latex_body: str
    description: str
    closed_form: MatrixExpr | None = None
    aliases: tuple[str, ...] = ()

    @property
    def expr(self) -> MatrixExpr:
        """F = sign · body."""
        return self.body if self.sign > 0 else _neg(self.body)

    def latex(self) -> str:
        return ("-" if self.sign < 0 else "") + self.latex_body


_A3 = _i_minus(G, W)   # I − G W
_A4 = _i_minus(W, G)   # I − W G

_LIBRARY = [
    RecurrentTerm(
        "rec_dW1", "euclidean_gradient", -1, MatMul(G, u, Transpose(r)), "G*u*r.T", r"G u r^{T}",
        "−G u rᵀ = −(G⁻¹ − Wᵀ)⁻¹ δ rᵀ: minus the Euclidean gradient (paper's dW1); u = δ + Wᵀ G u is the "
        "adjoint fixed point (an N×N solve / iteration per sample)",
        closed_form=_neg(MatMul(sp.Inverse(MatAdd(sp.Inverse(G), _neg(Transpose(W)))), delta, Transpose(r))),
        aliases=("dW1",)),
    RecurrentTerm(
        "rec_dW3", "linearized_reparameterized", -1,
        MatMul(_A4, G, delta, Transpose(MatMul(Transpose(_A3), _A3, r))),
        "(I - W*G)*G*delta*((I - G*W).T*(I - G*W)*r).T",
        r"\left(\mathbb{I} - W G\right) G \delta \left[\left(\mathbb{I} - G W\right)^{T}"
        r" \left(\mathbb{I} - G W\right) r\right]^{T}",
        "−(I − W G) G δ [(I − G W)ᵀ(I − G W) r]ᵀ: linearized reparameterized gradient (paper's dW3), no inverse",
        aliases=("dW3",)),
    RecurrentTerm(
        "rec_dW4", "reparameterized_dW4", -1,
        MatMul(_A4, delta, Transpose(MatMul(Transpose(_A4), _A4, r))),
        "(I - W*G)*delta*((I - W*G).T*(I - W*G)*r).T",
        r"\left(\mathbb{I} - W G\right) \delta \left[\left(\mathbb{I} - W G\right)^{T}"
        r" \left(\mathbb{I} - W G\right) r\right]^{T}",
        "−(I − W G) δ [(I − W G)ᵀ(I − W G) r]ᵀ: the paper's dW4 (O(N²) per sample)",
        aliases=("dW4",)),
    RecurrentTerm(
        "rec_oja", "recurrent_oja", +1,
        MatAdd(MatMul(r, Transpose(r)), _neg(MatMul(r, MatMul(Transpose(r), W)))),
        "r*r.T - r*(r.T*W)", r"\left(r r^{T} - r r^{T} W\right)",
        "r rᵀ − r (rᵀW): Oja's subspace rule on the recurrent weights (pre = post = r), evaluated as r (rᵀW)",
        aliases=("oja",)),
    RecurrentTerm(
        "rec_decay", "recurrent_decay", -1, W, "W", "W", "−W: weight decay of the recurrent weights",
        aliases=("decay",)),
]

RECURRENT_TERMS: dict[str, RecurrentTerm] = {t.id: t for t in _LIBRARY}
"""The five published recurrent terms by id, in library order."""


def _generated() -> list[RecurrentTerm]:
    """The generated members of the library (rules.recurrent_library), deduplicated against the published terms
    and each other by canonical form."""
    from rules.recurrent_library import canonical_form, generated_candidates, generated_id

    seen = {canonical_form(t.expr) for t in _LIBRARY}
    out = []
    for c in generated_candidates(RECURRENT_PRIMITIVES):
        key = canonical_form(c.body)
        if key not in seen:
            seen.add(key)
            out.append(RecurrentTerm(generated_id(key), c.name, c.sign, c.body, c.text, sp.latex(c.body),
                                     c.description))
    return out


RECURRENT_LIBRARY: Mapping[str, RecurrentTerm] = LazyMapping(lambda: {t.id: t for t in [*_LIBRARY, *_generated()]})
"""The generated recurrent library by id: the published terms first (named members), then the generated ones.
Generated on first use (the sympy expansion of the candidates takes seconds), so importing this module is cheap."""

RECURRENT_POOLS: Mapping[str, list[str]] = LazyMapping(lambda: {
    "rec4": ["rec_dW3", "rec_dW4", "rec_oja", "rec_decay"],
    "rec5": ["rec_dW1", "rec_dW3", "rec_dW4", "rec_oja", "rec_decay"],
    "rec_library": list(RECURRENT_LIBRARY),
})
"""Named pools; ``rec4`` (no N×N solve per sample) is the default of a fixedpoint-mnist discovery; ``rec_library``
(the whole generated library) is what a recurrent goal without named terms searches."""

PUBLISHED_LR: dict[str, float] = {"rec_dW1": 0.01, "rec_dW3": 0.25, "rec_dW4": 0.1}
"""Best learning rates of the paper's MNIST runs (docs/science.md S2): W ← W − lr·dW, i.e. θ = lr here."""

DEFAULT_THETA: Mapping[str, float] = LazyMapping(lambda: {**{t: 0.0 for t in RECURRENT_LIBRARY}, **PUBLISHED_LR})
"""θ at the start of meta-learning when the spec gives none: the published learning rates, every other term off."""


def _lookup_of(terms: Iterable[RecurrentTerm]) -> dict[str, str]:
    """Id, name and aliases of every term → its id."""
    return {k: t.id for t in terms for k in (t.id, t.name, *t.aliases)}


_PUBLISHED_LOOKUP: dict[str, str] = _lookup_of(_LIBRARY)
_LOOKUP: Mapping[str, str] = LazyMapping(lambda: _lookup_of(RECURRENT_LIBRARY.values()))


@cache
def _generated_names() -> frozenset[str]:
    """Names of every grammar candidate (deduplicated or not): cheap, no expansion; a word outside them and the
    published names can be no generated term, so ``is_recurrent_text`` needs no library for it."""
    from rules.recurrent_library import generated_candidates

    return frozenset(c.name for c in generated_candidates(RECURRENT_PRIMITIVES))


def recurrent_term(id_or_alias: str) -> RecurrentTerm:
    """Term by id ('rec_dW3'), name ('linearized_reparameterized') or alias ('dW3', 'oja', 'decay')."""
    tid = _LOOKUP.get(id_or_alias)
    if tid is None:
        raise KeyError(f"unknown recurrent term {id_or_alias!r}; known ids: {', '.join(RECURRENT_TERMS)} "
                       f"(aliases: {', '.join(a for t in _LIBRARY for a in t.aliases)})")
    return RECURRENT_LIBRARY[tid]


def resolve_term_ids(ids: list[str] | tuple[str, ...]) -> list[str]:
    """Canonical ids of a list of ids/aliases; ValueError (naming the culprit) on unknown or repeated ids."""
    out: list[str] = []
    for k in ids:
        try:
            tid = recurrent_term(k).id
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if tid in out:
            raise ValueError(f"recurrent term {k!r} is listed twice (as {tid!r})")
        out.append(tid)
    return out


class RecurrentRule(CoefficientRule):
    """ΔW = Σ_k θ_k F_k over the recurrent terms (coefficients keyed by id or alias; stored by id)."""

    PRUNE_TOL = 1e-6
    FAMILY = "recurrent"
    LIBRARY = RECURRENT_LIBRARY
    ZERO_SHAPE = (N, N)

    def __init__(self, coefficients: Mapping[str, float], name: str | None = None) -> None:
        self._coefficients = self.collect(coefficients, recurrent_term, RECURRENT_LIBRARY)
        self.name = name

    # --- printing ------------------------------------------------------------------------------------------
    def _summands(self) -> list[tuple[float, RecurrentTerm]]:
        """(θ_k · sign_k, term): the sign of each term folded into its displayed coefficient."""
        return [(self._coefficients[k] * RECURRENT_LIBRARY[k].sign, RECURRENT_LIBRARY[k]) for k in self.terms]

    def to_text(self) -> str:
        """Readable text, e.g. '-0.25*(I - W*G)*G*delta*((I - G*W).T*(I - G*W)*r).T - 0.01*W'."""
        parts = []
        for c, t in self._summands():
            body = f"({t.text})" if isinstance(t.body, MatAdd) else t.text
            parts.append(body if c == 1 else "-" + body if c == -1 else f"{c!r}*{body}")
        return join_signed(parts) if parts else "0*W"

    def latex(self) -> str:
        """LaTeX of ΔW, e.g. '- 0.25 \\left(\\mathbb{I} - W G\\right) G \\delta [...]^{T} - 0.01 W'."""
        parts = []
        for c, t in self._summands():
            num = "" if abs(c) == 1 else sp.latex(sp.Float(abs(c))) + " "
            parts.append(("-" if c < 0 else "") + num + t.latex_body)
        return join_signed(parts) if parts else "0"

    def canonical(self) -> str:
        """'recurrent/v1: 0.25*rec_dW3 + -0.01*rec_decay' (nonzero θ at 6 significant digits, library order)."""
        return self.id_canonical(CANONICAL_PREFIX, CANONICAL_DIGITS)

    def to_dict(self) -> dict[str, Any]:
        """Same keys as ``rules.rule.Rule.to_dict()``, plus ``canonical`` (so service.rulebook.record_from_result
        never rebuilds it with the feedforward Rule) and ``kind: "recurrent"``."""
        return {**super().to_dict(), "canonical": self.canonical(), "kind": "recurrent"}

    @classmethod
    def from_canonical(cls, text: str, name: str | None = None) -> RecurrentRule:
        """Inverse of ``canonical()`` ('recurrent/v1: 0.25*rec_dW3 + -0.01*rec_decay'), a strict regex reader (no
        eval): the one text form of a recurrent rule that can travel as a benchmark 'expression' string."""
        text = text.strip()
        if not text.startswith(CANONICAL_PREFIX):
            raise ValueError(f"a recurrent rule text starts with {CANONICAL_PREFIX!r}")
        body = text[len(CANONICAL_PREFIX):].strip()
        if body == "0":
            return cls({}, name)
        coefs: dict[str, float] = {}
        for part in body.split(" + "):
            m = _CANONICAL_TERM.fullmatch(part.strip())
            if m is None:
                raise ValueError(f"cannot read {part!r}: expected '<number>*<term id>'")
            coefs[m.group(2)] = coefs.get(m.group(2), 0.0) + float(m.group(1))
        return cls(coefs, name)


# --- parsing user-written recurrent rules ------------------------------------------------------------------------
_WORD = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?|([A-Za-z_][A-Za-z0-9_]*)")
"""A number (skipped, so the 'e' of '1e-3' is no identifier) or an identifier (group 1): the tokenizer's rules."""

_ALLOWED_TERMS = (f"{', '.join(RECURRENT_TERMS)}, the generated rec_T… ids (aliases: "
                  f"{', '.join(k for k in _PUBLISHED_LOOKUP if k not in RECURRENT_TERMS)})")


def is_recurrent_text(text: object) -> bool:
    """True when ``text`` is meant as a recurrent rule: it starts with 'recurrent/', or one of its identifiers is
    a recurrent term id, name or alias or starts with 'rec_' (then ``parse_recurrent`` reads it and reports any
    feedforward primitive in it as an error). Cheap; never raises."""
    if not isinstance(text, str):
        return False
    if text.lstrip().startswith("recurrent/"):
        return True
    for m in _WORD.finditer(text):
        word = m.group(1)
        if word and (word in _PUBLISHED_LOOKUP or word.startswith("rec_")
                     or (word in _generated_names() and word in _LOOKUP)):
            return True
    return False


def _syntax_error(message: str, pos: int, token: str | None, hint: str = "") -> RuleSyntaxError:
    return RuleSyntaxError(f"{message} at position {pos}{hint}", pos, token)


class _RecurrentParser(TokenCursor):
    """Recursive descent over rules.parser tokens; ``parse()`` returns {term id: θ} (repeated terms summed)."""

    def is_op(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text == text

    def unexpected(self, tok: Token, hint: str = "") -> RuleSyntaxError:
        if tok.kind == "end":
            return _syntax_error(f"unexpected end of expression{hint}", tok.pos, "")
        if tok.kind == "T":
            return _syntax_error("transposes ('.T') are not allowed in a recurrent rule", tok.pos, tok.text)
        if tok.kind == "op" and tok.text == "**":
            return _syntax_error("exponents ('**') are not allowed in a recurrent rule", tok.pos, tok.text)
        if tok.kind == "op" and tok.text == "@":
            return _syntax_error("'@' is not allowed in a recurrent rule (write c*term)", tok.pos, tok.text)
        return _syntax_error(f"unexpected token {tok.text!r}{hint}", tok.pos, tok.text)

    def number(self, tok: Token) -> float:
        value = float(tok.text)
        if not math.isfinite(value):
            raise _syntax_error(f"number {tok.text} is out of range", tok.pos, tok.text)
        return value

    def parse(self) -> dict[str, float]:
        first = self.peek()
        if first.kind == "end":
            raise _syntax_error("empty expression", first.pos, "")
        if first.kind == "num" and self.tokens[1].kind == "end" and self.number(first) == 0:
            return {}  # the zero rule, as canonical() writes it
        coefs: dict[str, float] = {}
        sign = 1.0
        while True:
            start = self.peek()
            tid, c = self.term()
            total = coefs.get(tid, 0.0) + sign * c
            if not math.isfinite(total):
                raise _syntax_error(f"the coefficient of {tid} overflows", start.pos, start.text)
            coefs[tid] = total
            tok = self.peek()
            if tok.kind == "end":
                return coefs
            if tok.kind == "op" and tok.text in ("+", "-"):
                self.take()
                sign = 1.0 if tok.text == "+" else -1.0
                continue
            raise self.unexpected(tok, " (expected '+', '-', '*' or the end)")

    def term(self) -> tuple[str, float]:
        """factor ('*' factor)* with exactly one term name: (term id, product of the numbers)."""
        start = self.peek()
        tid: str | None = None
        c = 1.0
        while True:
            negate, tok = self.factor()
            if tok.kind == "name":
                if tid is not None:
                    raise _syntax_error(f"product of two recurrent terms ({tid} * {tok.text}); a term is "
                                        "<number>*<term name>", tok.pos, tok.text)
                tid = _LOOKUP[tok.text]
                value = 1.0
            else:
                value = self.paren_number() if tok.kind == "op" else self.number(tok)
            c *= -value if negate else value
            if not math.isfinite(c):
                raise _syntax_error("coefficient overflow", tok.pos, tok.text)
            if not self.is_op("*"):
                break
            self.take()
        if tid is None:
            raise _syntax_error("a term without a recurrent term name", start.pos, start.text,
                                f"; allowed names: {_ALLOWED_TERMS}")
        return tid, c

    def factor(self) -> tuple[bool, Token]:
        """'-'* then a number, a term name or '(': (negated, the token)."""
        negate = False
        while self.is_op("-"):
            self.take()
            negate = not negate
        tok = self.take()
        if tok.kind == "num" or (tok.kind == "op" and tok.text == "("):
            return negate, tok
        if tok.kind == "name":
            if tok.text in _LOOKUP:
                if self.is_op("("):
                    raise _syntax_error(f"function calls are not allowed: {tok.text}(", self.peek().pos, "(")
                return negate, tok
            raise _syntax_error(_not_a_term(tok.text), tok.pos, tok.text, _TERM_HINT)
        self.i -= 1
        raise self.unexpected(tok)

    def paren_number(self) -> float:
        """After '(': '-'* NUMBER ')'."""
        negate = False
        while self.is_op("-"):
            self.take()
            negate = not negate
        tok = self.take()
        if tok.kind != "num":
            self.i -= 1
            hint = " (parentheses may enclose a number only)"
            if tok.kind == "name" and tok.text not in _LOOKUP:
                raise _syntax_error(_not_a_term(tok.text), tok.pos, tok.text, _TERM_HINT)
            raise self.unexpected(tok, hint)
        value = self.number(tok)
        close = self.take()
        if not (close.kind == "op" and close.text == ")"):
            self.i -= 1
            raise self.unexpected(close, " (parentheses may enclose a number only; expected ')')")
        return -value if negate else value


_TERM_HINT = f"; a recurrent rule is a sum of <number>*<term name> with names {_ALLOWED_TERMS}"


def _not_a_term(word: str) -> str:
    """Why an identifier the tokenizer let through (a variable or a feedforward primitive) is no term name."""
    if word in RECURRENT_PRIMITIVES:
        return f"{word!r} is a variable of the recurrent terms, not a term"
    if word in PRIMITIVES:
        return f"{word!r} is a feedforward primitive (rules/parser.py), not a recurrent term"
    return f"unknown recurrent term {word!r}"


def parse_recurrent(text: str, name: str | None = None) -> RecurrentRule:
    """Parse a user-written recurrent rule (grammar in the module docstring) into a RecurrentRule.

    Also reads the canonical text 'recurrent/v1: …' (``canonical()``), so parse → canonical → parse keeps the hash.
    Raises ``rules.parser.RuleSyntaxError`` (message, 0-based ``position``, ``token``) for anything else."""
    if not isinstance(text, str):
        raise RuleSyntaxError(f"expression must be a string, got {type(text).__name__}", 0, None)
    body = text
    lead = len(text) - len(text.lstrip())
    if text.lstrip().startswith("recurrent/"):
        if not text.startswith(CANONICAL_PREFIX, lead):
            word = text[lead:].split(":", 1)[0][:40]
            raise RuleSyntaxError(f"unknown recurrent text version {word!r} at position {lead}; expected "
                                  f"{CANONICAL_PREFIX!r}", lead, word)
        end = lead + len(CANONICAL_PREFIX)
        body = " " * end + text[end:]  # same positions, the prefix blanked out
    words = {*_LOOKUP, *RECURRENT_PRIMITIVES, *PRIMITIVES}  # the variables get a pointed message in the grammar
    coefs = _RecurrentParser(tokenize(body, names=words, allowed=_ALLOWED_TERMS)).parse()
    return RecurrentRule(coefs, name)


def parse_rule_text(text: str, name: str | None = None) -> Any:
    """A user's rule text of any family: ``rules.reward.parse_reward`` when it starts with 'reward/',
    ``parse_recurrent`` when ``is_recurrent_text``, else the feedforward ``rules.rule.Rule.parse`` (name set when
    given). Raises RuleSyntaxError (or ValueError) on bad input."""
    from rules.reward import is_reward_text, parse_reward

    if is_reward_text(text):
        return parse_reward(text, name)
    if is_recurrent_text(text):
        return parse_recurrent(text, name)
    return Rule.parse(text, name)


def is_recurrent_rule_dict(data: Mapping[str, Any]) -> bool:
    """True for a stored rule dict of this language (``kind`` flag, or every coefficient a recurrent id)."""
    if data.get("kind") == "recurrent":
        return True
    coefs = data.get("coefficients") or {}
    return bool(coefs) and all(k in _LOOKUP for k in coefs)


__all__ = ["ADJOINT_EQUATION", "DEFAULT_THETA", "PUBLISHED_LR", "RECURRENT_LIBRARY", "RECURRENT_POOLS",
           "RECURRENT_PRIMITIVES", "RECURRENT_TERMS", "G", "I", "N", "RecurrentRule", "RecurrentTerm", "W", "delta",
           "is_recurrent_rule_dict", "is_recurrent_text", "parse_recurrent", "parse_rule_text", "r",
           "recurrent_term", "resolve_term_ids", "u"]
