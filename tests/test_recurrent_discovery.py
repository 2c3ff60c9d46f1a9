"""Tests of recurrent rule discovery (docs/science.md S2): the sympy terms equal the torch directions, the implicit
meta-gradient equals central finite differences, RecurrentRule identity, a short discovery run, divergence
bookkeeping and the suite scorer (identical to discovery.recurrent.fixedpoint.run_fixedpoint_mnist for dW3 alone)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

from discovery.recurrent.fixedpoint import dW1, random_matrix, run_fixedpoint_mnist, solve_fixed_point
from discovery.recurrent.network import (
    FixedPointNet,
    SolverConfig,
    load_mnist5k_split,
    meta_loss,
    run_episode,
    term_directions,
)
from discovery.recurrent.scoring import SCORE_PROTOCOL, score_recurrent_rule
from discovery.recurrent.suites import fixedpoint_mnist_suite
from discovery.recurrent.trainer import discover_recurrent, recurrent_setting
from discovery.results import ProgressEvent
from discovery.spec import DiscoverySpec
from rules.recurrent import RECURRENT_TERMS, N, RecurrentRule, is_recurrent_rule_dict
from rules.recurrent_compiler import evaluate
from rules.rule import Rule

F64 = torch.float64
ALL = list(RECURRENT_TERMS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k_split()


def _toy(N_: int = 7, D: int = 12, B: int = 5, T: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    net = FixedPointNet.random(N_, gen, F64, torch.device("cpu"), D=D)
    net.Wx *= 3.0                                           # rates well inside tanh's nonlinear range
    W0 = random_matrix(N_, 0.5, gen)
    batches = [(torch.rand(B, D, generator=gen, dtype=F64), torch.randint(0, 10, (B,), generator=gen))
               for _ in range(T)]
    query = (torch.rand(6, D, generator=gen, dtype=F64), torch.randint(0, 10, (6,), generator=gen))
    return net, W0, batches, query


def _spec(**over) -> DiscoverySpec:
    base = {"network": {"widths": [784, 12, 10]},
            "task": {"kind": "fixedpoint-mnist", "shots": 3, "ways": 2, "queries": 4},
            "rule": {"terms": ["rec_dW3", "rec_dW4", "rec_oja", "rec_decay"]},
            "meta": {"episodes": 3, "lr": 0.1, "eval_episodes": 2, "seed": 3}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return DiscoverySpec.model_validate(base)


# ------------------------------------------------------------------------------------------------ the terms

def test_sympy_terms_equal_torch_directions() -> None:
    n = 4
    gen = torch.Generator().manual_seed(5)
    W = random_matrix(n, 0.6, gen)
    r = torch.tanh(torch.randn(1, n, generator=gen, dtype=F64))
    delta = torch.randn(1, n, generator=gen, dtype=F64)
    g = 1 - r * r
    cfg = SolverConfig(tol=1e-12, adjoint_tol=1e-12, adjoint_method="solve")
    dirs = dict(zip(ALL, term_directions(W, r, delta, ALL, cfg)))
    u = torch.linalg.solve(torch.eye(n, dtype=F64) - W.T * g, delta[0])       # u = δ + Wᵀ G u
    vals = {"W": W, "r": r.T, "delta": delta.T, "G": torch.diag(g[0]), "u": u[:, None]}
    for tid, t in RECURRENT_TERMS.items():
        torch.testing.assert_close(evaluate(t.expr, vals), dirs[tid], rtol=1e-9, atol=1e-12, msg=tid)
    torch.testing.assert_close(evaluate(RECURRENT_TERMS["rec_dW1"].closed_form, vals), dirs["rec_dW1"])
    rule = RecurrentRule({"rec_dW3": 0.3, "rec_oja": -0.2, "rec_decay": 0.1})
    expected = 0.3 * dirs["rec_dW3"] - 0.2 * dirs["rec_oja"] + 0.1 * dirs["rec_decay"]
    torch.testing.assert_close(evaluate(rule.expression, vals), expected)
    # the sympy expressions themselves evaluate exactly (explicit matrices, small n)
    rep = {sp.MatrixSymbol(k, *v.shape): sp.ImmutableMatrix(v.numpy()) for k, v in vals.items() if k != "G"}
    rep[sp.MatrixSymbol("G", n, n)] = sp.ImmutableMatrix(np.diag(g[0].numpy()))
    oja = np.array(RECURRENT_TERMS["rec_oja"].expr.subs(N, n).xreplace(rep).as_explicit(), dtype=float)
    np.testing.assert_allclose(oja, dirs["rec_oja"].numpy(), rtol=1e-9)
    # rec_dW1 is minus the Euclidean gradient of discovery.recurrent.fixedpoint
    torch.testing.assert_close(dirs["rec_dW1"], -dW1(W, r, delta, g))


@pytest.mark.parametrize("method", ["solve", "anderson"])
def test_meta_gradient_matches_finite_differences(method: str) -> None:
    net, W0, batches, query = _toy()
    theta = torch.tensor([0.3, 0.5, 0.4, 0.2, 0.1], dtype=F64)
    cfg = SolverConfig(tol=1e-13, adjoint_tol=1e-13, max_iter=2000, adjoint_method=method)
    out = run_episode(net, W0, batches, query, theta, ALL, cfg)
    h = 1e-5
    fd = []
    for k in range(len(ALL)):
        e = torch.zeros_like(theta)
        e[k] = h
        lp = run_episode(net, W0, batches, query, theta + e, ALL, cfg, grad=False).loss
        lm = run_episode(net, W0, batches, query, theta - e, ALL, cfg, grad=False).loss
        fd.append((lp - lm) / (2 * h))
    fd_t = torch.tensor(fd, dtype=F64)
    assert out.grad is not None and fd_t.abs().min() > 1e-4                      # every term matters here
    torch.testing.assert_close(out.grad, fd_t, rtol=1e-5, atol=1e-9)
    # the standalone differentiable meta-loss agrees (λ = 0)
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(meta_loss(th, net, W0, batches, query, ALL, cfg), th)
    torch.testing.assert_close(g, out.grad, rtol=1e-8, atol=1e-12)


def test_finite_difference_check_detects_a_one_step_backward(monkeypatch) -> None:
    """Sensitivity of the check: differentiating only one step r = tanh(W r*.detach() + X) (no implicit solve)
    gives a visibly different meta-gradient."""
    import discovery.recurrent.network as rd

    net, W0, batches, query = _toy(seed=1)
    theta = torch.tensor([0.5, 0.5], dtype=F64)
    ids = ["rec_dW3", "rec_oja"]
    cfg = SolverConfig(tol=1e-13, adjoint_tol=1e-13, max_iter=2000, adjoint_method="solve")
    exact = run_episode(net, W0, batches, query, theta, ids, cfg).grad

    def one_step(W: torch.Tensor, X: torch.Tensor, cfg: SolverConfig) -> torch.Tensor:
        r = solve_fixed_point(W.detach(), X, tol=cfg.tol, max_iter=cfg.max_iter).r
        return torch.tanh(r @ W.transpose(-1, -2) + X)

    monkeypatch.setattr(rd, "fixed_point", one_step)
    naive = run_episode(net, W0, batches, query, theta, ids, cfg).grad
    assert exact is not None and naive is not None
    assert (exact - naive).abs().max() > 1e-3 * exact.abs().max()


# ------------------------------------------------------------------------------------------------ the rule

def test_recurrent_rule_identity_and_dict() -> None:
    a = RecurrentRule({"rec_dW3": 0.25, "rec_decay": 0.01, "rec_oja": -0.003})
    b = RecurrentRule({"oja": -0.003, "decay": 0.01, "dW3": 0.25 + 1e-12})
    assert a.hash() == b.hash() and a == b and len(a.hash()) == 64
    assert a.hash() != RecurrentRule({"rec_dW3": 0.25}).hash()
    assert a.canonical().startswith("recurrent/v1:") and a.to_dict()["canonical"] == a.canonical()
    d = a.to_dict()
    assert set(Rule({"F0": 1.0}).to_dict()) <= set(d)
    assert d["terms"] == ["rec_dW3", "rec_oja", "rec_decay"]
    assert r"\delta" in d["latex"] and d["latex"].startswith("-0.25")
    assert RecurrentRule.from_dict(d) == a and is_recurrent_rule_dict(d)
    assert a.expression.shape == (N, N)
    assert RecurrentRule({}).to_dict()["expression"] == "0*W"
    with pytest.raises(ValueError, match="unknown recurrent term"):
        RecurrentRule({"F0": 1.0})
    with pytest.raises(ValueError, match="not finite"):
        RecurrentRule({"rec_dW3": math.nan})


def test_spec_mapping_and_validation() -> None:
    s = recurrent_setting(_spec())
    assert (s.N, s.inner_steps, s.batch) == (12, 3, 8) and s.term_ids[0] == "rec_dW3"
    assert s.theta0["rec_dW3"] == 0.25 and s.theta0["rec_decay"] == 0.0
    default = DiscoverySpec.model_validate({"network": {"widths": [784, 12, 10]},
                                            "task": {"kind": "fixedpoint-mnist"}})
    assert recurrent_setting(default).term_ids == ["rec_dW3", "rec_dW4", "rec_oja", "rec_decay"]
    with pytest.raises(ValueError, match="unknown recurrent term 'F0'"):
        recurrent_setting(_spec(rule={"terms": ["F0", "F2"]}))
    with pytest.raises(ValueError, match="widths"):
        recurrent_setting(_spec(network={"widths": [784, 12, 7, 10]}))
    with pytest.raises(ValueError, match="task.kind"):
        recurrent_setting(_spec(task={"kind": "fewshot"}))


# ------------------------------------------------------------------------------------------------ discovery

def test_short_discovery_moves_theta(mnist, tmp_path) -> None:
    events: list[ProgressEvent] = []
    spec = _spec()
    res = discover_recurrent(spec, progress=events.append, checkpoint_dir=tmp_path, data=mnist)
    assert len(events) == 3 and len(res.history) == 3 and res.diverged_episodes == 0
    assert all(e.spectral_abscissa is not None and 0 < e.spectral_abscissa < 1 for e in events)
    assert res.history[-1].spectral_abscissa is not None
    theta0 = recurrent_setting(spec).theta0
    assert any(abs(res.theta[k] - theta0[k]) > 1e-4 for k in theta0)
    assert res.rule.kind == "recurrent" and len(res.rule.hash) == 64 and res.rule.latex
    assert res.heldout_episodes == 2 and 0.0 <= res.heldout_accuracy <= 1.0
    # resume: same spec, finished checkpoint → no new steps, same θ
    again = discover_recurrent(spec, checkpoint_dir=tmp_path, data=mnist)
    assert again.theta == res.theta and len(again.history) == 3


def test_divergence_is_recorded_not_raised(mnist) -> None:
    spec = _spec(rule={"theta_init": {"rec_decay": -3.0}}, meta={"episodes": 2, "eval_episodes": 1})
    res = discover_recurrent(spec, data=mnist)                              # W ← 4 W per step: no fixed point
    assert res.diverged_episodes == 2 and res.skipped_steps == 2
    assert all(h.skipped and h.meta_loss is None for h in res.history)
    assert res.theta["rec_decay"] == -3.0
    assert res.rule.model_dump()["setting"]["eval_failures"] == 1 and res.heldout_accuracy == 0.0


def test_should_stop_skips_evaluation(mnist) -> None:
    res = discover_recurrent(_spec(), should_stop=lambda: True, data=mnist)
    assert res.stopped and res.history == [] and res.heldout_accuracy is None


# ------------------------------------------------------------------------------------------------ scoring

def test_score_matches_published_learner(mnist) -> None:
    xtr, ytr, xte, yte = mnist
    p = SCORE_PROTOCOL["tiny"]
    small = (xtr[:p["n_train"]], ytr[:p["n_train"]], xte[:p["n_test"]], yte[:p["n_test"]])
    entry = score_recurrent_rule({"dW3": 0.25}, tiny=True, data=small)
    ref = [run_fixedpoint_mnist("dW3", 0.25, N=p["N"], epochs=p["epochs"], batch=p["batch"], seed=i,
                                data=small)["test_acc"] for i in range(p["episodes"])]
    assert entry["metrics"]["per_episode_accuracy"] == ref
    assert entry["score"] == pytest.approx(sum(ref) / len(ref))
    assert entry["locality"] == "weight transport" and entry["metrics"]["spectral_abscissa"] < 1
    assert entry["ci95"][0] <= entry["score"] <= entry["ci95"][1]


def test_suite_runner_scores_baselines_and_rule(mnist) -> None:
    from discovery.benchmarks.suite import RunContext

    suite = fixedpoint_mnist_suite().resolved(tiny=True).with_overrides(
        {"protocol": {"episodes": 1}, "data": {"n_train": 128, "n_test": 64}, "baselines": ["dW3"]})
    events: list[dict] = []
    rule = RecurrentRule({"rec_dW3": 0.5, "rec_decay": 1e-3}, name="found")
    ctx = RunContext(rule=rule.canonical(), seed=0, tiny=True, device="cpu", feedback=None, emit=events.append)
    out = suite.runner(suite, ctx)
    names = [(e["learner"], e["kind"]) for e in out["entries"]]
    assert names == [("dW3", "baseline"), ("recurrent rule", "rule")]
    assert out["entries"][1]["rule"]["hash"] == rule.hash() and len(events) == 2
    assert "tanh" in suite.describe()


def test_a_plain_recurrent_goal_runs_an_open_search_with_a_front(tmp_path) -> None:
    """Issue #23: no term named → the one open search (discovery.search.generic) over the generated recurrent
    library; a front of ≥ 2 supports, the simplest within the CI of the best selected, the result's rule that
    point's; the first term is the best-screened one at θ = 0; an interrupted search resumes to the same front."""
    from discovery.goal import parse_goal
    from discovery.router import discover
    from rules.recurrent import RECURRENT_LIBRARY, RECURRENT_TERMS

    spec = parse_goal("find a local learning rule for a recurrent network that converges to fixed points, tiny").spec
    assert spec.rule.terms == list(RECURRENT_LIBRARY) and set(RECURRENT_TERMS) < set(spec.rule.terms)
    result = discover(spec)
    assert len(result.front) >= 2 and [p.n_terms for p in result.front] == list(range(1, len(result.front) + 1))
    assert all(t in RECURRENT_LIBRARY for p in result.front for t in p.terms)
    [chosen] = [p for p in result.front if p.selected]
    assert result.theta == chosen.theta and result.search["method"] == "forward"
    first = result.search["screening"][0]
    assert first["label"] == "screen from 0" and len(first["scores"]) == len(RECURRENT_LIBRARY)
    assert result.front[0].terms == [max(first["scores"], key=first["scores"].get)]
    assert all(p.rule.kind == "recurrent" and p.complexity > 0 for p in result.front)

    calls = {"n": 0}

    def stop_after_one_fit() -> bool:        # polled before each meta-step: stop at the second fit stage
        calls["n"] += 1
        return calls["n"] > 1

    cut = discover(spec, checkpoint_dir=tmp_path, should_stop=stop_after_one_fit)
    assert cut.stopped and not cut.front
    resumed = discover(spec, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_episode is not None
    assert [(p.terms, p.theta, p.heldout_accuracy) for p in resumed.front] == \
        [(p.terms, p.theta, p.heldout_accuracy) for p in result.front]


def test_the_recurrent_library_is_generated_with_the_published_terms_as_members() -> None:
    """rules.recurrent_library: sympy candidates, canonical dedupe (the grammar's copies of dW1, dW3, dW4 are the
    published terms), stable rec_T ids; every term compiles and equals its sympy form on explicit matrices."""
    from discovery.recurrent.network import SolverConfig, term_directions
    from rules.recurrent import RECURRENT_LIBRARY, RECURRENT_PRIMITIVES, RECURRENT_TERMS, parse_recurrent
    from rules.recurrent_library import canonical_form, generated_candidates, generated_id

    ids = list(RECURRENT_LIBRARY)
    assert ids[:5] == list(RECURRENT_TERMS) and len(ids) == len(set(ids)) == 24
    forms = {canonical_form(t.expr) for t in RECURRENT_LIBRARY.values()}
    assert len(forms) == len(ids)                                       # deduplicated
    cands = generated_candidates(RECURRENT_PRIMITIVES)
    published = {canonical_form(t.expr) for t in RECURRENT_TERMS.values()}
    assert sum(canonical_form(c.body) in published for c in cands) == 3   # −G u rᵀ, dW3's and dW4's pairs
    assert all(generated_id(canonical_form(t.expr)) == k for k, t in RECURRENT_LIBRARY.items() if k.startswith("rec_T"))
    dW4 = RECURRENT_TERMS["rec_dW4"]
    assert canonical_form(dW4.body) == canonical_form(dW4.expr)           # identity up to scale (and sign)
    gen = torch.Generator().manual_seed(3)
    n = 5
    W = random_matrix(n, 0.6, gen)
    r = torch.tanh(torch.randn(2, n, generator=gen, dtype=F64))
    delta = torch.randn(2, n, generator=gen, dtype=F64)
    g = 1 - r * r
    cfg = SolverConfig(tol=1e-12, adjoint_tol=1e-12, adjoint_method="solve")
    dirs = dict(zip(ids, term_directions(W, r, delta, ids, cfg)))
    for b in range(2):
        u = torch.linalg.solve(torch.eye(n, dtype=F64) - W.T * g[b], delta[b])
        vals = {"W": W, "r": r[b:b + 1].T, "delta": delta[b:b + 1].T, "G": torch.diag(g[b]), "u": u[:, None]}
        for tid, t in RECURRENT_LIBRARY.items():
            single = term_directions(W, r[b:b + 1], delta[b:b + 1], [tid], cfg)[0]
            torch.testing.assert_close(evaluate(t.expr, vals), single, rtol=1e-9, atol=1e-12, msg=tid)
    assert all(torch.isfinite(d).all() for d in dirs.values())
    rule = parse_recurrent(f"0.1*dW4 + 0.02*{ids[7]}")
    assert rule.terms == ["rec_dW4", ids[7]] and parse_recurrent(rule.canonical()).hash() == rule.hash()


def test_fixedpoint_mnist_tunes_eta_the_same_way_for_every_learner(mnist) -> None:
    """Issue #23: every learner (the published baselines and a given rule with a generated library term) gets its
    step c·θ chosen on the same grid on a validation split; the rule's entry carries the unscaled rule."""
    from discovery.benchmarks.suite import RunContext
    from rules.recurrent import RECURRENT_LIBRARY

    gen_term = list(RECURRENT_LIBRARY)[9]
    suite = fixedpoint_mnist_suite().resolved(tiny=True).with_overrides(
        {"protocol": {"episodes": 1, "eta_scales": [0.5, 1.0, 4.0]}, "data": {"n_train": 128, "n_test": 64},
         "baselines": ["dW4"]})
    rule = RecurrentRule({"rec_dW4": 0.1, gen_term: 0.05}, name="with a generated term")
    ctx = RunContext(rule=rule.to_dict(), seed=0, tiny=True, device="cpu", feedback=None, emit=lambda e: None)
    out = suite.runner(suite, ctx)
    assert [(e["learner"], e["kind"]) for e in out["entries"]] == [("dW4", "baseline"), ("with a generated term", "rule")]
    for e in out["entries"]:
        assert set(e["tuning"]["eta_scale"]) == {"0.5", "1.0", "4.0"}
        c = e["hyperparameters"]["eta_scale"]
        assert e["tuning"]["eta_scale"][repr(c)] == max(e["tuning"]["eta_scale"].values())
    entry = out["entries"][1]
    assert entry["rule"]["hash"] == rule.hash() and gen_term in entry["rule"]["coefficients"]
    c = entry["hyperparameters"]["eta_scale"]
    assert entry["hyperparameters"]["coefficients"][gen_term] == pytest.approx(0.05 * c)
    assert any("η tuned the same way" in n for n in out["notes"])
