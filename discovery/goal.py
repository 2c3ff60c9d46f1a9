"""Plain-language goal → :class:`discovery.spec.DiscoverySpec` (no web imports; used by the service and the CLI).

A goal such as "find a plasticity rule for depth-5 online learning under feedback alignment with Oja on MNIST
for 600 episodes" is read phrase by phrase; every phrase fills a slot of the spec (family, depth or widths,
feedback, data, ways, term restriction, search size, budget, seed). Words that change nothing ("sparse", "local",
"plasticity", "ordinary", punctuation) are read and listed in ``GoalParse.ignored``; a word that would change the
job into one the service cannot run ("convolutional", "cifar"), and any word not in the vocabulary, is an error
(:class:`GoalError` lists what was understood, those words, and the vocabulary). Nothing is guessed silently
(discovery.goal_phrases.words has the lists).

Vocabulary (case-insensitive):

- depth: ``depth-N`` / ``depth N`` / ``N layers`` / ``N-layer`` → L = N weight layers. Widths: input n_0 from the
  data set (784; 64 for sklearn digits), output 10 (47 for EMNIST-balanced, at least the number of ways), hidden
  widths interpolated piecewise-linearly along the paper's 170-130-100-70 (docs/science.md S3), so depth-5 gives
  784-170-130-100-70-10, depth-3 784-170-70-10, depth-2 784-130-10, depth-1 784-10. Default depth 5.
- width: ``width N`` (every hidden layer N), ``widths 784-32-10`` (explicit), ``tiny`` (a smoke-test size: hidden
  width 16, 5 shots, 5 queries, 10 held-out episodes and 20 meta-training episodes unless given explicitly).
- learning: ``online`` (the engine's only mode: the K·M training samples stream one at a time, batch 1). ``batch``,
  ``mini-batch`` or ``offline`` → error: batch learning is not supported.
- feedback: ``feedback alignment``/``FA``/``random feedback`` → fa; ``backprop``/``backpropagation``/``BP``/
  ``weight transport``/``symmetric feedback`` → bp; ``direct feedback (alignment)``/``DFA`` → dfa;
  ``sign-symmetric``/``sign feedback`` → sign.
- data: ``mnist`` → mnist5k; ``digits`` (8×8 sklearn) ; ``digits28``/``upsampled digits``; ``emnist`` →
  emnist-balanced; ``synthetic``; ``my dataset <name>``/``upload:<id>`` → an uploaded data set (``uploads``
  given to :func:`parse_goal`): input width D, output width its number of classes (at least the ways).
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from discovery.goal_phrases import (  # noqa: F401 - the vocabulary is part of this module's API
    BAD_INIT_SCALE,
    COMPILED_PHRASES,
    DEFAULT_DEPTH,
    FILLER,
    GRAMMAR,
    NEUTRAL,
    OUTPUT_DIMS,
    REFUSED,
    SMALL_INIT_SCALE,
    TINY,
    VOCABULARY,
    Draft,
    input_dim,
    interpolate_hidden,
    network_widths,
    normalize,
)
from discovery.spec import DiscoverySpec
from discovery.transfer.spec import depth_distribution

if TYPE_CHECKING:
    from discovery.data.uploads import UploadInfo


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


#: an uploaded data set, by name or id (read before every other phrase, so "my dataset digits" is not ``digits``)
UPLOAD_PHRASE = re.compile(r"\b(?:on\s+)?my\s+(?:own\s+)?(?:uploaded\s+)?data[\s-]*set\s+(?!of\b)"
                           r"([a-z0-9][a-z0-9_-]*)|\bupload:(\d+)\b")


@dataclass
class _GoalDraft(Draft):
    """The draft with the uploaded data set a goal names (``upload``: its name, or ``#<id>``) and the ones it
    may name (``uploads``)."""

    upload: str | None = None
    uploads: list[UploadInfo] = field(default_factory=list)


def _upload(m: re.Match[str], d: _GoalDraft) -> str:
    key = m.group(1) if m.group(1) else f"#{m.group(2)}"
    d.set_once("dataset", "upload", m.group(0))
    d.set_once("upload", key, m.group(0))
    return f"{m.group(0).strip()!r} → uploaded data set {key.lstrip('#')}"


@dataclass
class GoalParse:
    """The resolved spec and the phrases that produced it, in reading order."""

    spec: DiscoverySpec
    understood: list[str]
    ignored: list[str] = field(default_factory=list)


_SUFFIXES = ("ies", "es", "s", "ing", "ed", "ly")


def _is_neutral(word: str) -> bool:
    """A word that changes nothing (FILLER, NEUTRAL), also in a plural / -ing / -ed / -ly form."""
    if word in FILLER or word in NEUTRAL:
        return True
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            if any(w in FILLER or w in NEUTRAL for w in (stem, stem + "e", stem + "y")):
                return True
    return False


def sort_leftovers(words: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The words no phrase read, split into (ignored: they change nothing, refused: they name a job the service
    cannot run, unknown); grammar words are dropped, each list keeps the reading order without repeats."""
    ignored: list[str] = []
    refused: list[str] = []
    unknown: list[str] = []
    for w in words:
        if not w or w in GRAMMAR:
            continue
        bucket = refused if w in REFUSED else ignored if _is_neutral(w) else unknown
        if w not in bucket:
            bucket.append(w)
    return ignored, refused, unknown


def parse_goal(text: str, uploads: Sequence[UploadInfo] | None = None) -> GoalParse:
    """Read ``text`` into a spec; raises :class:`GoalError` when a word is not understood or phrases conflict.
    ``uploads``: the uploaded data sets a goal may name ("on my dataset <name>", "upload:<id>")."""
    if not text or not text.strip():
        raise GoalError(
            "the goal is empty: describe the rule to find, e.g. 'depth-5 online feedback alignment "
            "with oja on mnist for 600 episodes'"
        )
    work = normalize(text)
    hits: list[tuple[int, str]] = []
    draft = _GoalDraft(uploads=list(uploads or []))
    for pattern, handler in [(UPLOAD_PHRASE, _upload), *COMPILED_PHRASES]:
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
    ignored, refused, unknown = sort_leftovers(leftovers)
    if refused:
        reasons = "; ".join(dict.fromkeys(f"{w!r}: {REFUSED[w]}" for w in refused))
        raise GoalError(f"the goal asks for what the service cannot do — {reasons}", understood, refused + unknown)
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
    if spec.family == "unsupervised":
        understood = [re.sub(r"→ term (hebb|F9|F3) \(.*\)$", "→ describes the goal (no hint: the whole Hebbian library "
                             "is searched)", u) for u in understood]
        understood.append(f"unsupervised Hebbian rule on {spec.task.dataset}: y = W x with k = "
                          f"{spec.network.widths[-1]} outputs, objective {spec.rule.objective}, "
                          f"{spec.rule.unroll} online steps per episode")
    if spec.family == "reward":
        understood.append(f"reward-modulated rule of a reservoir readout (N = {spec.rule.N}) on motor task "
                          f"{spec.rule.motor_task}: searched on the {spec.rule.search_protocol} protocol, front scored "
                          f"on the {spec.rule.score_protocol} protocol")
    if spec.family == "recurrent":
        terms = (f"the generated library ({len(spec.rule.terms or [])} terms)" if spec.search.active
                 else f"terms {', '.join(spec.rule.terms or [])}")
        understood.append(f"recurrent fixed-point rule on mnist5k: N = {spec.network.widths[1]} tanh units, {terms}, "
                          f"{spec.meta.episodes} episodes")
    if spec.search.active:
        understood.append(f"open discovery: {spec.search.method} search over the {spec.rule.pool} pool "
                          f"({len(spec.rule.terms or [])} terms), at most {spec.search.max_terms} terms on the front")
    if ignored:
        understood.append(f"ignored (they change nothing): {', '.join(ignored)}")
    return GoalParse(spec=spec, understood=understood, ignored=ignored)


def _resolve_upload(d: _GoalDraft) -> UploadInfo:
    """The uploaded data set a goal names (by name, or by id for "upload:<id>")."""
    key = d.upload or ""
    for info in d.uploads:
        if (key.startswith("#") and str(info.id) == key[1:]) or info.name == key:
            return info
    what = f"upload:{key[1:]}" if key.startswith("#") else f"named {key!r}"
    names = ", ".join(sorted(i.name for i in d.uploads))
    raise ValueError(f"there is no uploaded data set {what}" + (f"; the uploaded data sets are {names}" if names
                     else "; upload one first (plasticity datasets upload, POST /api/datasets)"))


def goal_to_spec(text: str) -> DiscoverySpec:
    """The spec of a goal (see :func:`parse_goal`)."""
    return parse_goal(text).spec


#: the words of feedforward terms that name a recurrent term in a recurrent goal ("oja", "decay")
RECURRENT_READING: dict[str, str] = {"F9": "rec_oja", "F3": "rec_decay"}
#: a recurrent goal's defaults (those of examples/fixedpoint_mnist.json; tiny: N = 16 and a short run)
RECURRENT_DEFAULTS: dict[str, Any] = {"N": 100, "shots": 20, "episodes": 40, "lr": 0.1, "eval_episodes": 20,
                                      "max_terms": 3, "screen": 4, "search_episodes": 120}
RECURRENT_TINY: dict[str, Any] = {"N": 16, "shots": 3, "ways": 2, "queries": 4, "episodes": 2, "eval_episodes": 2,
                                  "max_terms": 2, "screen": 2, "search_episodes": 4}
#: the pool a recurrent goal without named terms searches (rules.recurrent: the generated library)
RECURRENT_SEARCH_POOL = "rec_library"


def _recurrent_terms(d: Draft) -> list[str]:
    """The recurrent term ids a goal named (oja and decay read as their recurrent versions)."""
    out = []
    for t in d.terms:
        tid = RECURRENT_READING.get(t, t)
        if not tid.startswith("rec_"):
            raise ValueError(f"term {t} belongs to feedforward rules; a recurrent goal names dW1, dW3, dW4, oja or "
                             "decay")
        out.append(tid)
    return out


def _build_recurrent_spec(d: Draft, text: str) -> DiscoverySpec:
    """The spec of a recurrent fixed-point goal: task fixedpoint-mnist, widths [784, N, 10], a recurrent rule."""
    if d.dataset not in (None, "mnist5k"):
        raise ValueError(f"the recurrent fixed-point task runs on mnist only, not {d.dataset!r}")
    if d.feedback or d.search not in (None, "forward") or d.pool or d.depth not in (None, 1, 2):
        raise ValueError("feedback modes, depths, pools and backward / path searches belong to feedforward goals; "
                         "a recurrent goal names its terms (dW1, dW3, dW4, oja, decay) or searches the recurrent "
                         "library forward ('at most N terms')")
    base = {**RECURRENT_DEFAULTS, **(RECURRENT_TINY if d.tiny else {})}
    n = d.width if d.width is not None else base["N"]
    task = {"kind": "fixedpoint-mnist", "dataset": "mnist5k", "shots": base["shots"],
            **({"ways": base["ways"], "queries": base["queries"]} if d.tiny else {}), **d.task}
    meta = {"episodes": base["episodes"], "lr": base["lr"], "eval_episodes": base["eval_episodes"], **d.meta}
    terms = _recurrent_terms(d)
    search: dict[str, Any] = {}
    if terms:       # named terms are fitted as they are
        if d.search or d.max_terms:
            raise ValueError("a recurrent search ('at most N terms', 'forward selection') runs over the recurrent "
                             "library, not named terms: drop the named terms")
        rule: dict[str, Any] = {"family": "recurrent", "terms": terms}
    else:           # no term named: open forward search over the recurrent library
        rule = {"family": "recurrent", "pool": RECURRENT_SEARCH_POOL}
        search = {"method": "forward", "max_terms": d.max_terms or base["max_terms"],
                  "screen_episodes": base["screen"]}
        meta = {**meta, "episodes": d.meta.get("episodes", base["search_episodes"])}   # the whole search's budget
    return DiscoverySpec.model_validate({"name": text.strip()[:200], "network": {"widths": [784, n, 10]},
                                         "task": task, "rule": rule, "meta": meta, "search": search,
                                         "resources": d.resources})


#: an unsupervised goal's defaults (the acceptance run of docs/unsupervised.md) and its tiny size
UNSUPERVISED_DEFAULTS: dict[str, Any] = {"k": 4, "unroll": 1000, "final_unroll": 2000, "passes": 5, "max_terms": 3,
                                         "screen": 16, "meta_batch": 8, "episodes": 1610, "lr": 3e-3,
                                         "eval_episodes": 16}
UNSUPERVISED_TINY: dict[str, Any] = {"k": 2, "unroll": 40, "final_unroll": 40, "passes": 1, "max_terms": 2,
                                     "screen": 2, "meta_batch": 2, "episodes": 60, "lr": 3e-3, "eval_episodes": 2}
#: terms whose words describe an unsupervised goal ("hebbian", "oja") rather than hint at its answer
UNSUPERVISED_DESCRIPTIVE = frozenset({"hebb", "F9", "F3"})


def _build_unsupervised_spec(d: Draft, text: str) -> DiscoverySpec:
    """The spec of an unsupervised goal: task pca, widths [64, k], an open forward search over the whole Hebbian
    library (the words 'hebbian', 'oja', 'decay' describe the goal; they do not restrict the search)."""
    if d.feedback or d.depth not in (None, 1) or d.widths is not None or d.pool or d.init_scale is not None:
        raise ValueError("feedback modes, depths, widths, pools and init scales belong to feedforward goals; an "
                         "unsupervised goal sets 'N components', 'reconstruction' / 'subspace objective', 'N passes'")
    if d.dataset not in (None, "digits", "mnist5k"):
        raise ValueError(f"the unsupervised family runs on digits or mnist (8×8 patches), not {d.dataset!r}")
    if any(t not in UNSUPERVISED_DESCRIPTIVE for t in d.terms) or d.only:
        raise ValueError("the unsupervised family has no error terms: it searches its own Hebbian library; leave "
                         "the terms out")
    if d.search not in (None, "forward"):
        raise ValueError("the unsupervised family searches by forward selection")
    base = {**UNSUPERVISED_DEFAULTS, **(UNSUPERVISED_TINY if d.tiny else {})}
    k = d.width if d.width is not None else base["k"]
    max_terms = d.max_terms or base["max_terms"]
    rule = {"family": "unsupervised", "pool": "hebbian", "unroll": base["unroll"], "final_unroll": base["final_unroll"],
            "passes": base["passes"], **d.unsupervised}
    meta = {"episodes": base["episodes"], "meta_batch": base["meta_batch"], "lr": base["lr"],
            "eval_episodes": base["eval_episodes"], **d.meta}
    return DiscoverySpec.model_validate({
        "name": text.strip()[:200], "network": {"widths": [64, k]},
        "task": {"kind": "pca", "dataset": d.dataset or "digits"}, "rule": rule, "meta": meta,
        "search": {"method": "forward", "max_terms": max_terms, "screen_episodes": base["screen"]},
        "resources": d.resources})


#: a reward goal's defaults (the acceptance run of docs/reward.md) and its tiny size
REWARD_DEFAULTS: dict[str, Any] = {"N": 100, "grid": [4.0], "top_m": 2, "popsize": 5, "generations": 2,
                                   "search_seeds": 2, "eval_seeds": 3, "max_terms": 2}
REWARD_TINY: dict[str, Any] = {"N": 30, "grid": [1.0], "top_m": 1, "popsize": 2, "generations": 1, "search_seeds": 1,
                               "eval_seeds": 2, "max_terms": 2, "periods_train": 2, "periods_test": 1,
                               "period_steps": 150}


def _build_reward_spec(d: Draft, text: str) -> DiscoverySpec:
    """The spec of a reward goal: task reservoir-motor, an open forward search over the reward library (no hint)."""
    if (d.feedback or d.depth is not None or d.widths is not None or d.pool or d.init_scale is not None
            or d.dataset or d.terms or d.unsupervised or d.task or d.width is not None):
        raise ValueError("feedback modes, depths, widths, data sets, pools, terms and init scales belong to other "
                         "families; a reward goal names the motor task ('butterfly', 'two-joint arm') and 'at most N "
                         "terms'")
    if d.search not in (None, "forward"):
        raise ValueError("the reward family searches by forward selection")
    base = {**REWARD_DEFAULTS, **(REWARD_TINY if d.tiny else {})}
    max_terms = d.max_terms or base.pop("max_terms")
    base.pop("max_terms", None)
    return DiscoverySpec.model_validate({
        "name": text.strip()[:200], "task": {"kind": "reservoir-motor"},
        "rule": {"family": "reward", "pool": "reward", **base, **d.reward},
        "meta": {k: v for k, v in d.meta.items() if k == "seed"},
        "search": {"method": "forward", "max_terms": max_terms}, "resources": d.resources})


def _build_spec(d: Draft, text: str) -> DiscoverySpec:
    if d.family == "unsupervised":
        return _build_unsupervised_spec(d, text)
    if d.family == "reward":
        return _build_reward_spec(d, text)
    if d.unsupervised:
        raise ValueError("passes, unroll and the reconstruction / subspace objective belong to unsupervised goals: "
                         "say 'unsupervised' or 'principal components'")
    if d.family == "recurrent":
        return _build_recurrent_spec(d, text)
    if any(t.startswith("rec_") for t in d.terms):
        raise ValueError("dW1, dW3 and dW4 are recurrent terms: say 'recurrent' or 'fixed points' to learn a "
                         "recurrent rule")
    dataset = d.dataset or "mnist5k"
    upload = _resolve_upload(d) if isinstance(d, _GoalDraft) and dataset == "upload" else None
    if upload is not None:
        dataset = upload.ref
    task: dict[str, Any] = {"dataset": dataset, **d.task}
    meta: dict[str, Any] = dict(d.meta)
    if d.tiny:
        task.setdefault("shots", TINY["shots"])
        task.setdefault("queries", TINY["queries"])
        meta.setdefault("eval_episodes", TINY["eval_episodes"])
        meta.setdefault("episodes", TINY["episodes"])
    ways = int(task.get("ways", 5))
    n_in = upload.dim if upload is not None else input_dim(dataset) or 784
    n_out = max(upload.n_classes if upload is not None else OUTPUT_DIMS.get(dataset, 10), ways)
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
    transfer = {"transfer": depth_distribution(*d.depths, dataset)} if d.depths else {}
    return DiscoverySpec.model_validate(
        {
            "name": text.strip()[:200],
            "network": network,
            "task": task,
            "rule": rule,
            "meta": meta,
            "search": search,
            "resources": d.resources,
            **transfer,
        }
    )
