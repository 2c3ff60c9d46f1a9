"""The fused numba kernel against the batched torch loop it replaces: same W, same tangents Ẇ, same meta-gradient,
same θ trajectory; it refuses what it cannot run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from discovery.feedforward.inner import RuleLearner, query_loss_forward, run_online, run_online_forward
from discovery.feedforward.kernels import ckernel, fused
from discovery.feedforward.network import init_feedback, init_weights
from discovery.feedforward.trainer import MetaTrainer
from discovery.router import discover
from discovery.spec import DiscoverySpec
from rules.compiler import compile_expression, compile_terms
from rules.rule import Rule
from rules.terms import term

pytestmark = pytest.mark.skipif(not fused.available(), reason="no fused kernel (no C compiler, no numba)")



@pytest.fixture(params=["c", "numba"], autouse=True)
def backend(request, monkeypatch):
    """Every test runs on both kernels: the C one (skipped without a compiler) and the numba fallback."""
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", request.param)
    ckernel.load.cache_clear()
    if request.param == "c":
        import numpy as np
        try:
            ckernel.load(np.float64)
        except RuntimeError as exc:
            pytest.skip(f"no C kernel here: {exc}")
    elif fused.numba is None:
        pytest.skip("numba not installed")
    yield request.param
    ckernel.load.cache_clear()


POOLS = {"paper3": ["F0", "F2", "F9"], "fusable7": ["F0", "F1", "F2", "F3", "F4", "F9", "hebb"]}


def _episode(feedback: str, dtype=torch.float64, widths=(12, 9, 7, 5), B=3, S=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(widths, B, g, 1.0, "cpu", dtype)
    Bs = init_feedback(widths, feedback, B, g, "cpu", dtype)
    x = torch.rand(B, S, widths[0], generator=g, dtype=dtype)
    y = torch.randint(0, widths[-1], (B, S), generator=g)
    xq = torch.rand(B, 4, widths[0], generator=g, dtype=dtype)
    yq = torch.randint(0, widths[-1], (B, 4), generator=g)
    return Ws, Bs, x, y, xq, yq


def _rule(ids):
    return compile_terms([term(t).expr for t in ids], ids)


@pytest.mark.parametrize("feedback", ["fa", "dfa", "bp"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_fused_equals_torch_forward_mode(feedback, pool):
    """W_T and Ẇ_T = ∂W_T/∂θ of the fused loop equal the torch loop's in float64."""
    ids = POOLS[pool]
    rule = _rule(ids)
    Ws, Bs, x, y, xq, yq = _episode(feedback)
    theta = torch.tensor([0.05, -0.03, 0.02, 0.01, -0.01, 0.004, 0.003][: len(ids)], dtype=torch.float64)
    W1, D1 = run_online_forward(rule, theta, Ws, Bs, x, y, feedback, 10.0)
    W2, D2 = fused.run_online_forward_fused(rule, theta, Ws, Bs, x, y, feedback, 10.0)
    for a, b in zip(W1, W2):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    for a, b in zip(D1, D2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    l1, g1, _ = query_loss_forward(W1, D1, xq, yq, 10.0)
    l2, g2, _ = query_loss_forward(W2, D2, xq, yq, 10.0)
    torch.testing.assert_close(l2, l1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g2, g1, rtol=1e-9, atol=1e-12)
    W3 = fused.run_online_fused(rule, theta, Ws, Bs, x, y, feedback, 10.0)
    W4 = run_online(RuleLearner(rule, theta, feedback, 10.0), Ws, Bs, x, y)
    for a, b in zip(W4, W3):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_fused_float32_close_to_torch():
    rule = _rule(POOLS["paper3"])
    Ws, Bs, x, y, _, _ = _episode("fa", torch.float32)
    theta = torch.tensor([0.05, -0.03, 0.02])
    W1, D1 = run_online_forward(rule, theta, Ws, Bs, x, y, "fa", 10.0)
    W2, D2 = fused.run_online_forward_fused(rule, theta, Ws, Bs, x, y, "fa", 10.0)
    for a, b in zip(W1 + D1, W2 + D2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_user_expression_with_oja_on_error_fuses():
    """A parsed expression using eᵀW (v = Wᵀe) and the ones vector runs in the kernel and matches torch."""
    rule = compile_expression(Rule.parse("-0.02*e*x.T + 0.01*one*(e.T*W) - 0.003*y*e_pre.T").expression)
    assert fused.plan(rule) is not None
    Ws, Bs, x, y, _, _ = _episode("fa")
    one = torch.ones(1, dtype=torch.float64)
    W1, D1 = run_online_forward(rule, one, Ws, Bs, x, y, "fa", 10.0)
    W2, D2 = fused.run_online_forward_fused(rule, one, Ws, Bs, x, y, "fa", 10.0)
    for a, b in zip(W1 + D1, W2 + D2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def test_plan_gates_scalar_chains_and_rejects_sign_feedback(backend):
    assert fused.plan(_rule(["F5"])).gated            # −e (1ᵀy) xᵀ: a 1×1 gate on the post side
    assert fused.plan(_rule(["F6"])).gated            # yᵀW e_pre: a bilinear gate
    # gated rules run in the C kernel only; the numba fallback sends them to the torch loop
    assert fused.fusable(_rule(["F5"]), "fa", torch.device("cpu"), torch.float32) == (backend == "c")
    assert fused.plan(compile_expression(Rule.parse("(e.T*W*W.T*y)*e*x.T").expression)) is None  # not a gate
    assert not fused.fusable(_rule(["F0"]), "sign", torch.device("cpu"), torch.float32)
    assert fused.fusable(_rule(["F0"]), "bp", torch.device("cpu"), torch.float32)
    assert fused.fusable(_rule(["F0"]), "fa", torch.device("cpu"), torch.float32)


def _spec(kernel: str, pool: str = "paper3", feedback: str = "fa") -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [784, 16, 8, 5], "feedback": feedback},
        "task": {"dataset": "synthetic", "ways": 5, "shots": 3, "queries": 2},
        "rule": {"pool": pool},
        "meta": {"episodes": 3, "meta_batch": 2, "eval_episodes": 4, "lr": 1e-2, "dtype": "float64",
                 "kernel": kernel},
    })


def test_trainer_fused_and_torch_kernels_give_the_same_run():
    a = discover(_spec("fused"))
    b = discover(_spec("torch"))
    for ta, tb in zip(a.theta_history, b.theta_history):
        for k in ta:
            assert ta[k] == pytest.approx(tb[k], rel=1e-8, abs=1e-12)
    assert a.heldout_accuracy == pytest.approx(b.heldout_accuracy)


def test_trainer_kernel_choice(backend):
    assert MetaTrainer(_spec("auto")).use_fused
    assert not MetaTrainer(_spec("torch")).use_fused
    # F5–F8 are scalar-gated: the C kernel runs them, the numba fallback leaves them to the torch loop
    assert MetaTrainer(_spec("auto", pool="bio10")).use_fused == (backend == "c")
    assert MetaTrainer(_spec("auto", pool="library_gated")).use_fused == (backend == "c")
    assert MetaTrainer(_spec("auto", feedback="bp")).use_fused
    assert not MetaTrainer(_spec("auto", feedback="sign")).use_fused
    with pytest.raises(ValueError, match="meta.kernel 'fused' runs fa, dfa or bp"):
        _spec("fused", feedback="sign")


def test_c_backend_without_a_compiler_is_a_clear_error(monkeypatch, tmp_path, backend):
    """PLASTICITY_FUSED_BACKEND=c with no compiler names the cause; 'auto' falls back to numba silently."""
    import numpy as np

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PLASTICITY_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "c")
    ckernel.load.cache_clear()
    with pytest.raises(RuntimeError, match="no C compiler"):
        ckernel.load(np.float32)
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "auto")
    ckernel.load.cache_clear()
    assert ckernel.load(np.float32) is None
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "gpu")
    with pytest.raises(ValueError, match="auto, c or numba"):
        ckernel.backend()


TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("feedback", ["fa", "bp"])
def test_torch_path_equals_the_fused_cpu_path_for_every_library_term(feedback, backend):
    """GPU-ready: the batched torch loop (on CUDA where it exists, else the CPU) equals the fused CPU kernel in
    float64 to 1e-10 for every term of the gated library (each beside F0): W_T, Ẇ_T and the query loss and
    meta-gradient. The numba backend runs the ungated terms only (the gated ones need the C kernel)."""
    from rules.terms import POOLS as TERM_POOLS

    Ws, Bs, x, y, xq, yq = _episode(feedback, widths=(12, 9, 7, 5), B=2, S=7, seed=1)
    dev = torch.device(TORCH_DEVICE)
    on = (lambda ts: None if ts is None else [t.to(dev) for t in ts])
    checked = 0
    for tid in TERM_POOLS["library_gated"]:
        ids = ["F0"] if tid == "F0" else ["F0", tid]
        rule = _rule(ids)
        p = fused.plan(rule)
        assert p is not None, tid
        if p.gated and backend != "c":
            continue
        theta = torch.tensor([0.05, 0.03][: len(ids)], dtype=torch.float64)
        W1, D1 = run_online_forward(rule, theta.to(dev), on(Ws), on(Bs), x.to(dev), y.to(dev), feedback, 10.0)
        l1, g1, _ = query_loss_forward(W1, D1, xq.to(dev), yq.to(dev), 10.0)
        W2, D2 = fused.run_online_forward_fused(rule, theta, Ws, Bs, x, y, feedback, 10.0)
        l2, g2, _ = query_loss_forward(W2, D2, xq, yq, 10.0)
        for a, b in zip(W1 + D1 + [l1, g1], W2 + D2 + [l2, g2], strict=True):
            torch.testing.assert_close(b, a.cpu(), rtol=1e-10, atol=1e-10, msg=f"{tid} ({term(tid).name})")
        checked += 1
    assert checked >= (43 if backend == "c" else 10)


@pytest.mark.parametrize("feedback", ["fa", "dfa", "bp"])
@pytest.mark.parametrize("pool", ["bio10", "library_gated"])
def test_whole_gated_pools_equal_torch(pool, feedback, backend):
    """Every term of a gated pool at once, θ nonzero (decay included, so s ≠ 1): the lazy bilinear-gate correction
    (pending between sweeps, added to ż, to the bp error pass and after the last sample) leaves W_T, Ẇ_T, the query
    loss and the meta-gradient equal to the torch loop's in float64 to 1e-10."""
    from rules.terms import POOLS as TERM_POOLS

    if backend != "c":
        pytest.skip("gated rules run on the C kernel only")
    ids = TERM_POOLS[pool]
    rule = _rule(ids)
    Ws, Bs, x, y, xq, yq = _episode(feedback, widths=(12, 9, 7, 5), B=2, S=7, seed=2)
    theta = 0.02 * torch.sin(torch.arange(1, len(ids) + 1, dtype=torch.float64))   # mixed signs, all nonzero
    W1, D1 = run_online_forward(rule, theta, Ws, Bs, x, y, feedback, 10.0)
    W2, D2 = fused.run_online_forward_fused(rule, theta, Ws, Bs, x, y, feedback, 10.0)
    l1, g1, _ = query_loss_forward(W1, D1, xq, yq, 10.0)
    l2, g2, _ = query_loss_forward(W2, D2, xq, yq, 10.0)
    for a, b in zip(W1 + D1 + [l1, g1], W2 + D2 + [l2, g2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_trainer_step_equals_the_fused_cpu_step():
    """One meta-step of the 16-term library on CUDA (torch kernel) and on the CPU (fused kernel), float64: the same
    loss, meta-gradient and θ to 1e-10."""
    spec = _spec("auto", pool="library")
    cpu = MetaTrainer(spec)
    gpu = MetaTrainer(spec, device=torch.device("cuda"))
    assert cpu.use_fused and not gpu.use_fused
    ep = cpu.train_sampler.sample(2, device=cpu.device, dtype=cpu.dtype)
    Ws, Bs = cpu._weights(2)
    a = cpu.meta_gradient(ep, Ws, Bs)
    ep_gpu = dataclasses.replace(ep, **{f.name: getattr(ep, f.name).to("cuda") for f in dataclasses.fields(ep)})
    b = gpu.meta_gradient(ep_gpu, [w.cuda() for w in Ws], None if Bs is None else [w.cuda() for w in Bs])
    for x, y in zip(a[:3], b[:3]):
        torch.testing.assert_close(y.cpu(), x, rtol=1e-10, atol=1e-10)


def test_huge_page_tangent_buffer_changes_no_bit(monkeypatch, backend):
    """Ẇ from anonymous memory advised for huge pages (every size here) gives the same W and Ẇ, bit for bit, as
    from np.zeros; the buffer starts at zero."""
    import numpy as np

    zeros = fused._zeros((3, 1 << 20), np.float32)
    assert zeros.shape == (3, 1 << 20) and not zeros.any() and zeros.flags.writeable
    Ws, Bs, x, y, _, _ = _episode("fa", dtype=torch.float32)
    rule = _rule(POOLS["fusable7"])
    theta = torch.tensor([0.01, -0.02, 0.003, 0.001, -0.002, 0.004, 0.002])
    base = fused.run_online_forward_fused(rule, theta, Ws, Bs, x, y, "fa", 10.0)
    monkeypatch.setattr(fused, "HUGE_MIN_BYTES", 0)
    huge = fused.run_online_forward_fused(rule, theta, Ws, Bs, x, y, "fa", 10.0)
    for a, b in zip(base[0] + base[1], huge[0] + huge[1], strict=True):
        assert torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))
