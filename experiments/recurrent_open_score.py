"""The scoring phase of experiments.recurrent_open_search: each seed's selected rule on fixedpoint-mnist beside
rec_dW4 alone (η tuned the same way for both, paired over the same episodes) and on fixedpoint-linear beside
dW1–dW3; the paired differences come from discovery.analysis.stats.paired_difference (per seed and pooled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _entry(report: dict[str, Any], kind: str, learner: str | None = None) -> dict[str, Any]:
    return next(e for e in report["entries"] if e["kind"] == kind and (learner is None or e["learner"] == learner))


def score_all(seeds: list[int], out: Path, *, episodes: int | None = None, epochs: int | None = None,
              N: int | None = None, linear_iterations: int | None = None, eta_scales: list[float] | None = None,
              mnist_baselines: tuple[str, ...] = ("dW4",)) -> dict[str, Any]:
    """Score every seed's selected rule (``search_<seed>.json``) and write ``score.json`` (see the module doc)."""
    from discovery.analysis.stats import paired_difference
    from discovery.benchmarks.registry import run_suite
    from discovery.results import jsonable
    from rules.recurrent import RecurrentRule

    mnist_over: dict[str, Any] = {"baselines": list(mnist_baselines), "protocol": {}}
    if N is not None:
        mnist_over["network"] = {"N": N}
    if episodes is not None:
        mnist_over["protocol"]["episodes"] = episodes
    if epochs is not None:
        mnist_over["protocol"]["epochs"] = epochs
    if eta_scales:
        mnist_over["protocol"]["eta_scales"] = eta_scales
    linear_over = {"protocol": {"iterations": linear_iterations}} if linear_iterations else None
    rows = []
    for s in seeds:
        if (out / f"score_{s}.json").exists():          # scored already (e.g. right after its search)
            rows.append(json.loads((out / f"score_{s}.json").read_text()))
            continue
        rec = json.loads((out / f"search_{s}.json").read_text())
        rule = RecurrentRule.from_dict(rec["selected"])
        mnist = run_suite("fixedpoint-mnist", rule, seed=s, overrides=mnist_over)
        mine, dw4 = _entry(mnist, "rule"), _entry(mnist, "baseline", "dW4")
        a, b = mine["metrics"]["per_episode_accuracy"], dw4["metrics"]["per_episode_accuracy"]
        linear = run_suite("fixedpoint-linear", rule, seed=0, overrides=linear_over)
        rows.append({"seed": s, "rule": rule.canonical(), "text": rule.to_text(),
                     "mnist": {e["learner"]: {"score": e["score"], "ci95": e["ci95"],
                                              "eta_scale": e["hyperparameters"].get("eta_scale"),
                                              "tuning": e["tuning"], "per_episode": e["metrics"]["per_episode_accuracy"]}
                               for e in mnist["entries"]},
                     "mnist_definition": mnist["definition"],
                     "paired_rule_minus_dW4": paired_difference(a, b).model_dump(),
                     "linear": {e["learner"]: {"log10_J": e["score"], "best_eta": e["metrics"]["best_eta"]}
                                for e in linear["entries"]},
                     "linear_definition": linear["definition"],
                     "wall_s": {"mnist": mnist["wall_time_s"], "linear": linear["wall_time_s"]}})
        (out / f"score_{s}.json").write_text(json.dumps(jsonable(rows[-1]), indent=1))
        print(f"seed {s}: rule {rows[-1]['mnist']} vs dW4; paired {rows[-1]['paired_rule_minus_dW4']}; "
              f"linear {rows[-1]['linear']}", flush=True)
    rule_name = lambda row: next(k for k in row["mnist"] if k not in mnist_baselines)
    rule_accs = [a for row in rows for a in row["mnist"][rule_name(row)]["per_episode"]]
    dw4_accs = [a for row in rows for a in row["mnist"]["dW4"]["per_episode"]]
    result = {"seeds": rows, "pooled_paired_rule_minus_dW4": paired_difference(rule_accs, dw4_accs).model_dump(),
              "overrides": {"fixedpoint-mnist": mnist_over, "fixedpoint-linear": linear_over}}
    (out / "score.json").write_text(json.dumps(jsonable(result), indent=1))
    return result
