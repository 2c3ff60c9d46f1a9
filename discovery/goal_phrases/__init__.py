"""The vocabulary of plain-language goals (see discovery.goal): widths and defaults, the filler words, and the phrase
table — each phrase a regular expression with the handler that sets its part of the draft spec."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from discovery.goal_phrases.words import FILLER, GRAMMAR, NEUTRAL, REFUSED, VOCABULARY  # noqa: F401

#: Hidden widths of the paper's depth-5 net (docs/science.md S3), the anchors of the width interpolation.
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


@dataclass
class Draft:
    """What the phrases set so far (None = not said)."""

    family: str | None = None
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
    unsupervised: dict[str, Any] = field(default_factory=dict)   # objective, passes, unroll (unsupervised family)
    reward: dict[str, Any] = field(default_factory=dict)         # motor_task (reward family)
    batch_mode: str | None = None
    depths: tuple[int, int] | None = None      # "works across depths 3 to 7": a task distribution (docs/transfer.md)
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


_Handler = Callable[["re.Match[str]", Draft], str]
_NUM = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"


def _int(m: re.Match[str], group: int = 1) -> int:
    return int(m.group(group).replace(",", "").replace("_", ""))


def _term(term_id: str, label: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        if term_id not in d.terms:
            d.terms.append(term_id)
        return f"{m.group(0)!r} → term {term_id} ({label})"

    return handle


def _feedback(mode: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once("feedback", mode, m.group(0))
        return f"{m.group(0)!r} → feedback {mode}"

    return handle


def _dataset(name: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once("dataset", name, m.group(0))
        return f"{m.group(0)!r} → data set {name}"

    return handle


def _setter(section: str, key: str, cast: Callable[[str], Any], label: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        value = cast(m.group(1).replace(",", "").replace("_", ""))
        getattr(d, section)[key] = value
        return f"{m.group(0)!r} → {label} {value}"

    return handle


def _depth(m: re.Match[str], d: Draft) -> str:
    d.set_once("depth", _int(m), m.group(0))
    return f"{m.group(0)!r} → {_int(m)} weight layers"


def _depth_range(m: re.Match[str], d: Draft) -> str:
    lo, hi = sorted((int(m.group(1)), int(m.group(2))))
    d.set_once("depths", (lo, hi), m.group(0))
    train = sorted({*range(lo, hi + 1, 2), hi})
    return (f"{m.group(0)!r} → a task distribution over depths {lo}–{hi} (docs/transfer.md): training cells at "
            f"depths {', '.join(map(str, train))}, selection cells at the depths between")


def _hidden_layers(m: re.Match[str], d: Draft) -> str:
    d.set_once("depth", _int(m) + 1, m.group(0))
    return f"{m.group(0)!r} → {_int(m)} hidden layers = {_int(m) + 1} weight layers"


def _width(m: re.Match[str], d: Draft) -> str:
    d.set_once("width", _int(m), m.group(0))
    return f"{m.group(0)!r} → hidden width {_int(m)}"


def _widths(m: re.Match[str], d: Draft) -> str:
    widths = [int(w) for w in re.split(r"[-x,\s]+", m.group(1)) if w]
    d.set_once("widths", widths, m.group(0))
    return f"{m.group(0)!r} → widths {widths}"


def _tiny(m: re.Match[str], d: Draft) -> str:
    d.tiny = True
    return f"{m.group(0)!r} → tiny size (hidden width 16, 5 shots, 5 queries, 10 eval episodes, 20 episodes)"


def _online(m: re.Match[str], d: Draft) -> str:
    return f"{m.group(0)!r} → online learning (one sample at a time, batch 1)"


def _batch(m: re.Match[str], d: Draft) -> str:
    d.batch_mode = m.group(0)
    return ""


def _init(scale: float) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once("init_scale", scale, m.group(0))
        return f"{m.group(0)!r} → init_scale {scale} (× the Xavier range)"

    return handle


def _init_value(m: re.Match[str], d: Draft) -> str:
    return _init(float(m.group(1)))(m, d)


def _choice(attr: str, value: str, label: str) -> _Handler:
    """A phrase that sets one draft field (once) to a fixed value, e.g. the pool or the search method."""
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once(attr, value, m.group(0))
        return f"{m.group(0)!r} → {label} {value}"

    return handle


def _pool(name: str) -> _Handler:
    return _choice("pool", name, "term pool")


def _search(method: str) -> _Handler:
    return _choice("search", method, "search by")


def _max_terms(m: re.Match[str], d: Draft) -> str:
    d.max_terms = int(m.group(1))
    return f"{m.group(0)!r} → at most {d.max_terms} terms on the front"


def _f_term(m: re.Match[str], d: Draft) -> str:
    return _term(f"F{m.group(1)}", "library term")(m, d)


def _only(m: re.Match[str], d: Draft) -> str:
    d.only = True
    return f"{m.group(0)!r} → exactly the named terms (no pseudo-gradient added)"


def _device(kind: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.resources.update({"device": kind, "num_gpus": 1.0 if kind == "cuda" else 0.0})
        return f"{m.group(0)!r} → device {kind}"

    return handle


def _family(name: str, reading: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once("family", name, m.group(0))
        return f"{m.group(0)!r} → the {reading}"

    return handle


_recurrent = _family("recurrent", "recurrent fixed-point rule family (task fixedpoint-mnist)")
_unsupervised = _family("unsupervised", "unsupervised Hebbian rule family (task pca: y = W x on centred digits)")
_reward = _family("reward", "reward-modulated (three-factor) rule family (task reservoir-motor: a reservoir readout "
                            "on a motor task of S5)")


def _motor_task(task: int | None) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once("family", "reward", m.group(0))
        value = task if task is not None else _int(m)
        if d.reward.get("motor_task", value) != value:
            d.conflicts.append(f"motor task: {d.reward['motor_task']} and {value} (from {m.group(0)!r})")
        d.reward["motor_task"] = value
        return f"{m.group(0)!r} → motor task {value} ({'the butterfly' if value == 1 else 'the two-joint arm'})"

    return handle


def _motor(m: re.Match[str], d: Draft) -> str:
    d.set_once("family", "reward", m.group(0))
    return f"{m.group(0)!r} → a motor task of S5 (reward family; task 1, the butterfly, unless an arm is named)"


def _unsup_objective(objective: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.set_once("family", "unsupervised", m.group(0))
        if d.unsupervised.get("objective", objective) != objective:
            d.conflicts.append(f"objective: {d.unsupervised['objective']!r} and {objective!r} (from {m.group(0)!r})")
        d.unsupervised["objective"] = objective
        return f"{m.group(0)!r} → unsupervised objective {objective}"

    return handle


def _unsup_outputs(m: re.Match[str], d: Draft) -> str:
    d.set_once("family", "unsupervised", m.group(0))
    d.set_once("width", _int(m), m.group(0))
    return f"{m.group(0)!r} → k = {_int(m)} outputs (principal components)"


def _unsup_setting(key: str, label: str) -> _Handler:
    def handle(m: re.Match[str], d: Draft) -> str:
        d.unsupervised[key] = _int(m)
        return f"{m.group(0)!r} → {label} {_int(m)}"

    return handle


def _rec_term(m: re.Match[str], d: Draft) -> str:
    return _term(f"rec_dW{m.group(1)}", "recurrent term")(m, d)


_INIT_WORD = r"init(?:ial(?:i[sz]ation)?|i[sz]ation)?"

#: (pattern, handler) in matching order: longer and more specific phrases first; each match consumes its text.
PHRASES: list[tuple[str, _Handler]] = [
    (r"\b(\d+)\s+(?:principal[\s-]+)?(?:components?|outputs?)\b", _unsup_outputs),
    (r"\b(\d+)[\s-]*(?:online[\s-]+)?passes\b", _unsup_setting("passes", "online passes for the evaluation:")),
    (r"\b(?:unroll|horizon)[\s:=]*(\d+)(?:[\s-]+steps?)?\b", _unsup_setting("unroll", "inner steps per episode:")),
    (r"\bsubspace[\s-]+(?:objective|alignment|error|loss)\b|\bsubspace[\s-]+alignment[\s-]+objective\b",
     _unsup_objective("subspace")),
    (r"\breconstruct(?:ion|s|ing)?(?:[\s-]+(?:error|objective|loss))*\b", _unsup_objective("reconstruction")),
    (r"\b(?:extract(?:s|ing)?|find(?:s|ing)?|learn(?:s|ing)?)?\s*(?:the\s+)?(?:top[\s-]+)?principal[\s-]+"
     r"(?:components?|subspaces?)\b|\bpca\b|\bun[\s-]*supervised\b", _unsupervised),
    ((r"\breward(?:[\s-]*(?:modulated|based|driven))?\b|\bthree[\s-]*factors?\b|\bneuromodulat\w*\b|"
      r"\breservoirs?(?:[\s-]+comput(?:er|ers|ing))?\b"), _reward),
    (r"\bmotor[\s-]+task[\s-]*([12])\b", _motor_task(None)),
    (r"\b(?:two|2)[\s-]*joint(?:ed)?[\s-]+arm\b", _motor_task(2)),
    (r"\bbutterfly\b", _motor_task(1)),
    (r"\bmotor(?:[\s-]+(?:tasks?|learning|control))?\b", _motor),
    (r"\brecurrent\b|\bfixed[\s-]*points?(?:[\s-]+(?:rnn|networks?|systems?))?\b|\brnn\b", _recurrent),
    (r"\bdw([134])\b", _rec_term),
    (r"\bwidths?[\s:=]*(\d+(?:\s*[-x,]\s*\d+)+)\b", _widths),
    (r"\bmeta[\s-]*batch(?:[\s-]*size)?(?:\s+of)?[\s:=]*(\d+)\b", _setter("meta", "meta_batch", int, "meta-batch")),
    (
        r"\b(\d[\d,_]*)\s*(?:eval(?:uation)?|held[\s-]*out|test)\s+episodes?\b",
        _setter("meta", "eval_episodes", int, "held-out evaluation episodes"),
    ),
    (r"\b(\d[\d,_]*)\s*(?:meta[\s-]*(?:training\s+)?)?episodes?\b", _setter("meta", "episodes", int, "episodes")),
    ((r"\b(?:that\s+)?(?:works?\s+|transfers?\s+|generali[sz]es?\s+)?(?:across|over)\s+(?:all\s+)?depths?\s+"
     r"(\d+)\s*(?:to|-|–|through)\s*(\d+)\b"), _depth_range),
    (r"\bdepth[\s:=-]*(\d+)\b", _depth),
    (r"\b(\d+)[\s-]*hidden[\s-]*layers?\b", _hidden_layers),
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
    (r"\b(?:the\s+)?(?:paper'?s?|published)\s+(?:three|3)[\s-]*terms?\b|\bpaper[\s-]*3\b|\bthree[\s-]*terms?\b",
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
COMPILED_PHRASES = [(re.compile(p), h) for p, h in PHRASES]


def normalize(text: str) -> str:
    text = text.lower()
    for dash in "‐‑‒–—−":
        text = text.replace(dash, "-")
    return text.replace("’", "'")
