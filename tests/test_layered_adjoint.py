"""The adjoint kernel with per-layer θ (docs/kernels.md, "Per-layer θ") against forward mode on the torch loop
(discovery/transfer/layered.py): same adapted W, query loss and ∂loss/∂φ in float64 to 1e-10 for the per-layer and
profile layouts, every term of library and bio10 at once and gated terms, under fa, dfa and bp; tied layers equal the
shared adjoint; LayeredTrainer picks the kernel where it runs and falls back to forward mode elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from discovery.feedforward.inner import per_episode_ce, query_logits, query_loss_forward
from discovery.feedforward.kernels import ckernel, fused
from discovery.feedforward.network import init_feedback, init_weights
from discovery.spec import DiscoverySpec
from discovery.transfer.layered import (
    LayeredTrainer,
    basis,
    layer_thetas,
    layered_online,
    layered_online_forward,
)
from rules.compiler import CompiledRule, compile_terms
from rules.terms import POOLS, term
from tests.helpers.kernels import c_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTHS = (12, 9, 7, 5)
GATED = ["F0", "F5", "F7", "F8", "T46d53c48", "Tb18ddee2", "T8f2da4ad", "T01259fa1"]


@pytest.fixture(autouse=True)
def _c_backend(monkeypatch):
    yield from c_backend(monkeypatch, ckernel.load_adjoint_layered)


def _rule(ids):
    return compile_terms([term(t).expr for t in ids], ids)


def _episode(feedback: str, widths=WIDTHS, B=2, S=6, Q=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(widths, B, g, 1.0, "cpu", torch.float64)
    Bs = init_feedback(widths, feedback, B, g, "cpu", torch.float64)
    ep = SimpleNamespace(x_train=torch.rand(B, S, widths[0], generator=g, dtype=torch.float64),
                         y_train=torch.randint(0, widths[-1], (B, S), generator=g),
                         x_query=torch.rand(B, Q, widths[0], generator=g, dtype=torch.float64),
                         y_query=torch.randint(0, widths[-1], (B, Q), generator=g))
    return Ws, Bs, ep


def _phi(R: int, K: int) -> torch.Tensor:
    """Mixed signs, different in every layer (per-layer) or a nonzero slope (profile)."""
    return 0.02 * torch.sin(torch.arange(1, R * K + 1, dtype=torch.float64) * 0.7)


def _close(got, want, tol=1e-10):
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale


@pytest.mark.parametrize("feedback", ["fa", "dfa", "bp"])
@pytest.mark.parametrize("layout", ["per-layer", "profile"])
@pytest.mark.parametrize("ids", [POOLS["library"], POOLS["bio10"], GATED], ids=["library", "bio10", "gated"])
def test_layered_adjoint_equals_forward_mode(ids, layout, feedback):
    rule = _rule(ids)
    R, L = len(ids), len(WIDTHS) - 1
    b = basis(layout, L)
    K = b.shape[1]
    phi = _phi(R, K)
    thetas = layer_thetas(phi, R, b)
    Ws, Bs, ep = _episode(feedback)
    Wr, gl = fused.meta_gradient_reverse_fused_layered(rule, thetas, Ws, Bs, ep.x_train, ep.y_train, ep.x_query,
                                                       ep.y_query, feedback, 10.0)
    assert gl.shape == (L, R, 2)
    gr = torch.einsum("lk,lrb->rkb", b, gl).reshape(R * K, 2)
    lr = per_episode_ce(query_logits(Wr, ep.x_query, 10.0), ep.y_query)
    singles = [CompiledRule([t]) for t in rule.terms]
    Wf, Df = layered_online_forward(rule, singles, thetas, b, Ws, Bs, ep.x_train, ep.y_train, feedback, 10.0)
    lf, gf, _ = query_loss_forward(Wf, Df, ep.x_query, ep.y_query, 10.0)
    assert float(gf.abs().max()) > 1e-6
    _close(gr, gf)
    _close(lr, lf)
    for a, w in zip(Wr, Wf):
        _close(a, w)
    Wp = fused.run_online_fused_layered(rule, thetas, Ws, Bs, ep.x_train, ep.y_train, feedback, 10.0)
    for a, w in zip(Wp, Wr):                  # the primal-only pass is the gradient pass's primal
        assert torch.equal(a, w)


@pytest.mark.parametrize("feedback", ["fa", "dfa", "bp"])
@pytest.mark.parametrize("pool", ["bio10", "library_gated"])
def test_tied_layers_equal_the_shared_adjoint(pool, feedback):
    """All rows of θ equal: the same adapted W bit for bit, and Σ_ℓ ∂L/∂θ_{ℓ,r} = the shared ∂L/∂θ_r."""
    ids = POOLS[pool]
    rule = _rule(ids)
    R, L = len(ids), len(WIDTHS) - 1
    theta = 0.02 * torch.sin(torch.arange(1, R + 1, dtype=torch.float64))
    Ws, Bs, ep = _episode(feedback, seed=5)
    W0, g0 = fused.meta_gradient_reverse_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, ep.x_query, ep.y_query,
                                               feedback, 10.0)
    W1, g1 = fused.meta_gradient_reverse_fused_layered(rule, theta.expand(L, R), Ws, Bs, ep.x_train, ep.y_train,
                                                       ep.x_query, ep.y_query, feedback, 10.0)
    assert all(torch.equal(a, b) for a, b in zip(W0, W1))
    _close(g1.sum(0), g0)


def test_layered_primal_equals_the_torch_loop():
    rule = _rule(GATED)
    R, L = len(GATED), len(WIDTHS) - 1
    thetas = layer_thetas(_phi(R, L), R, basis("per-layer", L))
    Ws, Bs, ep = _episode("bp", S=9)
    Wp = fused.run_online_fused_layered(rule, thetas, Ws, Bs, ep.x_train, ep.y_train, "bp", 10.0)
    Wt = layered_online(rule, thetas, Ws, Bs, ep.x_train, ep.y_train, "bp", 10.0)
    for a, w in zip(Wp, Wt):
        _close(a, w)


def _spec(kernel: str = "auto", grad_mode: str = "auto", dtype: str = "float64") -> DiscoverySpec:
    theta = {"F0": 0.02, "F2": -0.015, "F3": -0.001, "F5": 0.01}
    return DiscoverySpec.model_validate({
        "network": {"widths": [64, 12, 10, 10], "feedback": "fa"},
        "task": {"dataset": "digits", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"terms": list(theta), "theta_init": theta},
        "meta": {"episodes": 2, "meta_batch": 2, "seed": 3, "dtype": dtype, "kernel": kernel, "grad_mode": grad_mode,
                 "term_scale": "norm"}})


@pytest.mark.parametrize("layout", ["per-layer", "profile"])
def test_trainer_adjoint_equals_forward_trainer(layout):
    init = {"F2@2": -0.03, "F0@3": 0.01} if layout == "per-layer" else {"F2~slope": 0.01, "F5~slope": -0.004}
    fast = LayeredTrainer(_spec(), coefficients=layout, theta_init=init)
    slow = LayeredTrainer(_spec(kernel="torch"), coefficients=layout, theta_init=init)
    assert fast.gradient_path == "reverse-fused" and slow.gradient_path == "forward"
    ep = fast.train_sampler.sample(2, dtype=torch.float64)
    assert torch.equal(slow.train_sampler.sample(2, dtype=torch.float64).x_train, ep.x_train)   # same streams
    Ws, Bs = fast._weights(2, torch.Generator().manual_seed(1))
    l0, g0, a0, W0 = slow.meta_gradient(ep, Ws, Bs)
    l1, g1, a1, W1 = fast.meta_gradient(ep, Ws, Bs)
    assert g1.shape == g0.shape == (len(fast.param_ids), 2)
    _close(g1, g0)
    _close(l1, l0)
    assert torch.equal(a0, a1)
    for a, w in zip(W1, W0):
        _close(a, w)
    fast.step()
    slow.step()
    _close(fast.theta.detach(), slow.theta.detach())
    assert torch.equal(fast.heldout_values(4), slow.heldout_values(4))


def test_gradient_path_dispatch_and_fallback(monkeypatch):
    assert LayeredTrainer(_spec(grad_mode="reverse"), coefficients="per-layer").gradient_path == "reverse-fused"
    assert LayeredTrainer(_spec(grad_mode="forward"), coefficients="per-layer").gradient_path == "forward"
    t = LayeredTrainer(_spec(grad_mode="forward"), coefficients="per-layer")
    assert t.layered_fused                    # held-out scoring still runs the kernel's primal pass
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "numba")
    ckernel.load.cache_clear()
    t = LayeredTrainer(_spec(kernel="auto", grad_mode="reverse"), coefficients="profile")
    assert t.gradient_path == "forward" and not t.layered_fused
    ep = t.train_sampler.sample(2, dtype=torch.float64)
    Ws, Bs = t._weights(2, torch.Generator().manual_seed(1))
    _loss, grad, _, _ = t.meta_gradient(ep, Ws, Bs)
    assert grad.shape == (len(t.param_ids), 2) and torch.isfinite(grad).all()


def test_float32_layered_adjoint_close_to_forward_mode():
    fast = LayeredTrainer(_spec(dtype="float32"), coefficients="per-layer", theta_init={"F2@2": -0.03})
    slow = LayeredTrainer(_spec(kernel="torch", dtype="float32"), coefficients="per-layer",
                          theta_init={"F2@2": -0.03})
    ep = fast.train_sampler.sample(2, dtype=torch.float32)
    Ws, Bs = fast._weights(2, torch.Generator().manual_seed(1))
    _, g0, _, _ = slow.meta_gradient(ep, Ws, Bs)
    _, g1, _, _ = fast.meta_gradient(ep, Ws, Bs)
    assert float((g1 - g0).abs().max()) <= 1e-4 * max(1.0, float(g0.abs().max()))


@pytest.mark.parametrize("segment", ["1", "4"])
def test_layered_checkpoint_interval_changes_nothing(segment, monkeypatch):
    rule = _rule(GATED)
    R, L = len(GATED), len(WIDTHS) - 1
    thetas = layer_thetas(_phi(R, 2), R, basis("profile", L))
    Ws, Bs, ep = _episode("fa", S=11)
    args = (rule, thetas, Ws, Bs, ep.x_train, ep.y_train, ep.x_query, ep.y_query, "fa", 10.0)
    W0, g0 = fused.meta_gradient_reverse_fused_layered(*args)
    monkeypatch.setenv("PLASTICITY_ADJOINT_SEGMENT", segment)
    W1, g1 = fused.meta_gradient_reverse_fused_layered(*args)
    assert all(torch.equal(a, b) for a, b in zip(W0, W1))
    _close(g1, g0, 1e-12)


def test_shared_layout_equals_the_shared_adjoint_trainer():
    """LayeredTrainer('shared') on the per-layer kernel = MetaTrainer on the shared adjoint (grad_mode 'reverse')."""
    from discovery.feedforward.trainer import MetaTrainer

    layered = LayeredTrainer(_spec(grad_mode="reverse"), coefficients="shared")
    shared = MetaTrainer(_spec(grad_mode="reverse"))
    assert layered.gradient_path == shared.gradient_path == "reverse-fused"
    ep = shared.train_sampler.sample(2, dtype=torch.float64)
    Ws, Bs = shared._weights(2, torch.Generator().manual_seed(4))
    l0, g0, _, W0 = shared.meta_gradient(ep, Ws, Bs)
    l1, g1, _, W1 = layered.meta_gradient(ep, Ws, Bs)
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(W0, W1))
    _close(g1, g0)
