"""The built-in feedforward suites (all online: batch 1, one pass, one update per sample) and their runners.

* ``fa5-online``  — S3 setting, 784-170-130-100-70-10 on mnist5k held-out images, 5-way 50-shot, 10 queries/class,
  200 episodes; accuracy ± 95% t-interval, alignment α_ℓ(e_ℓ, δ_ℓ), E1_ℓ = (1/N)‖Z_ℓ − Y_ℓ W_ℓ W_ℓᵀ‖²_F.
* ``deep-online`` — S1: depth L ∈ {2, 5, 10}, init scale ∈ {0.3, 1, 3} × Xavier, one pass over a 10-class stream;
  BP vs BP + Oja (ΔW_ℓ = −η δ_ℓ y_{ℓ−1}ᵀ + γ(y_ℓ y_{ℓ−1}ᵀ − y_ℓ y_ℓᵀ W_ℓ)) and the rule; accuracy, activation norms.
* ``emnist-5way`` — the paper's 784-170-130-100-70-47 on EMNIST-balanced, when PLASTICITY_EMNIST_DIR is set.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from discovery.analysis.stats import t_interval
from discovery.baselines.learners import BASELINES, GRID_POINTS, locality_of
from discovery.benchmarks.evaluate import (
    LearnerRun,
    is_learner,
    mean_finite,
    rule_description,
    rule_learner,
    run_learner,
    tune,
)
from discovery.benchmarks.suite import RunContext, Suite, SuiteSkipped
from discovery.benchmarks.tuning import TuningPlan

EMNIST_ENV = "PLASTICITY_EMNIST_DIR"


def _seeds(seed: int) -> dict[str, int]:
    base = 1_000_003 * int(seed)
    return {"tune_episodes": base + 11, "score_episodes": base + 22, "tune_init": base + 33_000,
            "score_init": base + 44_000}


def _dtype(protocol: Mapping[str, Any]) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[protocol.get("dtype", "float32")]


def _load_data(suite: Suite) -> Any:
    """The suite's data set; raises SuiteSkipped when it needs an unset environment variable or fails to load."""
    from discovery.data import DatasetError, load_dataset

    missing = [v for v in suite.requires_env if not os.environ.get(v)]
    if missing:
        raise SuiteSkipped(f"suite {suite.name!r} needs {', '.join(missing)} (not configured): set it to the folder "
                           "holding the official EMNIST-balanced IDX files "
                           "(emnist-balanced-test-images-idx3-ubyte[.gz], emnist-balanced-test-labels-idx1-ubyte[.gz])")
    d = suite.data
    kwargs: dict[str, Any] = {}
    if d["dataset"] == "emnist-balanced":
        kwargs["emnist_dir"] = os.environ.get(EMNIST_ENV)
    if d.get("upsample"):
        kwargs["upsample"] = True
    try:
        return load_dataset(d["dataset"], **kwargs)
    except DatasetError as exc:
        raise SuiteSkipped(f"data set {d['dataset']!r} could not be loaded: {exc}") from exc


def _samplers(suite: Suite, dataset: Any, seed: int, ways: int, shots: int,
              queries: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Factories of freshly seeded (meta-train sampler for tuning, held-out sampler for scoring); the image split
    is fixed (the sampler's default split seed, as in meta-training), so held-out images are never seen by
    tuning or meta-training."""
    from discovery.data import EpisodeSampler

    s = _seeds(seed)
    common = {"heldout_fraction": suite.data.get("heldout_fraction", 0.2),
              "remap_labels": suite.data.get("remap_labels", True)}
    EpisodeSampler(dataset, ways, shots, queries, split="heldout", seed=0, **common)  # fail early if too small

    def train() -> Any:
        return EpisodeSampler(dataset, ways, shots, queries, split="train", seed=s["tune_episodes"], **common)

    def held() -> Any:
        return EpisodeSampler(dataset, ways, shots, queries, split="heldout", seed=s["score_episodes"], **common)

    return train, held


def _entry(name: str, kind: str, runs: Sequence[LearnerRun], locality: str, hyperparameters: Mapping[str, Any],
           metrics: Mapping[str, Any], tuning: Any = None) -> dict[str, Any]:
    """One leaderboard row: score = mean over episodes of the per-episode accuracy (averaged over ``runs``, which
    share their episodes), its 95% t-interval, cost = mean per-sample step time over the runs."""
    per_episode = [sum(r.accuracy[i] for r in runs) / len(runs) for i in range(len(runs[0].accuracy))]
    mean, lo, hi = t_interval(per_episode)
    return {
        "learner": name,
        "kind": kind,
        "score": mean,
        "ci95": [lo, hi],
        "ci95_halfwidth": (hi - lo) / 2,
        "episodes": len(per_episode),
        "metrics": dict(metrics),
        "locality": locality,
        "cost_per_sample_ms": sum(r.cost_per_sample_ms for r in runs) / len(runs),
        "hyperparameters": dict(hyperparameters),
        "tuning": tuning,
        "per_episode": per_episode,
    }


def _run_metrics(run: LearnerRun) -> dict[str, Any]:
    return {
        "accuracy": sum(run.accuracy) / len(run.accuracy),
        "query_loss": mean_finite(run.loss),
        "alignment_deg": run.alignment_deg,
        "e1": run.e1,
        "orth_error": run.orth_error,
        "activation_norms": run.activation_norms,
        "diverged_episodes": run.diverged,
        "cost_per_step_ms": run.cost_per_step_ms,
        "batch": run.batch,
        "steps_per_episode": run.steps,
    }


def _rule_locality(learner: Any, feedback: str) -> str:
    loc = getattr(learner, "locality", None)
    return loc if isinstance(loc, str) else locality_of(feedback)


@dataclass(frozen=True)
class FewshotSetup:
    """Everything a few-shot suite's learners share: the resolved suite, the net, the samplers (fresh meta-train
    sampler for tuning, fresh held-out sampler for scoring) and the init seeds. Built once per process."""

    suite: Suite
    widths: list[int]
    beta: float
    train: Callable[[], Any]
    held: Callable[[], Any]
    seeds: dict[str, int]
    dtype: torch.dtype
    common: dict[str, Any]


def fewshot_setup(suite: Suite, seed: int, device: str) -> FewshotSetup:
    """The shared setup of ``suite`` (already resolved for tiny) at ``seed`` on ``device``."""
    net, data, prot = suite.network, suite.data, suite.protocol
    dataset = _load_data(suite)
    widths = list(net["widths"])
    if widths[0] != dataset.dim:
        raise ValueError(f"suite {suite.name!r}: input width {widths[0]} != data dimension {dataset.dim}")
    beta, scale = float(net["beta"]), float(net.get("init_scale", 1.0))
    train, held = _samplers(suite, dataset, seed, data["ways"], data["shots"], data["queries"])
    dtype = _dtype(prot)
    common = {"widths": widths, "beta": beta, "init_scale": scale, "chunk": int(prot["chunk"]), "dtype": dtype,
              "device": device}
    return FewshotSetup(suite, widths, beta, train, held, _seeds(seed), dtype, common)


def evaluate_point(setup: FewshotSetup, baseline: str, hp: Mapping[str, Any]) -> tuple[float, int]:
    """(mean meta-train accuracy, diverged episodes) of one hyperparameter point of ``baseline`` on the tuning
    episodes (the same episodes and initial weights for every point and every baseline)."""
    learner = BASELINES[baseline].make(setup.beta, **hp)
    run = run_learner(learner, setup.train, episodes=int(setup.suite.protocol["tune_episodes"]),
                      init_seed=setup.seeds["tune_init"], diagnostics=False, **setup.common)
    return sum(run.accuracy) / len(run.accuracy), run.diverged


def tune_baseline(setup: FewshotSetup, baseline: str, emit: Callable[[int, int], None] | None = None,
                  extend: bool = True) -> dict[str, Any]:
    """Serial tuning of one baseline by its :class:`~discovery.benchmarks.tuning.TuningPlan` (the fan-out in
    ``workers.baseline_tasks`` runs the same plan one task per point); returns the tuning report."""
    plan = TuningPlan(BASELINES[baseline].stages, extend=extend)
    while points := plan.next_points():
        scores = []
        for hp in points:
            scores.append(evaluate_point(setup, baseline, hp))
            if emit is not None:
                emit(len(plan.table) + len(scores), plan.planned_points)
        plan.record(scores)
    return tuning_report(setup.suite, plan)


def tuning_report(suite: Suite, plan: TuningPlan) -> dict[str, Any]:
    """A finished plan's report with the tuning split and episode count of the (resolved) suite."""
    return {"split": "train", "episodes": int(suite.protocol["tune_episodes"]), **plan.result()}


def _score(setup: FewshotSetup, learner: Any, emit: Callable[[int, int], None] | None) -> LearnerRun:
    prot = setup.suite.protocol
    return run_learner(learner, setup.held, episodes=int(prot["episodes"]), init_seed=setup.seeds["score_init"],
                       diag_every=int(prot["diag_every"]), progress=emit, **setup.common)


def score_baseline(setup: FewshotSetup, baseline: str, tuning: Mapping[str, Any],
                   emit: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The entry of ``baseline`` at its tuned point ``tuning["best"]``, scored on the held-out episodes."""
    learner = BASELINES[baseline].make(setup.beta, **tuning["best"])
    run = _score(setup, learner, emit)
    metrics = _run_metrics(run)
    if hasattr(learner, "vjp_per_step"):
        metrics["vjp_per_step"] = learner.vjp_per_step(len(setup.widths) - 1)
    return _entry(learner.name, "baseline", [run], learner.locality, learner.hyperparameters, metrics,
                  dict(tuning))


def score_rule(setup: FewshotSetup, rule: Any, feedback: str | None,
               emit: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The entry of a rule scored as it is (no tuning) on the same held-out episodes and initial weights."""
    fb = feedback or setup.suite.network.get("rule_feedback", "fa")
    learner = rule_learner(rule, fb, setup.beta, setup.dtype, setup.common["device"])
    run = _score(setup, learner, emit)
    hp = {"feedback": getattr(learner, "feedback", fb), **({} if is_learner(rule) else rule_description(rule))}
    return _entry(learner.name, "rule", [run], _rule_locality(learner, fb), hp, _run_metrics(run))


def fewshot_runner(suite: Suite, ctx: RunContext) -> dict[str, Any]:
    """M-way K-shot online episodes on one fixed net: tune each baseline on meta-train episodes (same budget,
    grid extended where the best is on its edge), score it and the rule on the same held-out episodes and
    initial weights."""
    setup = fewshot_setup(suite, ctx.seed, ctx.device)

    def emitter(stage: str, learner: str) -> Callable[[int, int], None]:
        return lambda done, total: ctx.emit({"stage": stage, "learner": learner, "done": done, "total": total})

    entries: list[dict[str, Any]] = []
    for bname in suite.baselines:
        tuned = tune_baseline(setup, bname, emitter("tune", bname))
        entries.append(score_baseline(setup, bname, tuned, emitter("score", bname)))
    if ctx.rule is not None:
        entries.append(score_rule(setup, ctx.rule, ctx.feedback, emitter("score", "rule")))
    return {"entries": entries}


def deep_runner(suite: Suite, ctx: RunContext) -> dict[str, Any]:
    """S1 grid: for each depth, tune BP and BP + Oja at init scale 1 (meta-train, same budget), then score every
    (depth, init scale) on the same held-out streams; a learner's score averages its configurations per episode."""
    net, data, prot = suite.network, suite.data, suite.protocol
    dataset = _load_data(suite)
    beta, hidden, n_out = float(net["beta"]), int(net["hidden"]), int(net["n_out"])
    train, held = _samplers(suite, dataset, ctx.seed, data["ways"], data["shots"], data["queries"])
    seeds = _seeds(ctx.seed)
    dtype = _dtype(prot)
    opts = {"beta": beta, "chunk": int(prot["chunk"]), "dtype": dtype, "device": ctx.device}
    names = list(suite.baselines) + (["rule"] if ctx.rule is not None else [])
    runs: dict[str, list[LearnerRun]] = {n: [] for n in names}
    configs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    hps: dict[str, dict[str, Any]] = {n: {} for n in names}
    tunings: dict[str, dict[str, Any]] = {n: {} for n in suite.baselines}
    learners: dict[str, Any] = {}
    fb = ctx.feedback or net.get("rule_feedback", "bp")
    for depth in net["depths"]:
        widths = [dataset.dim] + [hidden] * (int(depth) - 1) + [n_out]
        made: dict[str, Any] = {}
        for bname in suite.baselines:
            spec = BASELINES[bname]
            tuned = tune(functools.partial(spec.make, beta), spec.stages, train, widths=widths,
                         episodes=int(prot["tune_episodes"]), init_seed=seeds["tune_init"], init_scale=1.0,
                         progress=lambda d, t, _n=bname, _L=depth: ctx.emit(
                             {"stage": "tune", "learner": _n, "config": f"depth={_L}", "done": d, "total": t}),
                         **opts)
            made[bname] = spec.make(beta, **tuned.best)
            hps[bname][f"depth={depth}"] = dict(tuned.best)
            tunings[bname][f"depth={depth}"] = tuned.to_dict()
        if ctx.rule is not None:
            made["rule"] = rule_learner(ctx.rule, fb, beta, dtype, ctx.device)
        learners.update(made)
        for scale in net["init_scales"]:
            for lname, learner in made.items():
                run = run_learner(learner, held, widths=widths, episodes=int(prot["episodes"]),
                                  init_seed=seeds["score_init"], init_scale=float(scale),
                                  diag_every=int(prot["diag_every"]),
                                  progress=lambda d, t, _n=lname, _c=f"depth={depth},scale={scale}": ctx.emit(
                                      {"stage": "score", "learner": _n, "config": _c, "done": d, "total": t}),
                                  **opts)
                runs[lname].append(run)
                mean, lo, hi = t_interval(run.accuracy)
                configs[lname].append({"depth": int(depth), "init_scale": float(scale), "accuracy": mean,
                                       "ci95": [lo, hi], "activation_norms": run.activation_norms,
                                       "alignment_deg": run.alignment_deg, "diverged_episodes": run.diverged,
                                       "cost_per_sample_ms": run.cost_per_sample_ms})
    entries = []
    for lname in names:
        learner = learners[lname]
        kind = "rule" if lname == "rule" else "baseline"
        loc = _rule_locality(learner, fb) if kind == "rule" else learner.locality
        hp = hps[lname] if kind == "baseline" else {"feedback": getattr(learner, "feedback", fb),
                                                     **({} if is_learner(ctx.rule) else rule_description(ctx.rule))}
        metrics = {"configs": configs[lname],
                   "diverged_episodes": sum(r.diverged for r in runs[lname])}
        entries.append(_entry(learner.name, kind, runs[lname], loc, hp, metrics,
                              tunings.get(lname) if kind == "baseline" else None))
    return {"entries": entries}


# ================================================================================ built-in suites

_FEWSHOT_TEXT = (
    "Online learning (batch 1, one pass, one update per sample). Each episode draws {data[ways]} classes of "
    "{data[dataset]} and streams {data[ways]}×{data[shots]} shuffled training images through a fresh net "
    "{network[widths]} (no biases, softplus β={network[beta]}, Xavier-uniform ×{network[init_scale]}, feedback "
    "matrices redrawn per episode), then classifies {data[ways]}×{data[queries]} query images. Score = mean query "
    "accuracy over {protocol[episodes]} episodes from the held-out image split (fraction "
    "{data[heldout_fraction]} of every class, never used for meta-training or tuning) ± 95% Student "
    "t-interval over episodes. Fair comparison: every baseline's free hyperparameters (lr; Oja γ; PC η, n) are "
    "tuned with the same budget of {protocol[grid_points]} evaluated points (a 9-point lr grid; or 5 learning "
    "rates at the default second hyperparameter, then 4 values of it at the best lr), each evaluated on the "
    "same {protocol[tune_episodes]} meta-train episodes (split=train); the best mean accuracy is kept. A discovered "
    "rule is scored as it is (no tuning) under '{network[rule_feedback]}' feedback. All learners see the same "
    "held-out episodes and the same initial weights (paired). Diagnostics: per-layer angle between each "
    "learner's teaching signal e_ℓ and backprop's δ_ℓ at the same W (ℓ = 1..L−1, every "
    "{protocol[diag_every]} samples), E1_ℓ = (1/N)‖Z_ℓ − Y_ℓ W_ℓ W_ℓᵀ‖²_F and ‖I − W_ℓ W_ℓᵀ‖²_F/n_ℓ on the queries "
    "after adaptation, activation norms. Cost = wall time of the update step per sample per episode (episodes "
    "batched {protocol[chunk]} at a time, {protocol[dtype]})."
)

_DEEP_TEXT = (
    "S1 (Oja's rule under online learning, depth and poor initialization). For every depth L in "
    "{network[depths]} (hidden width {network[hidden]}, softplus β={network[beta]}, no biases) and every init "
    "scale in {network[init_scales]} × Xavier, a fresh net makes one online pass (batch 1) over a "
    "{data[ways]}-class stream of {data[dataset]} ({data[shots]} images per class, shuffled) and is scored on "
    "{data[queries]} query images per class, on {protocol[episodes]} held-out episodes per configuration. "
    "BP and BP+Oja are tuned per depth at init scale 1 with the same budget ({protocol[grid_points]} "
    "evaluated points × {protocol[tune_episodes]} meta-train episodes) and keep those values at the other scales; the "
    "rule is scored as it is under '{network[rule_feedback]}' feedback. Score = per-episode accuracy averaged "
    "over the configurations (paired episodes), ± 95% t-interval; per-configuration accuracy and activation "
    "norms ‖y_ℓ‖ are in metrics.configs."
)

_FEWSHOT_BASELINES = ["BP", "FA", "DFA", "BP+Oja", "PC-Exact", "PC-FixedPred", "PC-Strict"]
_FEWSHOT_METRICS = ["accuracy", "ci95", "alignment_deg", "e1", "orth_error", "activation_norms", "query_loss",
                    "diverged_episodes", "cost_per_sample_ms"]
_TINY_FEWSHOT = {
    "network": {"widths": [64, 24, 16, 10]},
    "data": {"dataset": "digits", "shots": 6, "queries": 4},
    "protocol": {"episodes": 6, "tune_episodes": 3, "chunk": 6, "diag_every": 5},
}

#: the S3 protocol and episode shape shared by fa5-online and emnist-5way (docs/science.md S3)
_S3_PROTOCOL = {"episodes": 200, "tune_episodes": 50, "grid_points": GRID_POINTS, "chunk": 20, "diag_every": 25,
                "dtype": "float32", "tune_split": "train", "score_split": "heldout"}
_S3_DATA = {"ways": 5, "shots": 50, "queries": 10, "heldout_fraction": 0.2, "remap_labels": True, "split": "heldout"}

FA5_ONLINE = Suite(
    name="fa5-online", version="1.0", kind="mlp-online", runner=fewshot_runner,
    title="5-way 50-shot online learning, 784-170-130-100-70-10, mnist5k held-out images",
    description="docs/science.md S3 setting on offline MNIST: baselines (BP, FA, DFA, BP+Oja, predictive coding) "
                "and discovered rules learn a 5-way task online from 250 samples.",
    network={"widths": [784, 170, 130, 100, 70, 10], "beta": 10.0, "init_scale": 1.0, "rule_feedback": "fa"},
    data={"dataset": "mnist5k", **_S3_DATA},
    protocol=dict(_S3_PROTOCOL),
    metrics=_FEWSHOT_METRICS, baselines=_FEWSHOT_BASELINES, tiny=_TINY_FEWSHOT, protocol_text=_FEWSHOT_TEXT,
)

EMNIST_5WAY = Suite(
    name="emnist-5way", version="1.0", kind="mlp-online", runner=fewshot_runner,
    title="The paper's setting: 5-way 50-shot online, 784-170-130-100-70-47, EMNIST-balanced",
    description="docs/science.md S3 exactly (47-unit softmax, EMNIST-balanced test files); needs "
                "PLASTICITY_EMNIST_DIR. Held-out episodes mix unseen images of meta-train classes with the "
                "held-out classes of the data split.",
    network={"widths": [784, 170, 130, 100, 70, 47], "beta": 10.0, "init_scale": 1.0, "rule_feedback": "fa"},
    data={"dataset": "emnist-balanced", **_S3_DATA},
    protocol=dict(_S3_PROTOCOL),
    metrics=_FEWSHOT_METRICS, baselines=_FEWSHOT_BASELINES, requires_env=[EMNIST_ENV],
    tiny={"network": {"widths": [784, 24, 16, 47]}, "data": {"shots": 6, "queries": 4},
          "protocol": {"episodes": 6, "tune_episodes": 3, "chunk": 6, "diag_every": 5}},
    protocol_text=_FEWSHOT_TEXT,
)

DEEP_ONLINE = Suite(
    name="deep-online", version="1.0", kind="mlp-online-grid", runner=deep_runner,
    title="S1: depth × init scale, one online pass over a 10-class stream (BP vs BP+Oja)",
    description="Oja's rule added to pure online backprop under depth and sub-optimal initialization.",
    network={"depths": [2, 5, 10], "init_scales": [0.3, 1.0, 3.0], "hidden": 128, "n_out": 10, "beta": 10.0,
             "rule_feedback": "bp"},
    data={"dataset": "mnist5k", "ways": 10, "shots": 80, "queries": 20, "heldout_fraction": 0.2,
          "remap_labels": True, "split": "heldout"},
    protocol={"episodes": 20, "tune_episodes": 10, "grid_points": GRID_POINTS, "chunk": 20, "diag_every": 100,
              "dtype": "float32", "tune_split": "train", "score_split": "heldout"},
    metrics=["accuracy", "ci95", "configs", "activation_norms", "diverged_episodes", "cost_per_sample_ms"],
    baselines=["BP", "BP+Oja"],
    tiny={"network": {"depths": [2, 5], "hidden": 16},
          "data": {"dataset": "digits", "shots": 5, "queries": 3},
          "protocol": {"episodes": 4, "tune_episodes": 2, "chunk": 4, "diag_every": 10}},
    protocol_text=_DEEP_TEXT,
)
