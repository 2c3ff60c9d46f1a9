"""Open discovery: the generated library (dedupe, stable ids), every library term on the fused kernel (= torch),
exact zeros from the proximal step, screening gradient = finite difference of the meta-loss, a tiny search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discovery.feedforward.inner import run_online_forward
from discovery.feedforward.kernels import ckernel, fused
from discovery.feedforward.network import init_feedback, init_weights
from discovery.feedforward.trainer import MetaTrainer
from discovery.results import RuleData
from discovery.router import discover
from discovery.search.open_search import KKT_Z, LAMBDA_RATIO, Search, Stage, select
from discovery.search.stages import kkt_violation, lambda_max
from discovery.spec import DiscoverySpec
from rules.compiler import compile_terms
from rules.library import canonical_text, generate, term_id
from rules.primitives import e, x
from rules.terms import POOLS, TERMS, expand, term


def test_library_is_generated_and_deduplicated() -> None:
    assert len(POOLS["library"]) == 16 and len(POOLS["library_gated"]) == 43
    assert {"F0", "F1", "F2", "F3", "F4", "hebb"} <= set(POOLS["library"])      # named terms are reused
    assert {"F5", "F6", "F7", "F8"} <= set(POOLS["library_gated"])
    canon = [TERMS[t].canonical for t in POOLS["library_gated"]]
    assert len(set(canon)) == len(canon)
    assert canonical_text(expand(-2.0 * e * x.T)) == canonical_text(expand(e * x.T))   # up to scale: one term
    oja_part = term("y*(y.T*W)")
    assert oja_part.id == term_id(oja_part.canonical) and oja_part.id.startswith("T")
    assert [t.id for t in generate([])] == [t.id for t in generate([])]               # stable


@pytest.mark.skipif(not fused.available() or ckernel.load(np.float64) is None, reason="no C kernel")
@pytest.mark.parametrize("feedback", ["fa", "dfa", "bp"])
def test_every_library_term_runs_fused_equal_to_torch(feedback: str) -> None:
    g = torch.Generator().manual_seed(1)
    widths = (12, 9, 7, 5)
    Ws = init_weights(widths, 2, g, 1.0, "cpu", torch.float64)
    Bs = init_feedback(widths, feedback, 2, g, "cpu", torch.float64)
    xs = torch.rand(2, 7, widths[0], generator=g, dtype=torch.float64)
    ys = torch.randint(0, widths[-1], (2, 7), generator=g)
    for tid in POOLS["library_gated"]:
        ids = ["F0"] if tid == "F0" else ["F0", tid]
        rule = compile_terms([term(t).expr for t in ids], ids)
        assert fused.plan(rule) is not None, tid
        theta = torch.tensor([0.05, 0.03][: len(ids)], dtype=torch.float64)
        W1, D1 = run_online_forward(rule, theta, Ws, Bs, xs, ys, feedback, 10.0)
        W2, D2 = fused.run_online_forward_fused(rule, theta, Ws, Bs, xs, ys, feedback, 10.0)
        for a, b in zip(W1 + D1, W2 + D2, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=f"{tid} ({term(tid).name})")


def _spec(**meta) -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [64, 12, 10], "feedback": "fa"},
        "task": {"dataset": "digits", "shots": 4, "queries": 3},
        "rule": {"pool": "bio10"},
        "meta": {"episodes": 3, "eval_episodes": 0, "dtype": "float64", "term_scale": "norm", **meta}})


def test_proximal_step_gives_exact_zeros() -> None:
    trainer = MetaTrainer(_spec(l1=10.0, l1_mode="proximal", lr=1e-3))
    for _ in range(3):
        trainer.step()
    theta = trainer.theta.detach()
    assert int((theta == 0).sum()) >= 8                     # a large λ zeros (almost) all coefficients exactly
    sub = MetaTrainer(_spec(l1=10.0, l1_mode="subgradient", lr=1e-3))
    for _ in range(3):
        sub.step()
    assert int((sub.theta.detach() == 0).sum()) <= 1        # the subgradient never lands on 0


def test_screening_gradient_is_the_finite_difference_of_the_meta_loss() -> None:
    """∂L/∂θ_r of a term at θ_r = 0 (forward-mode tangent) equals (L(+h) − L(−h)) / 2h."""
    trainer = MetaTrainer(_spec(kernel="torch"))
    ep = trainer.train_sampler.sample(2, device=trainer.device, dtype=trainer.dtype)
    Ws, Bs = trainer._weights(2)
    base = trainer.theta.detach().clone()
    _, grad, _, _ = trainer.meta_gradient(ep, [w.clone() for w in Ws], Bs)
    h = 1e-6
    for r in (2, 9):                                         # F2 and F9 are screened at θ = 0
        assert base[r] == 0
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                trainer.phi.copy_((base + sign * h * torch.eye(len(base), dtype=base.dtype)[r]) / trainer.scale)
            loss, _, _, _ = trainer.meta_gradient(ep, [w.clone() for w in Ws], Bs)
            losses.append(loss)
        fd = (losses[0] - losses[1]) / (2 * h)
        torch.testing.assert_close(grad[r], fd, rtol=1e-5, atol=1e-8)


def test_screening_scores_are_the_score_test_t_statistics() -> None:
    """screen() ranks candidates by |ḡ_r| / (s_r/√n) over its n episodes' per-episode meta-gradients."""
    data = _spec().model_dump()
    data["search"] = {"method": "forward", "screen_episodes": 4}
    spec = DiscoverySpec.model_validate(data)
    theta = {"F0": 0.01}
    stage = Search(spec).screen(theta, "screen")
    again = Search(spec)                                     # the same streams: the same episodes and networks
    again.norms()
    trainer = again.screener()
    with torch.no_grad():
        trainer.phi.copy_(torch.tensor([theta.get(t, 0.0) for t in again.pool], dtype=trainer.dtype) / trainer.scale)
    ep = trainer.train_sampler.sample(4, device=trainer.device, dtype=trainer.dtype)
    Ws, Bs = trainer._weights(4)
    _, grad, _, _ = trainer.meta_gradient(ep, Ws, Bs)
    t = grad.mean(1).abs() / (grad.std(1) / 2.0)
    assert stage.scores == pytest.approx(dict(zip(again.pool, t.tolist(), strict=True)), rel=1e-9)
    assert set(stage.effect) == set(again.pool)


def test_tiny_forward_search_returns_a_selected_front(tmp_path) -> None:
    spec = _spec(episodes=12, eval_episodes=5).model_dump()
    spec["rule"] = {"pool": "library"}
    spec["search"] = {"method": "forward", "max_terms": 3, "screen_episodes": 2}
    res = discover(DiscoverySpec.model_validate(spec), checkpoint_dir=tmp_path)
    assert [p.n_terms for p in res.front] == [1, 2, 3]
    assert sum(p.selected for p in res.front) == 1
    assert res.rule.coefficients and res.search["method"] == "forward"
    again = discover(DiscoverySpec.model_validate(spec), checkpoint_dir=tmp_path)        # resumes: every stage replayed from search.json
    assert again.resumed_from_episode == res.search["episodes"]
    assert [p.terms for p in again.front] == [p.terms for p in res.front]


def test_tiny_path_runs_from_the_sparse_end_with_exact_zeros() -> None:
    spec = _spec(episodes=20, eval_episodes=4).model_dump()
    spec["rule"] = {"pool": "library"}
    spec["search"] = {"method": "path", "n_lambda": 2, "screen_episodes": 2}
    res = discover(DiscoverySpec.model_validate(spec))
    labels = [s["label"] for s in res.search["stages"]]
    assert labels[:3] == ["fit 1 terms", "screen at λ_max", labels[2]] and labels[2].startswith("path λ=")
    assert labels[3].startswith("screen at λ=")                                # the strong rule re-screens
    lam = [float(lb.split("=")[1]) for lb in labels if lb.startswith("path")]
    assert lam[1] == pytest.approx(lam[0] * LAMBDA_RATIO, rel=1e-2)            # λ_k = λ_max 2^(−k/2)
    assert res.front and all("F0" in p.terms for p in res.front)               # F0 is never penalized
    assert all(len(p.terms) < 16 for p in res.front)                           # the prox set exact zeros
    assert sum(p.selected for p in res.front) == 1


def test_a_zero_term_enters_the_path_only_on_a_significant_kkt_violation() -> None:
    """|ḡ| − 2·se > λ: a large but noisy gradient stays out, a smaller clean one enters."""
    screen = Stage(kind="screen", label="s", terms=[], theta={}, episodes=16,
                   gradient={"noisy": 10.0, "clean": -6.0, "nan": math.nan, "weak": 1.0},
                   gradient_se={"noisy": 4.0, "clean": 0.5, "nan": 1.0, "weak": 2.0})
    assert not kkt_violation(screen, "noisy") > 5.0      # 10 − 8 = 2 < 5
    assert kkt_violation(screen, "clean") > 4.0          # 6 − 1 = 5 > 4
    assert not kkt_violation(screen, "clean") > 5.5
    assert not kkt_violation(screen, "nan") > 0.0
    assert KKT_Z == 2.0
    assert lambda_max(screen, []) == pytest.approx(5.0)   # the largest significant violation
    assert lambda_max(screen, ["clean"]) == pytest.approx(2.0)
    assert lambda_max(screen, ["clean", "noisy"]) == pytest.approx(1.0)   # none significant: plain max


def test_selection_is_the_simplest_within_the_ci_of_the_best() -> None:
    from discovery.results import FrontPoint

    def pt(k, acc, ci):
        return FrontPoint(terms=[f"t{i}" for i in range(k)], theta={}, rule=RuleData(expression="0", coefficients={}), n_terms=k, complexity=2 * k,
                          heldout_accuracy=acc, heldout_ci95=ci, heldout_episodes=10, stage="")
    assert select([pt(1, 0.5, 0.01), pt(2, 0.74, 0.01), pt(3, 0.75, 0.02)]) == 1
