"""The transfer suite (docs/transfer.md): a fixed θ on a grid of cells beside BP and FA with their own meta-tuned
θ0, paired per cell; cached baselines give the same numbers; a diverging cell is a visible failure; reachable by
POST /api/benchmarks (real engine in-process, real database) and shown as a heat table on the rule page."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from discovery.benchmarks.cache import BaselineSet, run_benchmark
from discovery.transfer.cells import Cell
from discovery.transfer.scoring import TransferProtocol, fixed_trainer, heldout_outcome, score_cell
from rules.rule import Rule
from service.runs.dispatcher import Dispatcher
from tests.conftest import FakeHandle, FakeState, FakeWorkers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RULE = "-0.02*e*x.T + 0.01*e*e_pre.T"
TINY = TransferProtocol(eval_episodes=4, shots=5, queries=3, tune_episodes=2)
CELL = Cell(dataset="digits", widths=(64, 16, 10))


def test_outcome_equals_the_trainers_heldout_values() -> None:
    trainer = fixed_trainer(CELL, ["F0", "F2"], {"F0": 0.02, "F2": -0.01}, TINY)
    values, diverged = heldout_outcome(trainer, 6)
    assert diverged == 0 and values.tolist() == trainer.heldout_values(6).tolist()


def test_a_diverging_cell_is_reported_as_a_failure() -> None:
    calm = score_cell(CELL, ["F0"], {"F0": 0.02}, TINY)
    wild = score_cell(CELL, ["F0", "F3"], {"F0": 0.02, "F3": 50.0}, TINY)   # decay 50·W: W explodes
    assert not calm.failed and calm.diverged == 0
    assert wild.failed and wild.diverged == TINY.eval_episodes and wild.score == 0.0


def test_a_cells_stream_is_its_own_draw_in_the_suite_as_in_the_search() -> None:
    """Stream 1 of a cell scores other held-out episodes than stream 0, on the seed the search uses for it."""
    theta = {"F0": 0.02}
    second = CELL.model_copy(update={"stream": 1})
    assert second.eval_seed(TINY.eval_seed) == TINY.eval_seed + 1_000_000 and CELL.eval_seed(7) == 7
    a, b = score_cell(CELL, ["F0"], theta, TINY), score_cell(second, ["F0"], theta, TINY)
    assert b.cell.endswith("episodes #1") and a.per_episode != b.per_episode
    again = fixed_trainer(CELL, ["F0"], theta, TINY, seed=TINY.eval_seed + 1_000_000)
    assert heldout_outcome(again, TINY.eval_episodes)[0].tolist() == b.per_episode


def test_cached_baselines_give_the_numbers_of_a_fresh_run() -> None:
    rule = Rule.parse(RULE)
    fresh = run_benchmark("transfer", rule, tiny=True, seed=0).to_json()
    baselines = BaselineSet.model_validate(fresh["baseline_set"])
    assert [e["learner"] for e in baselines.entries] == ["BP", "FA"]
    cached = run_benchmark("transfer", rule, tiny=True, seed=0, baselines=baselines).to_json()
    assert cached["baselines"] == "cached"
    mine = next(e for e in cached["entries"] if e["kind"] == "rule")
    theirs = next(e for e in fresh["entries"] if e["kind"] == "rule")
    assert mine["per_episode"] == theirs["per_episode"]
    cells = mine["metrics"]["cells"]
    assert [c["cell"] for c in cells] == ["digits, 64-16-10", "digits, 64-16-12-10"]
    for c in cells:
        for b in ("BP", "FA"):
            v = c["vs"][b]
            assert v["n"] == 4 and v["ci95"][0] <= v["delta"] <= v["ci95"][1]
    bp = next(e for e in fresh["entries"] if e["learner"] == "BP")
    assert bp["hyperparameters"]["theta0"]["digits, 64-16-10"] != 1e-3   # meta-tuning moved θ0


def _engine_script(handle: FakeHandle) -> list[Any]:
    """The real engine, in-process: the suite runs the rule of the request against the given baselines."""
    args = handle.args
    cached = BaselineSet.model_validate(args["baselines"]) if args["baselines"] else None
    rule = Rule.parse(args["expression"]) if args["expression"] else None
    report = run_benchmark(args["suite"], rule, tiny=args["tiny"], seed=args["seed"], baselines=cached)
    return [FakeState("succeeded", None, report.to_json())]


def test_post_benchmarks_transfer_and_the_rule_page(app: Any, settings: Any, client: TestClient,
                                                    auth: dict[str, str]) -> None:
    workers = FakeWorkers(benchmark_script=_engine_script)
    dispatcher = Dispatcher(settings, app.state.sessions, workers)
    app.state.dispatcher = dispatcher
    ids = []
    for expression in (RULE, "-0.03*e*x.T"):
        r = client.post("/api/benchmarks", json={"suite": "transfer", "tiny": True, "expression": expression},
                        headers=auth)
        assert r.status_code == 201, r.text
        ids.append(int(r.json()["id"]))
        for _ in range(4):
            dispatcher.tick()
    first, second = (client.get(f"/api/benchmarks/{i}").json() for i in ids)
    assert first["status"] == second["status"] == "succeeded", (first, second)
    assert first["baselines"] == "tuned" and second["baselines"] == "cached"
    rule_id = next(s for s in second["scores"] if s["origin"] != "baseline")["rule_id"]
    page = client.get(f"/rules/{rule_id}").text
    assert "Transfer" in page and "Δ vs BP" in page and "digits, 64-16-12-10" in page and "rgba(" in page


def test_the_cli_runs_the_transfer_suite(tmp_path: Any) -> None:
    import json

    from typer.testing import CliRunner

    from service.cli.main import app as cli

    out = tmp_path / "transfer.json"
    run = CliRunner().invoke(cli, ["benchmark", "--suite", "transfer", "--tiny", "--rule-only", "--expression", RULE,
                                   "--out", str(out)], env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    report = json.loads(out.read_text())
    [entry] = report["entries"]
    assert entry["kind"] == "rule" and len(entry["metrics"]["cells"]) == 2
    bad = CliRunner().invoke(cli, ["benchmark", "--suite", "transfer", "--tiny", "--rule-only", "--expression",
                                   "-0.01*e*x.T*W.T*W", "--out", str(out)], env={"COLUMNS": "200"})
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_a_layered_rule_runs_its_layered_theta_in_the_suite() -> None:
    """A profile with zero slopes scores as its shared rule; a slope changes what runs; per-layer θ of another
    depth is refused (docs/transfer.md, "Per-layer coefficients")."""
    from discovery.benchmarks.transfer import rule_terms
    from discovery.transfer.layered import LayeredRule

    shared = {"F0": 0.02, "F2": -0.01}
    flat = LayeredRule(["F0", "F2"], {**shared, "F0~slope": 0.0, "F2~slope": 0.0})
    sloped = LayeredRule(["F0", "F2"], {**shared, "F0~slope": 0.015, "F2~slope": 0.0})
    assert flat.coefficients == sloped.coefficients == Rule(shared).coefficients
    assert rule_terms(sloped)[1]["F0~slope"] == 0.015 and rule_terms(Rule(shared))[1] == shared
    base = score_cell(CELL, *rule_terms(Rule(shared)), TINY).per_episode
    assert score_cell(CELL, *rule_terms(flat), TINY).per_episode == base
    assert score_cell(CELL, *rule_terms(sloped), TINY).per_episode != base
    per_layer = LayeredRule(["F0"], {"F0@1": 0.02, "F0@2": 0.03})          # fit on a 2-layer net
    assert score_cell(CELL, *rule_terms(per_layer), TINY).per_episode != score_cell(CELL, ["F0"], {"F0": 0.025},
                                                                                 TINY).per_episode
    with pytest.raises(ValueError, match="another depth"):
        score_cell(Cell(dataset="digits", widths=(64, 16, 12, 10)), *rule_terms(per_layer), TINY)


def test_a_stored_layered_rule_is_benchmarked_with_its_layered_theta(app: Any, settings: Any, client: TestClient,
                                                                     auth: dict[str, str]) -> None:
    """The expression of a stored profile rule is its shared projection; the dispatcher hands the provenance's
    layered θ to the workers, and the task's rule runs it (docs/transfer.md, "Layered rules")."""
    from discovery.transfer.layered import LayeredRule
    from service.db.repositories.rules import upsert_rule
    from service.db.session import session_scope
    from service.rulebook import benchmark_layered, parse_rule
    from workers.contract import BenchmarkTask

    shared = Rule.parse(RULE).coefficients
    raw = {**shared, **{f"{t}~slope": 0.005 for t in shared}}
    with session_scope(app.state.sessions) as s:
        layered, _ = upsert_rule(s, parse_rule(RULE), name="profile", origin="discovered",
                                 provenance={"coefficients_raw": raw})
        plain, _ = upsert_rule(s, parse_rule("-0.03*e*x.T"), name="shared", origin="discovered",
                               provenance={"coefficients_raw": {"F0": -0.03}})
        assert benchmark_layered(plain.provenance) is None and benchmark_layered(None) is None
        layered_id = layered.id
    workers = FakeWorkers(benchmark_script=lambda h: [FakeState("running", None, None)])
    dispatcher = Dispatcher(settings, app.state.sessions, workers)
    app.state.dispatcher = dispatcher
    r = client.post("/api/benchmarks", json={"suite": "transfer", "tiny": True, "rule_id": layered_id}, headers=auth)
    assert r.status_code == 201, r.text
    dispatcher.tick()
    (handle,) = workers.handles
    assert handle.args["layered"] == raw
    task = BenchmarkTask(suite="transfer", expression=handle.args["expression"], tiny=True, layered=raw)
    rule = task.rule()
    assert isinstance(rule, LayeredRule) and rule.layered == raw and rule.coefficients == shared


def test_layered_rules_with_one_level_and_different_slopes_are_two_stored_rules(app: Any) -> None:
    """The hash of a layered rule covers its layered θ (discovery.transfer.layered.layered_hash): two depth
    profiles with the same level and different slopes are stored as two rules, each with its own θ; a shared θ
    keeps the hash of the rule it spells."""
    from discovery.results import RuleData
    from discovery.transfer.layered import LayeredRule
    from discovery.transfer.search import rule_dict
    from service.db.repositories.rules import upsert_rule
    from service.db.session import session_scope
    from service.rulebook import benchmark_layered, record_from_result

    level = {"F0": 0.02, "F2": -0.01}
    a, b = ({**level, "F0~slope": 0.0, "F2~slope": s} for s in (0.004, -0.004))
    assert rule_dict(["F0", "F2"], level)["hash"] == Rule(level).hash()
    assert rule_dict(["F0", "F2"], a)["hash"] == LayeredRule(["F0", "F2"], a).hash() != Rule(level).hash()
    with session_scope(app.state.sessions) as s:
        rows = [upsert_rule(s, record_from_result(RuleData.model_validate(rule_dict(["F0", "F2"], th))),
                            name="profile", origin="discovered", provenance={"coefficients_raw": th})
                for th in (a, b, a)]
        (ra, created_a), (rb, created_b), (again, created_again) = rows
        assert created_a and created_b and not created_again and again.id == ra.id != rb.id
        assert ra.expression == rb.expression
        assert benchmark_layered(ra.provenance) == a and benchmark_layered(rb.provenance) == b
