"""Plain-language goal → :class:`discovery.spec.DiscoverySpec` (no web imports; used by the service and the CLI).

A goal such as "find a plasticity rule for depth-5 online learning under feedback alignment with Oja on MNIST
for 600 episodes" is read phrase by phrase; every phrase sets part of the spec, filler words are ignored, and any
other word is an error (:class:`GoalError` lists what was understood, the words that were not, and the
vocabulary). Nothing is guessed silently.

Vocabulary (case-insensitive):

- depth: ``depth-N`` / ``depth N`` / ``N layers`` / ``N-layer`` → L = N weight layers. Widths: input n_0 from the
  data set (784; 64 for sklearn digits), output 10 (47 for EMNIST-balanced, at least the number of ways), hidden
  widths interpolated piecewise-linearly along the paper's 170-130-100-70 (SCIENCE.md S3), so depth-5 gives
  784-170-130-100-70-10, depth-3 784-170-70-10, depth-2 784-130-10, depth-1 784-10. Default depth 5.
- width: ``width N`` (every hidden layer N), ``widths 784-32-10`` (explicit), ``tiny`` (a smoke-test size: hidden
  width 16, 5 shots, 5 queries, 10 held-out episodes and 20 meta-training episodes unless given explicitly).
- learning: ``online`` (the engine's only mode: the K·M training samples stream one at a time, batch 1). ``batch``,
  ``mini-batch`` or ``offline`` → error: batch learning is not supported.
- feedback: ``feedback alignment``/``FA``/``random feedback`` → fa; ``backprop``/``backpropagation``/``BP``/
  ``weight transport``/``symmetric feedback`` → bp; ``direct feedback (alignment)``/``DFA`` → dfa;
  ``sign-symmetric``/``sign feedback`` → sign.
- data: ``mnist`` → mnist5k; ``digits`` (8×8 sklearn) ; ``digits28``/``upsampled digits``; ``emnist`` →
  emnist-balanced; ``synthetic``.
- terms (rules.terms ids): ``pseudo-gradient`` F0, ``error-Hebbian``/``eHebb`` F2, ``decay`` F3, ``Oja`` F9,
  ``Hebbian``/``Hebb`` hebb, ``F0``..``F9``; ``all ten``/``bio10`` → the ten-term pool; ``paper3``/``three-term`` →
  F0, F2, F9. Named terms are added to the pseudo-gradient F0 (the error-driven base the rule starts from, θ0 = 1e-3)
  unless the goal says ``only``; named terms are fitted as they are (no search). ``paper's three terms``/``paper3``
  → fit F0, F2, F9. **No term named → open discovery**: search the generated 16-term library (``rules.library``)
  by forward selection and return the front; ``from bio10``/``bio10``, ``library``, ``gated library`` name the
  pool searched; ``forward selection``, ``backward elimination``, ``l1 path``/``lasso path`` choose the search;
  ``at most N terms`` bounds the support.
- init: ``bad init``/``large init`` → init_scale 3 (3× the Xavier range, the "sub-optimal initialization" of S1);
  ``small init`` → 0.3; ``init scale X``.
- training: ``N episodes`` (meta-training), ``N eval episodes``, ``N-way``, ``K-shot``, ``Q queries``, ``seed S``,
  ``lr X``, ``l1 X``, ``meta-batch N``, ``beta X``; resources ``gpu`` / ``cpu``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from discovery.spec import DiscoverySpec

#: Hidden widths of the paper's depth-5 net (SCIENCE.md S3), the anchors of the width interpolation.
PAPER_HIDDEN: tuple[int, ...] = (170, 130, 100, 70)
DEFAULT_DEPTH = 5
#: Input dimension n_0 of each data set (upsampled digits: 784).
INPUT_DIMS: dict[str, int] = {
    "mnist5k": 784,
    "digits": 64,
    "digits28": 784,
    "emnist-balanced": 784,
    "synthetic": 784,
}
#: Output width n_L per data set.
OUTPUT_DIMS: dict[str, int] = {"emnist-balanced": 47}
TINY = {"width": 16, "shots": 5, "queries": 5, "eval_episodes": 10, "episodes": 20}
BAD_INIT_SCALE, SMALL_INIT_SCALE = 3.0, 0.3

#: Words that carry no meaning for the spec.
FILLER: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "in",
        "on",
        "for",
        "to",
        "from",
        "by",
        "via",
        "with",
        "using",
        "use",
        "at",
        "per",
        "each",
        "into",
        "as",
        "is",
        "are",
        "be",
        "it",
        "its",
        "that",
        "which",
        "this",
        "find",
        "discover",
        "search",
        "learn",
        "learns",
        "learning",
        "learned",
        "learner",
        "rule",
        "rules",
        "plasticity",
        "synaptic",
        "local",
        "biologically",
        "plausible",
        "bio-plausible",
        "network",
        "networks",
        "net",
        "nets",
        "mlp",
        "neural",
        "deep",
        "model",
        "data",
        "dataset",
        "datasets",
        "set",
        "sets",
        "image",
        "images",
        "task",
        "tasks",
        "classes",
        "class",
        "run",
        "job",
        "train",
        "training",
        "meta",
        "meta-training",
        "please",
        "me",
        "i",
        "we",
        "want",
        "would",
        "like",
        "can",
        "you",
        "new",
        "good",
        "best",
        "better",
        "some",
        "rule's",
        "term",
        "terms",
        "plus",
        "also",
        "feedback",
        "layer",
        "layers",
        "weight",
        "weights",
        "hidden",
        "units",
        "unit",
        "dense",
        "fully",
        "connected",
        "how",
        "what",
        "under",
        "where",
        "pool",
        "rule-family",
        "family",
    ]
)

VOCABULARY: dict[str, list[str]] = {
    "depth": ["depth-N", "N layers", "N-layer"],
    "width": ["width N", "widths 784-64-10", "tiny"],
    "learning": ["online (batch is not supported)"],
    "feedback": [
        "feedback alignment / fa",
        "backprop / bp / weight transport",
        "direct feedback alignment / dfa",
        "sign-symmetric",
    ],
    "dataset": ["mnist", "digits", "digits28", "emnist", "synthetic"],
    "terms": [
        "pseudo-gradient",
        "error-Hebbian / eHebb",
        "decay",
        "Oja",
        "Hebbian",
        "F0..F9",
        "all ten / bio10",
        "paper3 / three-term / the paper's three terms",
        "library / gated library (the pool an open search runs over; the default when no term is named)",
        "forward selection / backward elimination / l1 path",
        "at most N terms",
        "only",
    ],
    "init": ["bad init (scale 3)", "large init (scale 3)", "small init (scale 0.3)", "init scale X"],
    "training": [
        "N episodes",
        "N eval episodes",
        "N-way",
        "K-shot",
        "Q queries",
        "seed S",
        "lr X",
        "l1 X",
        "meta-batch N",
        "beta X",
    ],
    "resources": ["gpu", "cpu"],
}


class GoalError(ValueError):
    """A goal that cannot become a spec: what was understood, the words that were not, and the vocabulary."""

    def __init__(self, message: str, understood: list[str] | None = None, unknown: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.understood = list(understood or [])
        self.unknown = list(unknown or [])
        self.vocabulary = VOCABULARY

    def to_dict(self) -> dict[str, Any]:
        """JSON-able detail for an HTTP 422 or a CLI message."""
        return {
            "message": self.message,
            "understood": self.understood,
            "unknown_words": self.unknown,
            "vocabulary": self.vocabulary,
        }


@dataclass
class GoalParse:
    """The resolved spec and the phrases that produced it, in reading order."""

    spec: DiscoverySpec
    understood: list[str]


@dataclass
class _Draft:
    """What the phrases set so far (None = not said)."""

    depth: int | None = None
    width: int | None = None
    widths: list[int] | None = None
    tiny: bool = False
    feedback: str | None = None
    dataset: str | None = None
    terms: list[str] = field(default_factory=list)
    pool: str | None = None
    search: str | None = None
    max_terms: int | None = None
    only: bool = False
    init_scale: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    batch_mode: str | None = None
    conflicts: list[str] = field(default_factory=list)

    def set_once(self, attr: str, value: Any, phrase: str) -> None:
        old = getattr(self, attr)
        if old is not None and old != value:
            self.conflicts.append(f"{attr}: {old!r} and {value!r} (from {phrase!r})")
        setattr(self, attr, value)


def input_dim(dataset: str, upsample: bool = False) -> int | None:
    """n_0 for a data set (None when unknown)."""
    if upsample and dataset == "digits":
        return 784
    return INPUT_DIMS.get(dataset)


def interpolate_hidden(n_hidden: int, anchors: tuple[int, ...] = PAPER_HIDDEN) -> list[int]:
    """``n_hidden`` widths along the anchors, piecewise-linearly: 4 → the anchors themselves, 1 → the middle."""
    if n_hidden <= 0:
        return []
    if n_hidden == 1:
        pos = [(len(anchors) - 1) / 2]
    else:
        pos = [i * (len(anchors) - 1) / (n_hidden - 1) for i in range(n_hidden)]
    out = []
    for p in pos:
        lo = min(int(p), len(anchors) - 2)
        frac = p - lo
        out.append(round(anchors[lo] + frac * (anchors[lo + 1] - anchors[lo])))
    return out


def network_widths(depth: int, n_in: int, n_out: int, width: int | None = None) -> list[int]:
    """[n_0, hidden..., n_L] for ``depth`` weight layers: all hidden = ``width`` or interpolated."""
    hidden = [width] * (depth - 1) if width is not None else interpolate_hidden(depth - 1)
    return [n_in, *hidden, n_out]


_Handler = Callable[["re.Match[str]", _Draft], str]
_NUM = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"


def _int(m: re.Match[str], group: int = 1) -> int:
    return int(m.group(group).replace(",", "").replace("_", ""))


def _term(term_id: str, label: str) -> _Handler:
    def handle(m: re.Match[str], d: _Draft) -> str:
        if term_id not in d.terms:
            d.terms.append(term_id)
        return f"{m.group(0)!r} → term {term_id} ({label})"

    return handle


def _feedback(mode: str) -> _Handler:
    def handle(m: re.Match[str], d: _Draft) -> str:
        d.set_once("feedback", mode, m.group(0))
        return f"{m.group(0)!r} → feedback {mode}"

    return handle


def _dataset(name: str) -> _Handler:
    def handle(m: re.Match[str], d: _Draft) -> str:
        d.set_once("dataset", name, m.group(0))
        return f"{m.group(0)!r} → data set {name}"

    return handle


def _setter(section: str, key: str, cast: Callable[[str], Any], label: str) -> _Handler:
    def handle(m: re.Match[str], d: _Draft) -> str:
        value = cast(m.group(1).replace(",", "").replace("_", ""))
        getattr(d, section)[key] = value
        return f"{m.group(0)!r} → {label} {value}"

    return handle


def _depth(m: re.Match[str], d: _Draft) -> str:
    d.set_once("depth", _int(m), m.group(0))
    return f"{m.group(0)!r} → {_int(m)} weight layers"


def _width(m: re.Match[str], d: _Draft) -> str:
    d.set_once("width", _int(m), m.group(0))
    return f"{m.group(0)!r} → hidden width {_int(m)}"


def _widths(m: re.Match[str], d: _Draft) -> str:
    widths = [int(w) for w in re.split(r"[-x,\s]+", m.group(1)) if w]
    d.set_once("widths", widths, m.group(0))
    return f"{m.group(0)!r} → widths {widths}"


def _tiny(m: re.Match[str], d: _Draft) -> str:
    d.tiny = True
    return f"{m.group(0)!r} → tiny size (hidden width 16, 5 shots, 5 queries, 10 eval episodes, 20 episodes)"


def _online(m: re.Match[str], d: _Draft) -> str:
    return f"{m.group(0)!r} → online learning (one sample at a time, batch 1)"


def _batch(m: re.Match[str], d: _Draft) -> str:
    d.batch_mode = m.group(0)
    return ""


def _init(scale: float) -> _Handler:
    def handle(m: re.Match[str], d: _Draft) -> str:
        d.set_once("init_scale", scale, m.group(0))
        return f"{m.group(0)!r} → init_scale {scale} (× the Xavier range)"

    return handle


def _init_value(m: re.Match[str], d: _Draft) -> str:
    return _init(float(m.group(1)))(m, d)


def _choice(attr: str, value: str, label: str) -> _Handler:
    """A phrase that sets one draft field (once) to a fixed value, e.g. the pool or the search method."""
    def handle(m: re.Match[str], d: _Draft) -> str:
        d.set_once(attr, value, m.group(0))
        return f"{m.group(0)!r} → {label} {value}"

    return handle


def _pool(name: str) -> _Handler:
    return _choice("pool", name, "term pool")


def _search(method: str) -> _Handler:
    return _choice("search", method, "search by")


def _max_terms(m: re.Match[str], d: _Draft) -> str:
    d.max_terms = int(m.group(1))
    return f"{m.group(0)!r} → at most {d.max_terms} terms on the front"


def _f_term(m: re.Match[str], d: _Draft) -> str:
    return _term(f"F{m.group(1)}", "library term")(m, d)


def _only(m: re.Match[str], d: _Draft) -> str:
    d.only = True
    return f"{m.group(0)!r} → exactly the named terms (no pseudo-gradient added)"


def _device(kind: str) -> _Handler:
    def handle(m: re.Match[str], d: _Draft) -> str:
        d.resources.update({"device": kind, "num_gpus": 1.0 if kind == "cuda" else 0.0})
        return f"{m.group(0)!r} → device {kind}"

    return handle


_INIT_WORD = r"init(?:ial(?:i[sz]ation)?|i[sz]ation)?"

#: (pattern, handler) in matching order: longer and more specific phrases first; each match consumes its text.
PHRASES: list[tuple[str, _Handler]] = [
    (r"\bwidths?[\s:=]*(\d+(?:\s*[-x,]\s*\d+)+)\b", _widths),
    (
        r"\bmeta[\s-]*batch(?:[\s-]*size)?(?:\s+of)?[\s:=]*(\d+)\b",
        _setter("meta", "meta_batch", int, "meta-batch"),
    ),
    (
        r"\b(\d[\d,_]*)\s*(?:eval(?:uation)?|held[\s-]*out|test)\s+episodes?\b",
        _setter("meta", "eval_episodes", int, "held-out evaluation episodes"),
    ),
    (
        r"\b(\d[\d,_]*)\s*(?:meta[\s-]*(?:training\s+)?)?episodes?\b",
        _setter("meta", "episodes", int, "episodes"),
    ),
    (r"\bdepth[\s:=-]*(\d+)\b", _depth),
    (r"\b(\d+)[\s-]*(?:weight[\s-]*)?layers?\b", _depth),
    (r"\b(?:hidden[\s-]*)?width[\s:=-]*(\d+)\b", _width),
    (r"\b(\d+)[\s-]*(?:hidden[\s-]*)?units?\b", _width),
    (r"\btiny\b|\bsmoke[\s-]*test\b", _tiny),
    (r"\bon[\s-]*line\b", _online),
    (r"\b(?:mini[\s-]*)?batch(?:ed|es)?\b|\boff[\s-]*line\b", _batch),
    (r"\bdirect[\s-]+feedback(?:[\s-]+alignment)?\b|\bdfa\b", _feedback("dfa")),
    (
        r"\bsign[\s-]*symmetr(?:ic|y)(?:[\s-]+feedback)?\b|\bsign[\s-]+(?:concordant[\s-]+)?feedback\b",
        _feedback("sign"),
    ),
    (r"\b(?:random[\s-]+)?feedback[\s-]+alignment\b|\brandom[\s-]+feedback\b|\bfa\b", _feedback("fa")),
    (
        r"\bback[\s-]*prop(?:agation)?\b|\bbp\b|\bweight[\s-]+transport\b|\bsymmetric[\s-]+feedback\b",
        _feedback("bp"),
    ),
    (r"\bemnist(?:[\s-]*balanced)?\b", _dataset("emnist-balanced")),
    (r"\bmnist(?:[\s-]*5k)?\b", _dataset("mnist5k")),
    (r"\bdigits[\s-]*28\b|\bupsampled[\s-]+digits\b", _dataset("digits28")),
    (r"\b(?:sklearn[\s-]+)?digits\b", _dataset("digits")),
    (r"\bsynthetic\b", _dataset("synthetic")),
    (r"\b(?:up\s+to|at\s+most|no\s+more\s+than|max(?:imum)?(?:\s+of)?)\s+(\d+)\s+terms?\b", _max_terms),
    (r"\bforward[\s-]+(?:selection|search|stepwise)\b|\bscreening\b", _search("forward")),
    (r"\bbackward[\s-]+(?:elimination|selection|search|stepwise)\b", _search("backward")),
    (r"\b(?:l1|lasso|proximal|sparse)[\s-]+path\b", _search("path")),
    (r"\b(?:gated[\s-]+(?:term[\s-]+)?library|library[\s-]+with[\s-]+gates)\b", _pool("library_gated")),
    (r"\b(?:open[\s-]+|generated[\s-]+|term[\s-]+|whole[\s-]+|full[\s-]+)?library\b", _pool("library")),
    (r"\ball[\s-]+(?:ten|10)(?:[\s-]+terms)?\b|\bbio[\s-]*10\b|\bf[\s_-]*bio\b", _pool("bio10")),
    (r"\b(?:the\s+)?paper'?s\s+(?:three|3)[\s-]*terms?\b|\bpaper[\s-]*3\b|\bthree[\s-]*terms?\b",
     _pool("paper3")),
    (
        r"\berror[\s-]*(?:based[\s-]*)?hebb(?:ian)?\b|\be[\s-]?hebb(?:ian)?\b",
        _term("F2", "error-based Hebbian"),
    ),
    (r"\boja(?:'s)?(?:[\s-]+rule)?\b", _term("F9", "Oja")),
    (r"\bhebb(?:ian)?(?:[\s-]+rule)?\b", _term("hebb", "plain Hebbian y xᵀ")),
    (r"\b(?:weight[\s-]+)?decay\b", _term("F3", "decay")),
    (r"\bpseudo[\s-]*grad(?:ient)?\b", _term("F0", "pseudo-gradient")),
    (r"\bf(\d)\b", _f_term),
    (r"\bonly\b", _only),
    (
        rf"\b(?:bad|poor|sub[\s-]*optimal|large|big|exploding)[\s-]+(?:weight[\s-]+)?{_INIT_WORD}\b",
        _init(BAD_INIT_SCALE),
    ),
    (rf"\b(?:small|vanishing)[\s-]+(?:weight[\s-]+)?{_INIT_WORD}\b", _init(SMALL_INIT_SCALE)),
    (rf"\b{_INIT_WORD}[\s-]*scale[\s:=]*{_NUM}", _init_value),
    (r"\b(\d+)[\s-]*ways?\b", _setter("task", "ways", int, "ways")),
    (r"\b(\d+)[\s-]*shots?\b", _setter("task", "shots", int, "shots")),
    (r"\b(\d+)[\s-]*quer(?:y|ies)\b", _setter("task", "queries", int, "queries")),
    (r"\bseed[\s:=]*(\d+)\b", _setter("meta", "seed", int, "seed")),
    (
        rf"\b(?:meta[\s-]*)?(?:lr|learning[\s-]+rate)[\s:=]*{_NUM}",
        _setter("meta", "lr", float, "meta learning rate"),
    ),
    (rf"\bl1[\s:=]*{_NUM}", _setter("meta", "l1", float, "L1 penalty")),
    (rf"\bbeta[\s:=]*{_NUM}", _setter("network", "beta", float, "softplus beta")),
    (r"\bgpu\b|\bcuda\b", _device("cuda")),
    (r"\bcpu\b", _device("cpu")),
]
_COMPILED = [(re.compile(p), h) for p, h in PHRASES]


def _normalize(text: str) -> str:
    text = text.lower()
    for dash in "‐‑‒–—−":
        text = text.replace(dash, "-")
    return text.replace("’", "'")


def parse_goal(text: str) -> GoalParse:
    """Read ``text`` into a spec; raises :class:`GoalError` when a word is not understood or phrases conflict."""
    if not text or not text.strip():
        raise GoalError(
            "the goal is empty: describe the rule to find, e.g. 'depth-5 online feedback alignment "
            "with oja on mnist for 600 episodes'"
        )
    work = _normalize(text)
    hits: list[tuple[int, str]] = []
    draft = _Draft()
    for pattern, handler in _COMPILED:
        for m in list(pattern.finditer(work)):
            if work[m.start() : m.end()].strip() == "":  # consumed by an earlier, longer phrase
                continue
            note = handler(m, draft)
            if note:
                hits.append((m.start(), note))
            work = work[: m.start()] + " " * (m.end() - m.start()) + work[m.end() :]
    hits.sort()
    understood = [note for _, note in hits]
    leftovers = [w.strip("'.-_") for w in re.findall(r"[a-z0-9][a-z0-9'._-]*", work)]
    unknown = [w for w in leftovers if w and w not in FILLER]
    if draft.batch_mode is not None:
        raise GoalError(
            f"{draft.batch_mode!r}: batch learning is not supported; the engine learns online "
            "(one sample at a time). Say 'online' or leave it out.",
            understood,
            unknown,
        )
    if unknown:
        raise GoalError(
            f"the goal has words that are not understood: {', '.join(unknown)}", understood, unknown
        )
    if draft.conflicts:
        raise GoalError("the goal contradicts itself: " + "; ".join(draft.conflicts), understood)
    try:
        spec = _build_spec(draft, text)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise GoalError(f"the goal gives an invalid spec: {reasons}", understood) from exc
    except ValueError as exc:
        raise GoalError(f"the goal gives an invalid spec: {exc}", understood) from exc
    if spec.search.active:
        understood.append(f"open discovery: {spec.search.method} search over the {spec.rule.pool} pool "
                          f"({len(spec.rule.terms or [])} terms), at most {spec.search.max_terms} terms on the front")
    return GoalParse(spec=spec, understood=understood)


def goal_to_spec(text: str) -> DiscoverySpec:
    """The spec of a goal (see :func:`parse_goal`)."""
    return parse_goal(text).spec


def _build_spec(d: _Draft, text: str) -> DiscoverySpec:
    dataset = d.dataset or "mnist5k"
    task: dict[str, Any] = {"dataset": dataset, **d.task}
    meta: dict[str, Any] = dict(d.meta)
    if d.tiny:
        task.setdefault("shots", TINY["shots"])
        task.setdefault("queries", TINY["queries"])
        meta.setdefault("eval_episodes", TINY["eval_episodes"])
        meta.setdefault("episodes", TINY["episodes"])
    ways = int(task.get("ways", 5))
    n_in = input_dim(dataset) or 784
    n_out = max(OUTPUT_DIMS.get(dataset, 10), ways)
    if d.widths is not None:
        if d.depth is not None and d.depth != len(d.widths) - 1:
            raise ValueError(f"depth {d.depth} does not match widths {d.widths}")
        widths = d.widths
    else:
        depth = d.depth if d.depth is not None else DEFAULT_DEPTH
        if depth < 1:
            raise ValueError("depth must be at least 1")
        width = d.width if d.width is not None else (TINY["width"] if d.tiny else None)
        widths = network_widths(depth, n_in, n_out, width)
    network: dict[str, Any] = {"widths": widths, **d.network}
    if d.feedback:
        network["feedback"] = d.feedback
    if d.init_scale is not None:
        network["init_scale"] = d.init_scale
    rule: dict[str, Any] = {}
    search: dict[str, Any] = {}
    if not d.terms and not d.only and d.pool != "paper3":     # open discovery: search the pool's structure
        rule["pool"] = d.pool or "library"
        search = {"method": d.search or "forward", "max_terms": d.max_terms or 5}
        meta.setdefault("term_scale", "norm")
    elif d.search is not None or d.max_terms is not None:
        raise ValueError("a search ('forward selection', 'at most N terms', ...) needs a pool to search, not named "
                         "terms: drop the named terms or say 'from the library' / 'from bio10'")
    if d.pool and not d.terms:
        rule["pool"] = d.pool
    elif d.terms:
        terms = list(d.terms) if d.only else ["F0", *[t for t in d.terms if t != "F0"]]
        if d.pool:
            from discovery.spec import POOLS

            terms = list(dict.fromkeys([*POOLS[d.pool], *terms]))
        rule["terms"] = terms
    elif d.only:
        raise ValueError("'only' needs at least one named term")
    return DiscoverySpec.model_validate(
        {
            "name": text.strip()[:200],
            "network": network,
            "task": task,
            "rule": rule,
            "meta": meta,
            "search": search,
            "resources": d.resources,
        }
    )
