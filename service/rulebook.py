"""The service's bridge to the rule language (``rules``): parse a user's expression, normalize an engine result.

Both paths end in :class:`RuleRecord`, the fields of a ``rules`` row: the sympy expression as text, its canonical
string and ``srepr``, LaTeX, coefficients {term id: θ_r}, term ids and the content hash (sha256 of the canonical
string, ``rules.Rule.hash``). ``rules`` is imported lazily so that the service starts without it.

Two families share the table. A user's expression is read by ``rules.recurrent.parse_rule_text``: a text that
starts with ``recurrent/`` or names a recurrent term (``rec_dW3``, ``oja``, ``decay``, …; see
``rules.recurrent.is_recurrent_text``) is a recurrent rule (S2, ``RecurrentRule``), anything else a feedforward
``Rule``. A recurrent row's canonical string starts with ``recurrent/v1:``; its ``expression`` is the readable
matrix form, so a benchmark of a stored rule sends :func:`benchmark_text` (the canonical text for a recurrent
rule) to the workers. The family is stored with the rule (``rules.family``); recurrent rules run only on suites
whose ``rule_family`` is not feedforward (:func:`suite_rejects`).
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from discovery.results import RuleData
from service import __version__


class InvalidRule(ValueError):
    """A rule expression that does not parse: the parser's message, 0-based position and token."""

    def __init__(self, message: str, position: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.token = token

    def to_dict(self, expression: str | None = None, field: str = "expression") -> dict[str, Any]:
        """HTTP 422 detail: field, message, position, token (and the expression with a caret)."""
        detail: dict[str, Any] = {
            "field": field, "message": self.message, "position": self.position, "token": self.token
        }
        if expression is not None and self.position is not None:
            detail["context"] = expression + "\n" + " " * self.position + "^"
        return detail


@dataclass(frozen=True)
class RuleRecord:
    """What is stored about a rule's mathematics."""

    expression: str
    canonical: str
    srepr: str
    latex: str
    coefficients: dict[str, float]
    terms: list[str]
    hash: str
    family: str = "feedforward"


def parse_rule(expression: str) -> RuleRecord:
    """Parse a user's expression with the safe parsers (``rules.recurrent.parse_rule_text``: a recurrent rule when
    the text names a recurrent term or starts with ``recurrent/``, else ``rules.Rule.parse``); raises
    :class:`InvalidRule`."""
    from rules.parser import RuleSyntaxError
    from rules.recurrent import parse_rule_text

    if not isinstance(expression, str) or not expression.strip():
        raise InvalidRule("the expression is empty", 0, "")
    try:
        rule = parse_rule_text(expression)
    except RuleSyntaxError as exc:
        raise InvalidRule(exc.message, exc.position, exc.token) from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidRule(str(exc) or type(exc).__name__) from exc
    return record_of(rule)


def is_recurrent_canonical(canonical: str | None) -> bool:
    """True for the canonical string of a recurrent rule (``recurrent/v1: …``)."""
    return str(canonical or "").startswith("recurrent/")


def benchmark_text(canonical: str | None, expression: str) -> str:
    """The text a worker parses to benchmark a stored rule: the canonical text of a recurrent rule (its stored
    expression is the readable matrix form, not user syntax), else the stored expression."""
    reward = str(canonical or "").startswith("reward/")
    return str(canonical) if is_recurrent_canonical(canonical) or reward else expression


def benchmark_layered(provenance: dict[str, Any] | None) -> dict[str, float] | None:
    """A stored rule's layered θ (its provenance's ``coefficients_raw`` in a profile or per-layer layout), which
    its expression, the shared projection, cannot hold (docs/transfer.md, "Layered rules"); None otherwise."""
    raw = (provenance or {}).get("coefficients_raw")
    if not isinstance(raw, dict):
        return None
    from discovery.transfer.layered import layout_of  # torch: only for a rule that has raw coefficients

    return dict(raw) if layout_of(raw) != "shared" else None


def suite_rejects(suite: Any, family: str) -> str | None:
    """Why ``suite`` cannot benchmark a rule of ``family`` (None when it can). A suite of feedforward rules
    (``Suite.rule_family``) compiles the rule as a feedforward expression, so a recurrent rule cannot run there;
    the other suites score what they can and note the rest (fixedpoint-mnist and fixedpoint-linear score a
    recurrent rule beside the published ones and note a feedforward one; reservoir-motor scores a reward rule
    beside its tuned learners and notes any other)."""
    wanted = getattr(suite, "rule_family", "feedforward")
    if wanted != "feedforward" or family == wanted:
        return None
    name = getattr(suite, "name", "?")
    return (f"suite {name!r} scores feedforward rules, and this rule is {family}; a recurrent rule can be "
            "benchmarked on fixedpoint-mnist or fixedpoint-linear (scored) or reservoir-motor (baselines only)")


def record_of(rule: Any) -> RuleRecord:
    """The :class:`RuleRecord` of a ``rules.Rule``."""
    data = rule.to_dict() if hasattr(rule, "to_dict") else {}
    return RuleRecord(
        expression=str(data.get("expression") or rule.expression),
        canonical=rule.canonical(),
        srepr=rule.srepr(),
        latex=rule.latex(),
        coefficients={str(k): float(v) for k, v in rule.coefficients.items()},
        terms=list(rule.terms),
        hash=rule.hash(),
        family=rule.FAMILY,
    )


def is_unsupervised_canonical(canonical: str | None) -> bool:
    """True for the canonical string of an unsupervised Hebbian rule (``unsupervised/v1: …``)."""
    return str(canonical or "").startswith("unsupervised/")


def _family(rule: RuleData, canonical: str) -> str:
    if rule.kind == "unsupervised" or is_unsupervised_canonical(canonical):
        return "unsupervised"
    if rule.kind == "reward" or str(canonical or "").startswith("reward/"):
        return "reward"
    return "recurrent" if rule.kind == "recurrent" or is_recurrent_canonical(canonical) else "feedforward"


def record_from_result(rule: RuleData) -> RuleRecord:
    """The :class:`RuleRecord` of an engine result's rule (``DiscoveryResult.rule``).

    The rule's own fields are trusted when present; missing ones are recomputed with ``rules.Rule`` from the
    coefficients. The hash is the rule's own (a layered rule's covers its layered θ,
    discovery.transfer.layered.layered_hash), else the sha256 of the canonical string.
    """
    coefficients = {str(k): float(v) for k, v in rule.coefficients.items()}
    rebuilt: Any = None

    def rebuild() -> Any:
        nonlocal rebuilt
        if rebuilt is None:
            from rules.rule import Rule

            rebuilt = Rule.parse(rule.expression) if not coefficients and rule.expression else Rule(coefficients)
        return rebuilt

    canonical = rule.canonical or rebuild().canonical()
    digest = rule.hash or hashlib.sha256(canonical.encode()).hexdigest()
    return RuleRecord(
        expression=str(rule.expression or rebuild().expression),
        canonical=canonical,
        srepr=rule.srepr or rebuild().srepr(),
        latex=rule.latex or rebuild().latex(),
        coefficients=coefficients or {str(k): float(v) for k, v in rebuild().coefficients.items()},
        terms=list(rule.terms or coefficients or rebuild().terms),
        hash=digest,
        family=_family(rule, canonical),
    )


def display_latex(coefficients: dict[str, float] | None, latex: str, sig: int = 3) -> str:
    """LaTeX for pages: θ rounded to ``sig`` significant digits (``rules.Rule.rounded``); ``latex`` as a fallback."""
    if not coefficients:
        return latex
    try:
        return _rounded_latex(tuple(sorted((str(k), float(v)) for k, v in coefficients.items())), sig)
    except Exception:  # noqa: BLE001 - display only: keep the stored LaTeX
        return latex


@lru_cache(maxsize=1024)
def _rounded_latex(items: tuple[tuple[str, float], ...], sig: int) -> str:
    from rules.rule import Rule

    return Rule(dict(items)).rounded(sig).latex()


def terms_catalog() -> list[dict[str, Any]]:
    """The rule-term library: id, name, expression, description, family (named / base / gated), the named pools
    that hold the term, and ``fused`` (whether its atoms fit the fused CPU kernel's plan); empty without ``rules``."""
    return [dict(t) for t in _terms_catalog()]


@lru_cache(maxsize=1)
def _terms_catalog() -> tuple[dict[str, Any], ...]:
    try:
        from rules.compiler import compile_terms
        from rules.terms import POOLS, TERMS
    except ImportError:
        return ()
    from discovery.feedforward.kernels.fused import plan

    return tuple(
        {
            "id": term.id,
            "name": term.name,
            "expression": str(term.expr),
            "text": term.text,
            "description": term.description,
            "certain": bool(getattr(term, "certain", True)),
            "family": term.family,
            "pools": [name for name, ids in POOLS.items() if term.id in ids],
            "fused": plan(compile_terms([term.expr], [term.id])) is not None,
        }
        for term in TERMS.values()
    )


@lru_cache(maxsize=4096)
def term_formula(term_id: str) -> dict[str, str] | None:
    """A term of any family by id: ``{id, name, text (the formula in rule syntax), latex, family}`` — what pages,
    the CLI and the client show instead of a bare id (generated ids like ``T4d4340c6`` included); None when no
    library knows the id."""
    try:
        from rules.recurrent import RECURRENT_LIBRARY
        from rules.terms import TERMS
    except ImportError:
        return None
    found: Any = TERMS.get(term_id)
    family = "feedforward"
    if found is None:
        found, family = RECURRENT_LIBRARY.get(term_id), "recurrent"
    if found is None:
        try:
            from rules.unsupervised import UNSUPERVISED_TERMS
        except ImportError:  # pragma: no cover - the unsupervised library ships with rules
            return None
        found, family = UNSUPERVISED_TERMS.get(term_id), "unsupervised"
    if found is None:
        from rules.reward import REWARD_TERMS

        found, family = REWARD_TERMS.get(term_id), "reward"
    if found is None:
        return None
    text = found.text
    if family == "recurrent" and getattr(found, "sign", 1) < 0:
        text = f"-{text}" if text.isidentifier() else f"-({text})"
    return {"id": term_id, "name": found.name, "text": text, "latex": found.latex(), "family": family}


def term_label(term_id: str) -> str:
    """'F = <formula> [id]' for text output (CLI, client): the formula first, the id as a secondary label."""
    info = term_formula(term_id)
    return f"{info['text']}  [{term_id}]" if info else term_id


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<git commit>`` (``+<commit>-dirty`` with local changes), or the version alone."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}{'-dirty' if dirty else ''}" if commit else __version__
