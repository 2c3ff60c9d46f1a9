"""Predictive coding (docs/science.md S4): Exact and FixedPred(η=1, n=L) equal backprop; FixedPred's per-layer shrink
ε_{L−k} = a_k δ_{L−k} with a_k = P[Binomial(n−1, η) ≥ k]; the functional-MLP and nn.Sequential versions agree."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from discovery.baselines.pc import (
    PCLearner,
    fixedpred_shrink,
    pc_errors_mlp,
    pc_errors_seq,
    pc_gradients,
    pc_weight_grads_mlp,
)
from discovery.feedforward.network import errors, forward, init_weights

BETA = 10.0
WIDTHS = [12, 9, 8, 7, 6, 5]
L = len(WIDTHS) - 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(WIDTHS, batch, g, dtype=torch.float64)
    x = torch.rand(batch, WIDTHS[0], generator=g, dtype=torch.float64)
    labels = torch.randint(0, WIDTHS[-1], (batch,), generator=g)
    target = nn.functional.one_hot(labels, WIDTHS[-1]).double()
    return Ws, x, labels, target


def _autograd_grads(Ws, x, labels):
    """∂/∂W of Σ_episodes CE(z_L, label): per-episode BP gradients."""
    Wg = [W.clone().requires_grad_(True) for W in Ws]
    logits = forward(Wg, x, BETA)[-1]
    loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
    return torch.autograd.grad(loss, Wg)


@pytest.mark.parametrize("mode,eta,n", [("exact", 1.0, None), ("fixedpred", 1.0, L), ("fixedpred", 1.0, None)])
def test_exact_and_fixedpred_eta1_equal_backprop_mlp(mode, eta, n):
    Ws, x, labels, target = _problem()
    ref = _autograd_grads(Ws, x, labels)
    got = pc_weight_grads_mlp(Ws, x, target, mode, eta, n, BETA)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    # and the local-form BP errors of discovery.feedforward.network
    ys = forward(Ws, x, BETA)
    es = errors(ys, target, Ws, None, "bp", BETA)
    for i, gW in enumerate(got):
        torch.testing.assert_close(gW, torch.bmm(es[i + 1].unsqueeze(2), ys[i].unsqueeze(1)), rtol=1e-10,
                                   atol=1e-12)


def test_fixedpred_more_sweeps_than_layers_is_still_backprop():
    Ws, x, labels, target = _problem()
    ref = _autograd_grads(Ws, x, labels)
    for a, b in zip(ref, pc_weight_grads_mlp(Ws, x, target, "fixedpred", 1.0, 3 * L, BETA)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_fixedpred_shrink_matches_binomial_tail():
    Ws, x, _, target = _problem()
    _, exact, _ = pc_errors_mlp(Ws, x, target, "exact", beta=BETA)
    _, eps, _ = pc_errors_mlp(Ws, x, target, "fixedpred", 0.1, 20, BETA)
    binom = pytest.importorskip("scipy.stats").binom
    rel_err = []
    for i in range(L):
        k = L - 1 - i  # layer ℓ = i+1, k = L − ℓ
        a_k = fixedpred_shrink(20, 0.1, k)
        assert a_k == pytest.approx(float(binom.sf(k - 1, 19, 0.1)) if k > 0 else 1.0, rel=1e-12)
        torch.testing.assert_close(eps[i], a_k * exact[i], rtol=1e-10, atol=1e-14)
        rel_err.append(1 - a_k)
    # docs/science.md S4: relative errors 0.885, 0.705, 0.42, 0.135, 0 for layers 1-5
    assert rel_err == pytest.approx([0.885, 0.705, 0.42, 0.135, 0.0], abs=1e-3)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 30), eta=st.floats(0.0, 1.0), k=st.integers(0, 12))
def test_shrink_formula_is_the_binomial_tail(n, eta, k):
    a = fixedpred_shrink(n, eta, k)
    if k == 0:
        assert a == 1.0
    elif n == 0:
        assert a == 0.0
    else:
        direct = sum(math.comb(n - 1, j) * eta**j * (1 - eta) ** (n - 1 - j) for j in range(k, n))
        assert a == pytest.approx(direct, abs=1e-12)
        assert 0.0 <= a <= 1.0 + 1e-12


def _mlp_as_sequential(W_list):
    blocks = [nn.Sequential(nn.Linear(a, b, bias=False), nn.Softplus(beta=BETA))
              for a, b in itertools.pairwise(WIDTHS[:-1])]
    model = nn.Sequential(*blocks, nn.Linear(WIDTHS[-2], WIDTHS[-1], bias=False)).double()
    with torch.no_grad():
        for p, W in zip(model.parameters(), W_list):
            p.copy_(W)
    return model


def _sequential():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.Softplus(beta=BETA), nn.Linear(9, 7), nn.Tanh(),
                         nn.Linear(7, 5)).double()


@pytest.mark.parametrize("mode,eta,n", [("exact", 1.0, None), ("fixedpred", 1.0, 5), ("fixedpred", 1.0, None)])
def test_sequential_exact_and_fixedpred_equal_autograd(mode, eta, n):
    model = _sequential()
    g = torch.Generator().manual_seed(1)
    X = torch.rand(4, 12, generator=g, dtype=torch.float64)
    Y = torch.tensor([0, 1, 2, 3])
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    loss_fn(model(X), Y).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    got = pc_gradients(model, X, Y, loss_fn, mode, eta, n, set_grad=True)
    assert len(got) == len(ref)
    for a, b, p in zip(ref, got, model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.grad, a, rtol=1e-10, atol=1e-12)


def test_sequential_fixedpred_shrink():
    model = _sequential()  # L = 5 PC layers (activations are layers too)
    X = torch.rand(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Y = torch.tensor([1, 4])
    loss_fn = nn.CrossEntropyLoss()
    _, _, exact, _ = pc_errors_seq(model, X, Y, loss_fn, "exact")
    _, _, eps, _ = pc_errors_seq(model, X, Y, loss_fn, "fixedpred", 0.1, 20)
    for ell in range(1, 6):
        torch.testing.assert_close(eps[ell], fixedpred_shrink(20, 0.1, 5 - ell) * exact[ell], rtol=1e-10,
                                   atol=1e-14)


@pytest.mark.parametrize("mode,eta,n", [("strict", 0.1, 20), ("strict", 0.3, 7), ("fixedpred", 0.3, 7)])
def test_functional_and_sequential_versions_agree(mode, eta, n):
    Ws, x, labels, target = _problem(batch=2)
    got = pc_weight_grads_mlp(Ws, x, target, mode, eta, n, BETA)
    for b in range(2):
        model = _mlp_as_sequential([W[b] for W in Ws])
        ref = pc_gradients(model, x[b:b + 1], labels[b:b + 1], nn.CrossEntropyLoss(reduction="sum"), mode, eta, n)
        for gm, gs in zip(got, ref):
            torch.testing.assert_close(gm[b], gs, rtol=1e-9, atol=1e-13)


def test_strict_one_sweep_teaches_only_the_output_layer():
    """Strict, n = 1: beliefs start at v̂, so every hidden ε_ℓ = f_ℓ(v̂_{ℓ−1}) − v̂_ℓ = 0 and ε_L = ∂𝓛/∂ŷ (BP's);
    the output update uses the relaxed belief v_{L−1} (close to BP's, not equal)."""
    Ws, x, labels, target = _problem()
    ref = _autograd_grads(Ws, x, labels)
    got = pc_weight_grads_mlp(Ws, x, target, "strict", 0.1, 1, BETA)
    for gW in got[:-1]:
        assert torch.count_nonzero(gW) == 0
    cos = nn.functional.cosine_similarity(ref[-1].flatten(), got[-1].flatten(), dim=0)
    assert 0.9 < cos < 1.0


def test_pc_learner_step_is_sgd_on_pc_grads():
    Ws, x, _, target = _problem()
    for mode, eta, n in [("exact", 1.0, None), ("fixedpred", 0.2, 10), ("strict", 0.1, 5)]:
        learner = PCLearner(mode, lr=0.05, eta=eta, n=n, beta=BETA)
        new = learner.step(Ws, None, x, target)
        grads = pc_weight_grads_mlp(Ws, x, target, mode, eta, n, BETA)
        for W, Wn, gW in zip(Ws, new, grads):
            torch.testing.assert_close(Wn, W - 0.05 * gW, rtol=1e-12, atol=1e-14)
        sig = learner.teaching_signals(Ws, None, x, target)
        assert [s.shape for s in sig] == [W.shape[:2] for W in Ws]
        assert learner.locality == "weight transport"
    assert PCLearner("strict", 0.1, 0.1, 20).vjp_per_step(5) == 80
    with pytest.raises(ValueError):
        PCLearner("bogus", 0.1)
