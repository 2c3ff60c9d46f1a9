"""Benchmark suites: registry, tiny runs with scores and 95% CIs, reproducibility, rules scored as they are,
EMNIST skipped when not configured, custom runners pluggable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discovery.analysis.stats import t_interval
from discovery.baselines.learners import backprop
from discovery.benchmarks.registry import SUITES, get_suite, list_suites, register_suite, run_suite
from discovery.benchmarks.suite import RunContext, Suite, SuiteSkipped

FEWSHOT_BASELINES = ["BP", "FA", "DFA", "BP+Oja", "PC-Exact", "PC-FixedPred", "PC-Strict"]
VOLATILE = {"cost_per_sample_ms", "wall_time_s", "cost_per_step_ms"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fa5_tiny() -> dict[str, Any]:
    events: list[dict] = []
    report = run_suite("fa5-online", None, tiny=True, seed=0, progress=events.append, threads=1)
    report["_events"] = events
    return report


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE and k != "_events"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_registry_has_the_builtin_suites():
    assert {"fa5-online", "deep-online", "emnist-5way"} <= set(SUITES)
    defs = {d["name"]: d for d in list_suites()}
    fa5 = defs["fa5-online"]
    assert fa5["network"]["widths"] == [784, 170, 130, 100, 70, 10]
    assert fa5["data"] == {**fa5["data"], "dataset": "mnist5k", "ways": 5, "shots": 50, "queries": 10}
    assert fa5["protocol"]["episodes"] >= 200
    assert "runner" in fa5 and "fewshot_runner" in fa5["runner"]
    json.dumps(defs, allow_nan=False)
    assert get_suite("fa5-online").definition(tiny=True)["network"]["widths"][0] == 64


def test_tiny_fa5_scores_with_confidence_intervals(fa5_tiny):
    r = fa5_tiny
    json.dumps(_strip(r), allow_nan=False)
    assert r["suite"] == "fa5-online" and r["version"] and r["skipped"] is None
    assert "same budget" in r["protocol"] and "held-out" in r["protocol"]
    names = [e["learner"] for e in r["entries"]]
    assert names == FEWSHOT_BASELINES
    L = len(r["definition"]["network"]["widths"]) - 1
    for e in r["entries"]:
        assert e["kind"] == "baseline"
        lo, hi = e["ci95"]
        assert lo <= e["score"] <= hi and hi - lo > 0
        assert 0.0 <= e["score"] <= 1.0
        assert e["episodes"] == r["definition"]["protocol"]["episodes"]
        assert e["cost_per_sample_ms"] > 0
        assert e["locality"] in ("weight transport", "global error", "local")
        assert len(e["metrics"]["alignment_deg"]) == L - 1
        assert len(e["metrics"]["e1"]) == L and len(e["metrics"]["orth_error"]) == L
        assert len(e["metrics"]["activation_norms"]) == L
        t = e["tuning"]
        assert t["split"] == "train" and t["planned_points"] == 9  # the same budget, then the edge extensions
        assert t["grid_points"] == len(t["grid"]) == 9 + sum(len(x["values"]) for x in t["extensions"])
        assert t["best"] == e["hyperparameters"]
    by = {e["learner"]: e for e in r["entries"]}
    # backprop's teaching signal is δ itself; FA's starts unaligned
    assert max(by["BP"]["metrics"]["alignment_deg"]) < 5e-2    # float32 arccos near 1 resolves ≈ 0.02°
    assert min(by["FA"]["metrics"]["alignment_deg"]) > 30
    # PC-Exact is backprop: same tuning table and same scores
    assert by["PC-Exact"]["score"] == by["BP"]["score"]
    assert by["PC-Exact"]["tuning"]["grid"] == by["BP"]["tuning"]["grid"]
    assert by["FA"]["locality"] == "global error" and by["PC-Strict"]["locality"] == "weight transport"
    stages = {(ev["stage"], ev["learner"]) for ev in r["_events"]}
    assert ("tune", "BP") in stages and ("score", "PC-Strict") in stages


def test_same_seed_same_numbers_other_seed_other_numbers(fa5_tiny):
    again = run_suite("fa5-online", None, tiny=True, seed=0, threads=1,
                      overrides={"baselines": ["BP", "FA", "PC-FixedPred"]})
    by = {e["learner"]: e for e in fa5_tiny["entries"]}
    for e in again["entries"]:
        assert _strip(e) == _strip(by[e["learner"]])
    other = run_suite("fa5-online", None, tiny=True, seed=1, threads=1, overrides={"baselines": ["BP"]})
    assert _strip(other["entries"][0]) != _strip(by["BP"])


def test_a_rule_learner_is_scored_as_is_without_tuning(fa5_tiny):
    """A rule given as a ready Learner (here BP with the tuned lr, renamed) gets the same held-out episodes and
    initial weights as the baselines, so it reproduces BP's score exactly."""
    lr = {e["learner"]: e for e in fa5_tiny["entries"]}["BP"]["hyperparameters"]["lr"]
    rule = backprop(lr)
    rule.name = "my-rule"
    r = run_suite("fa5-online", rule, tiny=True, seed=0, threads=1, overrides={"baselines": ["BP"]})
    bp, mine = r["entries"]
    assert mine["kind"] == "rule" and mine["learner"] == "my-rule" and mine["tuning"] is None
    assert mine["score"] == bp["score"] and mine["ci95"] == bp["ci95"]
    assert mine["metrics"]["alignment_deg"] == bp["metrics"]["alignment_deg"]


def test_a_rule_expression_is_compiled_and_run():
    """−0.03·e xᵀ under bp feedback is backprop with lr 0.03 (needs the lead's rules.primitives / compiler)."""
    prim = pytest.importorskip("rules.primitives")
    pytest.importorskip("rules.compiler")
    pytest.importorskip("discovery.feedforward.inner")
    e, x = prim.PRIMITIVES["e"], prim.PRIMITIVES["x"]
    expr = -0.03 * e * x.T
    common = {"tiny": True, "seed": 0, "threads": 1, "feedback": "bp",
              "overrides": {"baselines": [], "protocol": {"episodes": 3, "chunk": 3}}}
    as_rule = run_suite("fa5-online", expr, **common)["entries"][0]
    as_bp = run_suite("fa5-online", backprop(0.03), **common)["entries"][0]
    assert as_rule["kind"] == "rule" and as_rule["hyperparameters"]["feedback"] == "bp"
    assert as_rule["score"] == pytest.approx(as_bp["score"], abs=1e-9)


def test_tiny_deep_online_grid():
    r = run_suite("deep-online", None, tiny=True, seed=0, threads=1)
    json.dumps(_strip(r), allow_nan=False)
    assert [e["learner"] for e in r["entries"]] == ["BP", "BP+Oja"]
    d = r["definition"]["network"]
    for e in r["entries"]:
        cfgs = e["metrics"]["configs"]
        assert [(c["depth"], c["init_scale"]) for c in cfgs] == [(L, s) for L in d["depths"] for s in d["init_scales"]]
        for c in cfgs:
            assert len(c["activation_norms"]) == c["depth"]
            assert c["ci95"][0] <= c["accuracy"] <= c["ci95"][1]
        assert set(e["hyperparameters"]) == {f"depth={L}" for L in d["depths"]}
        assert e["ci95"][0] <= e["score"] <= e["ci95"][1]


def test_emnist_suite_is_skipped_with_a_reason_when_not_configured(monkeypatch):
    monkeypatch.delenv("PLASTICITY_EMNIST_DIR", raising=False)
    r = run_suite("emnist-5way", None, tiny=True)
    assert r["entries"] == [] and "PLASTICITY_EMNIST_DIR" in r["skipped"]
    monkeypatch.setenv("PLASTICITY_EMNIST_DIR", "/nonexistent/emnist")
    r = run_suite("emnist-5way", None, tiny=True)
    assert r["entries"] == [] and r["skipped"]


def test_custom_suites_plug_in_with_their_own_runner():
    seen: dict[str, Any] = {}

    def runner(suite: Suite, ctx: RunContext) -> dict[str, Any]:
        seen["steps"] = suite.protocol["steps"]
        ctx.emit({"stage": "score", "learner": "toy", "done": 1, "total": 1})
        if suite.protocol.get("skip"):
            raise SuiteSkipped("nothing to do")
        mean, lo, hi = t_interval([0.5, 0.7, 0.6])
        return {"entries": [{"learner": "toy", "kind": "baseline", "score": mean, "ci95": [lo, hi],
                             "metrics": {"fixed_point_residual": float("nan")}, "locality": "local",
                             "cost_per_sample_ms": 0.1, "hyperparameters": {}}], "notes": "toy"}

    suite = Suite(name="toy-fixedpoint", version="0.1", kind="fixed-point", runner=runner,
                  protocol={"steps": 100}, tiny={"protocol": {"steps": 3}},
                  protocol_text="{protocol[steps]} relaxation steps")
    try:
        register_suite(suite)
        register_suite(suite)  # idempotent
        with pytest.raises(ValueError):
            register_suite(suite.model_copy(update={"version": "0.2"}))
        events: list[dict] = []
        r = run_suite("toy-fixedpoint", None, tiny=True, progress=events.append)
        assert seen["steps"] == 3 and r["protocol"] == "3 relaxation steps" and r["notes"] == "toy"
        assert r["entries"][0]["score"] == pytest.approx(0.6)
        assert r["entries"][0]["metrics"]["fixed_point_residual"] is None  # NaN → null (strict JSON)
        assert events == [{"suite": "toy-fixedpoint", "stage": "score", "learner": "toy", "done": 1, "total": 1}]
        register_suite(suite.model_copy(update={"version": "0.2", "protocol": {"steps": 5, "skip": True}}),
                       replace=True)
        r = run_suite("toy-fixedpoint", None)
        assert r["version"] == "0.2" and r["skipped"] == "nothing to do" and r["entries"] == []
        assert "runner" in get_suite("toy-fixedpoint").definition()
    finally:
        SUITES.pop("toy-fixedpoint", None)
    with pytest.raises(KeyError):
        run_suite("no-such-suite", None)


def test_t_interval():
    mean, _lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.302652729911275 / 3**0.5)  # t_{0.975,2}·s/√3
    assert t_interval([0.4]) == (0.4, 0.4, 0.4)
