"""Baseline learners (docs/science.md S3, S1): BP is SGD on the online cross-entropy, BP + Oja with γ = 0 is BP, the Oja
term is y x_preᵀ − y (yᵀW), FA with B = W is BP, DFA on one hidden layer with D = W_2 is BP; equal tuning budgets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from discovery.baselines.learners import (
    BASELINES,
    GRID_POINTS,
    PseudoGradientLearner,
    backprop,
    bp_oja,
    direct_feedback_alignment,
    feedback_alignment,
    locality_of,
    make_baseline,
)
from discovery.feedforward.network import errors, forward, init_feedback, init_weights, post_activities

BETA = 10.0
WIDTHS = [10, 8, 7, 6]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(widths=WIDTHS, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(widths, batch, g, dtype=torch.float64)
    x = torch.rand(batch, widths[0], generator=g, dtype=torch.float64)
    labels = torch.randint(0, widths[-1], (batch,), generator=g)
    return Ws, x, labels, nn.functional.one_hot(labels, widths[-1]).double()


def test_backprop_step_is_sgd_on_online_cross_entropy():
    Ws, x, labels, target = _problem()
    Wg = [W.clone().requires_grad_(True) for W in Ws]
    loss = nn.functional.cross_entropy(forward(Wg, x, BETA)[-1], labels, reduction="sum")
    grads = torch.autograd.grad(loss, Wg)
    new = backprop(0.1, BETA).step(Ws, None, x, target)
    for W, Wn, gW in zip(Ws, new, grads):
        torch.testing.assert_close(Wn, W - 0.1 * gW, rtol=1e-12, atol=1e-14)


def test_bp_oja_with_zero_gamma_is_backprop():
    Ws, x, _, target = _problem()
    a = backprop(0.05, BETA).step(Ws, None, x, target)
    b = PseudoGradientLearner(lr=0.05, feedback="bp", gamma=0.0, beta=BETA).step(Ws, None, x, target)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_bp_oja_matches_the_formula_in_the_expensive_order():
    """ΔW_ℓ = −η δ_ℓ y_{ℓ−1}ᵀ + γ (y_ℓ y_{ℓ−1}ᵀ − (y_ℓ y_ℓᵀ) W_ℓ), output post-activity = softmax."""
    Ws, x, _, target = _problem()
    lr, gamma = 0.05, 0.02
    ys = forward(Ws, x, BETA)
    es = errors(ys, target, Ws, None, "bp", BETA)
    post = post_activities(ys)
    new = bp_oja(lr, gamma, BETA).step(Ws, None, x, target)
    for i, (W, Wn) in enumerate(zip(Ws, new)):
        y, pre = post[i + 1].unsqueeze(2), ys[i].unsqueeze(1)
        expect = W - lr * es[i + 1].unsqueeze(2) @ pre + gamma * (y @ pre - (y @ y.transpose(1, 2)) @ W)
        torch.testing.assert_close(Wn, expect, rtol=1e-12, atol=1e-14)


def test_fa_with_symmetric_feedback_is_backprop_and_differs_otherwise():
    Ws, x, _, target = _problem()
    bp = backprop(0.1, BETA).step(Ws, None, x, target)
    fa_sym = feedback_alignment(0.1, BETA).step(Ws, [W.clone() for W in Ws], x, target)
    for u, v in zip(bp, fa_sym):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
    Bs = init_feedback(WIDTHS, "fa", 4, torch.Generator().manual_seed(5), dtype=torch.float64)
    fa = feedback_alignment(0.1, BETA).step(Ws, Bs, x, target)
    assert torch.equal(fa[-1], bp[-1])  # the output layer's error is e_L in every mode
    assert not torch.allclose(fa[0], bp[0])


def test_dfa_on_one_hidden_layer_with_d_equal_w2_is_backprop():
    widths = [10, 8, 6]
    Ws, x, _, target = _problem(widths)
    bp = backprop(0.1, BETA).step(Ws, None, x, target)
    dfa = direct_feedback_alignment(0.1, BETA).step(Ws, [Ws[1].clone()], x, target)
    for u, v in zip(bp, dfa):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)


def test_teaching_signals_are_the_network_errors():
    Ws, x, _, target = _problem()
    Bs = init_feedback(WIDTHS, "fa", 4, torch.Generator().manual_seed(5), dtype=torch.float64)
    sig = feedback_alignment(0.1, BETA).teaching_signals(Ws, Bs, x, target)
    ref = errors(forward(Ws, x, BETA), target, Ws, Bs, "fa", BETA)[1:]
    for a, b in zip(sig, ref):
        assert torch.equal(a, b)


def test_names_locality_and_equal_tuning_budgets():
    assert backprop(0.1).name == "BP" and bp_oja(0.1, 0.01).name == "BP+Oja"
    assert feedback_alignment(0.1).locality == "global error"
    assert backprop(0.1).locality == "weight transport"
    assert locality_of("dfa") == "global error" and locality_of("none") == "local"
    assert bp_oja(0.1, 0.01).hyperparameters == {"lr": 0.1, "gamma": 0.01}
    assert {b.grid_points for b in BASELINES.values()} == {GRID_POINTS}
    for name, spec in BASELINES.items():
        learner = spec.make(BETA, **spec.stages[0][0])
        assert learner.name == name
        assert learner.feedback == spec.feedback
        assert callable(learner.step)
    assert make_baseline("PC-Strict", lr=0.1, eta=0.1, n=20).hyperparameters == {"lr": 0.1, "eta": 0.1, "n": 20}
    with pytest.raises(ValueError):
        make_baseline("nope", lr=0.1)


def test_learners_run_in_float32_batched_and_keep_shapes():
    g = torch.Generator().manual_seed(0)
    Ws = init_weights(WIDTHS, 3, g)
    x = torch.rand(3, WIDTHS[0], generator=g)
    target = nn.functional.one_hot(torch.tensor([0, 1, 2]), WIDTHS[-1]).float()
    for name, spec in BASELINES.items():
        Bs = init_feedback(WIDTHS, spec.feedback, 3, g)
        new = spec.make(BETA, **spec.stages[0][2]).step(Ws, Bs, x, target)
        assert [W.shape for W in new] == [W.shape for W in Ws], name
        assert all(W.dtype == torch.float32 and torch.isfinite(W).all() for W in new), name
