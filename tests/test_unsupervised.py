"""The unsupervised Hebbian family: library, metrics, meta-gradient, tiny search, goal and engine routing."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from discovery.family import Family
from discovery.goal import parse_goal
from discovery.registry import get_family, list_families
from discovery.router import discover
from discovery.unsupervised.data import load_pca_data
from discovery.unsupervised.metrics import reconstruction_error, subspace_error, subspace_error_smooth
from discovery.unsupervised.terms import OJA_DECAY, OJA_HEBB, POOL, TermEvaluator, term_library
from discovery.unsupervised.trainer import InnerConfig, UnsupervisedTrainer
from rules.primitives import W, one, one_pre, x, y
from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedRule, unsupervised_term

GOAL = "find an unsupervised hebbian rule that extracts principal components"


def test_library_has_oja_terms_and_distinct_canonical_ids() -> None:
    terms = term_library()
    assert len(terms) >= 12
    texts = {t.text for t in terms}
    assert {"y*x.T", "y*(y.T*W)", "W"} <= texts
    assert len({t.canonical for t in terms}) == len(terms) == len({t.id for t in terms})
    assert unsupervised_term("hebb").id == OJA_HEBB and unsupervised_term("oja_decay").text == "y*(y.T*W)"
    assert all(t.id.startswith("U") for t in terms)


def test_evaluator_matches_the_sympy_terms() -> None:
    k, d = 2, 3
    g = torch.Generator().manual_seed(0)
    Wn = torch.randn(1, k, d, generator=g, dtype=torch.float64)
    xn = torch.randn(1, d, generator=g, dtype=torch.float64)
    M = sp.ImmutableMatrix
    Wm, xm = M(Wn[0].tolist()), M(xn[0].tolist())
    subs = {W: Wm, x: xm, y: M(Wm * xm), one: M(sp.ones(k, 1)), one_pre: M(sp.ones(d, 1))}
    ev = TermEvaluator(POOL)
    for r, t in enumerate(term_library()):
        theta = torch.zeros(1, len(POOL), dtype=torch.float64)
        theta[0, r] = 1.0
        dW, _ = ev.delta(theta, Wn, xn)
        ref = torch.tensor(sp.Matrix(t.poly.to_sympy().xreplace(subs).doit()).tolist(), dtype=torch.float64)
        assert torch.allclose(dW.expand(1, k, d)[0], ref, atol=1e-12), t.name


def test_subspace_error_of_pca_bases() -> None:
    data = load_pca_data("digits")
    U = data.top_subspace(4)
    assert float(subspace_error(U.T, U)) < 1e-12
    other = data.full_eigenvectors[:, 4:8]
    assert float(subspace_error(other.T, U)) == pytest.approx(1.0, abs=1e-9)
    rot = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0] @ U.T * 3.0     # any basis of the subspace
    assert float(subspace_error(rot, U)) < 1e-12
    assert float(subspace_error_smooth(rot, U)) < 1e-6
    best = reconstruction_error(data.top_subspace(4, full=False).T, data.heldout)
    assert float(best) == pytest.approx(data.best_reconstruction(4))


@pytest.mark.parametrize("objective", ["reconstruction", "subspace"])
def test_meta_gradient_matches_finite_differences(objective: str) -> None:
    data = load_pca_data("digits")
    tr = UnsupervisedTrainer(data, POOL, InnerConfig(k=2, unroll=12, objective=objective), seed=0)
    W0, idx = tr.sample_episodes(2, torch.Generator().manual_seed(3))
    cols = [tr.index[OJA_HEBB], tr.index[OJA_DECAY], tr.index[unsupervised_term("ysq_decay").id]]
    phi0 = torch.zeros(len(POOL), dtype=torch.float64)
    phi0[cols] = torch.tensor([0.05, -0.01, -0.002], dtype=torch.float64)

    def loss(phi: torch.Tensor) -> torch.Tensor:
        Ws, _ = tr.run((phi * tr.scale).expand(2, -1), W0, idx, [12], cols)
        return tr.objective(Ws).mean()

    phi = phi0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(phi), phi)
    eps = 1e-6
    for c in cols:
        e = torch.zeros_like(phi0)
        e[c] = eps
        fd = (loss(phi0 + e) - loss(phi0 - e)) / (2 * eps)
        assert float(grad[c]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


def test_ojas_rule_finds_the_principal_subspace_of_digits() -> None:
    data = load_pca_data("digits")
    tr = UnsupervisedTrainer(data, [OJA_HEBB, OJA_DECAY], InnerConfig(k=4, unroll=50), seed=0)
    ev = tr.evaluate({OJA_HEBB: 0.01, OJA_DECAY: -0.01}, episodes=2, passes=2)
    assert ev.subspace_passes[-1] < 0.1 < ev.subspace
    assert all(abs(e - 1.0) < 0.1 for e in ev.ww_eigenvalues)          # W Wᵀ → (a/b) I = I


def test_rule_identity_and_dict() -> None:
    rule = UnsupervisedRule({"hebb": 0.02, "oja_decay": -0.02})
    assert UnsupervisedRule.from_canonical(rule.canonical()) == rule
    assert rule.canonical().startswith("unsupervised/v1:")
    d = rule.to_dict()
    assert d["family"] == d["kind"] == "unsupervised" and set(d["coefficients"]) == {OJA_HEBB, OJA_DECAY}
    assert d["expression"] == "0.02*y*x.T - 0.02*y*(y.T*W)" and "y y^{T} W" in d["latex"]
    with pytest.raises(ValueError):
        UnsupervisedRule({"e": 1.0})


def test_registry_and_protocol() -> None:
    assert "unsupervised" in list_families()
    family = get_family("unsupervised")
    assert isinstance(family, Family) and len(family.term_library()) == len(UNSUPERVISED_TERMS)
    with pytest.raises(KeyError, match="registered: .*unsupervised"):
        get_family("telepathic")


def test_goal_phrases_resolve_to_the_family() -> None:
    spec = parse_goal(GOAL).spec
    assert spec.family == "unsupervised" and spec.task.kind == "pca" and spec.network.widths == [64, 4]
    assert spec.search.method == "forward" and spec.rule.terms == list(UNSUPERVISED_TERMS)   # no hint
    assert spec.rule.objective == "reconstruction"
    sub = parse_goal("oja rule for pca with the subspace objective, 8 components").spec
    assert sub.rule.objective == "subspace" and sub.network.widths == [64, 8]
    assert parse_goal("tiny " + GOAL).spec.rule.unroll < 100
    assert parse_goal("depth-2 with oja").spec.family == "feedforward"


def test_tiny_goal_search_returns_a_front_with_one_selected_rule() -> None:
    events = []
    result = discover(parse_goal("tiny " + GOAL).spec, progress=events.append)
    assert len(result.front) >= 2 and sum(p.selected for p in result.front) == 1
    assert result.rule.model_dump()["family"] == "unsupervised" and result.rule.terms
    # the job's budget is the progress total (or the episode reached, when L-BFGS's line search used more)
    assert events and events[-1].total == max(result.spec.meta.episodes, events[-1].episode)
    assert any(v != 0 for v in result.theta.values())          # θ moved from 0
