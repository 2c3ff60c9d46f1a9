"""The C adjoint kernel (reverse-mode meta-gradient, docs/kernels.md) against forward mode and torch autograd:
same adapted W, same query loss, same ∂loss/∂θ in float64 to 1e-10, for every term of every pool at once under fa,
dfa and bp; its checkpoint interval changes nothing; meta.grad_mode 'auto' / 'reverse' pick it where it runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from discovery.feedforward import trainer as trainer_mod
from discovery.feedforward.inner import per_episode_ce, query_logits, query_loss_forward
from discovery.feedforward.kernels import ckernel, fused
from discovery.feedforward.network import init_feedback, init_weights
from discovery.feedforward.trainer import MetaTrainer
from discovery.spec import DiscoverySpec
from rules.compiler import compile_terms
from rules.terms import POOLS, term
from tests.helpers.kernels import c_backend


@pytest.fixture(autouse=True)
def _c_backend(monkeypatch):
    yield from c_backend(monkeypatch, ckernel.load_adjoint)


def _rule(ids):
    return compile_terms([term(t).expr for t in ids], ids)


def _episode(feedback: str, dtype=torch.float64, widths=(12, 9, 7, 5), B=2, S=7, Q=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(widths, B, g, 1.0, "cpu", dtype)
    Bs = init_feedback(widths, feedback, B, g, "cpu", dtype)
    ep = SimpleNamespace(x_train=torch.rand(B, S, widths[0], generator=g, dtype=dtype),
                         y_train=torch.randint(0, widths[-1], (B, S), generator=g),
                         x_query=torch.rand(B, Q, widths[0], generator=g, dtype=dtype),
                         y_query=torch.randint(0, widths[-1], (B, Q), generator=g))
    return Ws, Bs, ep


def _autograd(rule, theta, Ws, Bs, ep, feedback):
    """MetaTrainer._gradient_reverse (torch autograd through the unrolled loop) on a stand-in trainer."""
    stub = SimpleNamespace(spec=SimpleNamespace(network=SimpleNamespace(widths=[Ws[0].shape[2]] + [W.shape[1] for W in Ws],
                                                                        feedback=feedback, beta=10.0)),
                           theta=theta.clone().requires_grad_(True), rule=rule, dtype=theta.dtype)
    return MetaTrainer._gradient_reverse(stub, ep, Ws, Bs)


@pytest.mark.parametrize("feedback", ["fa", "dfa", "bp"])
@pytest.mark.parametrize("pool", ["paper3", "bio10", "library", "library_gated"])
def test_adjoint_equals_forward_mode_and_autograd(pool, feedback):
    """Every term of the pool at once, θ nonzero with mixed signs (decay terms included, so s ≠ 1): adapted W, loss
    and ∂loss/∂θ of the adjoint kernel equal forward mode's (fused kernel) and torch autograd's to 1e-10."""
    ids = POOLS[pool]
    rule = _rule(ids)
    Ws, Bs, ep = _episode(feedback)
    theta = 0.02 * torch.sin(torch.arange(1, len(ids) + 1, dtype=torch.float64))
    Wr, gr = fused.meta_gradient_reverse_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, ep.x_query, ep.y_query,
                                               feedback, 10.0)
    lr = per_episode_ce(query_logits(Wr, ep.x_query, 10.0), ep.y_query)
    Wf, Df = fused.run_online_forward_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, feedback, 10.0)
    lf, gf, _ = query_loss_forward(Wf, Df, ep.x_query, ep.y_query, 10.0)
    la, ga, _, Wa = _autograd(rule, theta, Ws, Bs, ep, feedback)
    assert gr.shape == (len(ids), 2)
    scale = float(gf.abs().max())
    for want in (gf, ga):
        torch.testing.assert_close(gr, want, rtol=1e-10, atol=1e-10 * max(scale, 1.0))
    for a, b, c in zip(Wr, Wf, Wa, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lr, lf, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lr, la, rtol=1e-10, atol=1e-12)


def test_every_library_term_alone_beside_f0():
    """Each term of the gated library beside F0 (so no term hides behind another's gradient), fa feedback."""
    Ws, Bs, ep = _episode("fa", S=5, seed=4)
    for tid in POOLS["library_gated"]:
        ids = ["F0"] if tid == "F0" else ["F0", tid]
        rule = _rule(ids)
        theta = torch.tensor([0.05, -0.03][: len(ids)], dtype=torch.float64)
        _, gr = fused.meta_gradient_reverse_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, ep.x_query,
                                                  ep.y_query, "fa", 10.0)
        Wf, Df = fused.run_online_forward_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, "fa", 10.0)
        _, gf, _ = query_loss_forward(Wf, Df, ep.x_query, ep.y_query, 10.0)
        torch.testing.assert_close(gr, gf, rtol=1e-10, atol=1e-12, msg=tid)


@pytest.mark.parametrize("segment", ["1", "3", "7", "100"])
def test_checkpoint_interval_changes_nothing(segment, monkeypatch):
    """Rebuilding the tape from checkpoints every k steps (k = 1, 3, 7 of 7 steps, or all at once) gives the same
    gradient as the default k = ⌈√S⌉ (float64, to rounding)."""
    ids = POOLS["library_gated"]
    rule = _rule(ids)
    Ws, Bs, ep = _episode("bp")
    theta = 0.01 * torch.cos(torch.arange(1, len(ids) + 1, dtype=torch.float64))
    args = (rule, theta, Ws, Bs, ep.x_train, ep.y_train, ep.x_query, ep.y_query, "bp", 10.0)
    W0, g0 = fused.meta_gradient_reverse_fused(*args)
    monkeypatch.setenv("PLASTICITY_ADJOINT_SEGMENT", segment)
    W1, g1 = fused.meta_gradient_reverse_fused(*args)
    torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-14)
    for a, b in zip(W0, W1, strict=True):
        assert torch.equal(a, b)


def test_float32_adjoint_close_to_forward_mode():
    ids = POOLS["bio10"]
    rule = _rule(ids)
    Ws, Bs, ep = _episode("fa", dtype=torch.float32)
    theta = 0.02 * torch.sin(torch.arange(1, len(ids) + 1, dtype=torch.float32))
    _, gr = fused.meta_gradient_reverse_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, ep.x_query, ep.y_query,
                                              "fa", 10.0)
    Wf, Df = fused.run_online_forward_fused(rule, theta, Ws, Bs, ep.x_train, ep.y_train, "fa", 10.0)
    _, gf, _ = query_loss_forward(Wf, Df, ep.x_query, ep.y_query, 10.0)
    assert gr.dtype == torch.float32
    torch.testing.assert_close(gr, gf, rtol=1e-4, atol=1e-5 * float(gf.abs().max()))


def _spec(pool: str, grad_mode: str, kernel: str = "auto", feedback: str = "fa") -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [784, 16, 8, 5], "feedback": feedback},
        "task": {"dataset": "synthetic", "ways": 5, "shots": 3, "queries": 2},
        "rule": {"pool": pool},
        "meta": {"episodes": 3, "meta_batch": 2, "eval_episodes": 0, "lr": 1e-2, "dtype": "float64",
                 "kernel": kernel, "grad_mode": grad_mode},
    })


def test_grad_mode_dispatch():
    assert MetaTrainer(_spec("library", "auto")).gradient_path == "reverse-fused"
    assert MetaTrainer(_spec("library_gated", "auto")).gradient_path == "reverse-fused"
    assert MetaTrainer(_spec("paper3", "auto")).gradient_path == "forward"          # R = 3 < the crossover
    assert MetaTrainer(_spec("paper3", "reverse")).gradient_path == "reverse-fused"
    assert MetaTrainer(_spec("library", "reverse", kernel="torch")).gradient_path == "reverse-torch"
    assert MetaTrainer(_spec("library", "auto", kernel="torch")).gradient_path == "forward"
    assert MetaTrainer(_spec("library", "forward")).gradient_path == "forward"
    assert MetaTrainer(_spec("library", "auto", feedback="sign")).gradient_path == "forward"
    assert len(POOLS["library"]) >= trainer_mod.REVERSE_MIN_TERMS > len(POOLS["paper3"])


def test_no_compiler_falls_back_to_forward_mode(monkeypatch):
    """Without the C kernel (numba backend) 'auto' is forward mode and 'reverse' is torch autograd: correct, slower."""
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "numba")
    ckernel.load.cache_clear()
    if fused.numba is None:
        pytest.skip("numba not installed")
    assert not fused.reverse_available(_rule(POOLS["library"]), "fa", torch.device("cpu"), torch.float64)
    assert MetaTrainer(_spec("library", "auto")).gradient_path == "forward"
    assert MetaTrainer(_spec("library", "reverse")).gradient_path == "reverse-torch"


@pytest.mark.parametrize("pool", ["library", "bio10"])
def test_trainer_meta_gradient_auto_equals_forward(pool):
    """MetaTrainer.meta_gradient under 'auto' (the adjoint kernel) equals 'forward' on the same episodes (float64):
    loss, ∂loss/∂θ, accuracy and the adapted W."""
    auto, fwd = MetaTrainer(_spec(pool, "auto")), MetaTrainer(_spec(pool, "forward"))
    assert auto.gradient_path == "reverse-fused"
    with torch.no_grad():
        theta = 0.01 * torch.sin(torch.arange(1, len(auto.term_ids) + 1, dtype=torch.float64))
        for t in (auto, fwd):
            t.phi.copy_(theta / t.scale)
    ep = auto.train_sampler.sample(2, device=auto.device, dtype=auto.dtype)
    Ws, Bs = auto._weights(2)
    a = auto.meta_gradient(ep, Ws, Bs)
    b = fwd.meta_gradient(ep, Ws, Bs)
    for x, y in zip(a[:3], b[:3], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    for x, y in zip(a[3], b[3], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_forward_kernel_variant_without_the_adjoint_still_builds(monkeypatch, tmp_path):
    """A forward-kernel source the adjoint cannot include (an older variant, as experiments/kernel_ab.py loads) is
    built alone: `load` works, `load_adjoint` is None, and 'auto' falls back to forward mode."""
    src = ckernel.SOURCE.read_text().replace("real *gtape;", "").replace(
        "if (w->gtape) memcpy(w->gtape + om, Gb, sizeof(real) * m);", "")
    variant = tmp_path / "old_kernel.c"
    variant.write_text(src)
    monkeypatch.setenv("PLASTICITY_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ckernel, "SOURCE", variant)
    ckernel.load.cache_clear()
    assert ckernel.load(np.float64) is not None
    assert ckernel.load_adjoint(np.float64) is None
    assert not fused.reverse_available(_rule(POOLS["library"]), "fa", torch.device("cpu"), torch.float64)
