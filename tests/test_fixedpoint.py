"""Tests of the fixed-point recurrent learners (docs/science.md S2): exactness of dW1, dW2 ≈ dW3 to first order,
dW1 = backprop in a layered network, and solver failures that raise FixedPointError."""

from __future__ import annotations

import math

import pytest
import torch

from discovery.recurrent.fixedpoint import (
    FixedPointError,
    adjoint,
    dW1,
    dW3,
    dW4,
    euler_relax,
    gain,
    make_linear_task,
    random_matrix,
    run_fixedpoint_linear,
    run_fixedpoint_mnist,
    solve_fixed_point,
    spectral_radius,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(N: int = 8, B: int = 3, rho: float = 0.5, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    W = random_matrix(N, rho, gen)
    X = torch.randn(B, N, generator=gen, dtype=F64)
    T = 0.5 * torch.randn(B, N, generator=gen, dtype=F64)
    return W, X, T


def _loss(W: torch.Tensor, X: torch.Tensor, T: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    method = "solve" if activation == "linear" else "anderson"
    r = solve_fixed_point(W, X, activation=activation, method=method, tol=1e-14, max_iter=3000).r
    return 0.5 * ((r - T) ** 2).sum(-1).mean()


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_dW1_equals_finite_differences(activation: str) -> None:
    W, X, T = _setup()
    r = solve_fixed_point(W, X, activation=activation, tol=1e-14, max_iter=3000).r
    grad = dW1(W, r, r - T, gain(r, activation))
    N, h = W.shape[0], 1e-6
    fd = torch.zeros_like(W)
    for i in range(N):
        for j in range(N):
            E = torch.zeros_like(W)
            E[i, j] = h
            fd[i, j] = (_loss(W + E, X, T, activation) - _loss(W - E, X, T, activation)) / (2 * h)
    assert torch.allclose(grad, fd, atol=1e-8, rtol=1e-6), (grad - fd).abs().max()


def test_adjoint_iteration_matches_solve() -> None:
    W, X, T = _setup(N=10, B=4)
    r = solve_fixed_point(W, X, tol=1e-14).r
    g, delta = gain(r), r - T
    u_solve = adjoint(W, g, delta, method="solve")
    u_iter = adjoint(W, g, delta, method="anderson")
    assert torch.allclose(u_solve, u_iter, atol=1e-9)
    # u = δ + Wᵀ(g ⊙ u)
    assert torch.allclose(u_solve, delta + (g * u_solve) @ W, atol=1e-12)


def test_dW2_and_dW3_agree_to_first_order_in_eta() -> None:
    task = make_linear_task(N=12, m=6, seed=3)
    eye = torch.eye(12, dtype=F64)
    W = task.W_init
    A = torch.linalg.inv(eye - W)
    gradA = (2.0 / 6) * (A @ task.X - task.R_hat) @ task.X.T
    errs = []
    for eta in (1e-2, 1e-3, 1e-4):
        W2 = eye - torch.linalg.inv(A - eta * gradA)                   # exact reparameterized step
        W3 = W - eta * (eye - W) @ gradA @ (eye - W)                    # linearized: A⁻¹ ∇_A J A⁻¹
        errs.append(float((W2 - W3).norm()))
        assert errs[-1] < 1e-2 * eta * float((W3 - W).norm() / eta)   # difference is small against the step
    # second order: 10× smaller η gives ≈ 100× smaller difference
    assert 50 < errs[1] / errs[2] < 200 and 50 < errs[0] / errs[1] < 200


def test_dW3_dW4_reduce_to_linearized_rule_when_G_is_identity() -> None:
    gen = torch.Generator().manual_seed(0)
    N, B = 7, 5
    W = random_matrix(N, 0.6, gen)
    r = torch.randn(B, N, generator=gen, dtype=F64)
    delta = torch.randn(B, N, generator=gen, dtype=F64)
    g = torch.ones(B, N, dtype=F64)
    Ainv = torch.eye(N, dtype=F64) - W
    x = r @ Ainv.T                                                      # x = A⁻¹ r
    gradA = delta.T @ x / B                                             # mean_b δ xᵀ = ∇_A 𝓛
    expected = Ainv @ gradA @ Ainv
    assert torch.allclose(dW3(W, r, delta, g), expected, atol=1e-12)
    assert torch.allclose(dW4(W, r, delta, g), expected, atol=1e-12)


def test_dW1_equals_backprop_in_a_layered_network() -> None:
    """Strictly block-lower-triangular (nilpotent) W: the fixed point is the MLP forward pass."""
    gen = torch.Generator().manual_seed(5)
    sizes = [4, 5, 3]
    N, B = sum(sizes), 6
    off = [0, 4, 9, 12]
    W21 = torch.randn(5, 4, generator=gen, dtype=F64)
    W32 = torch.randn(3, 5, generator=gen, dtype=F64)
    X1 = torch.randn(B, 4, generator=gen, dtype=F64)
    T = torch.randn(B, 3, generator=gen, dtype=F64)
    W = torch.zeros(N, N, dtype=F64)
    W[off[1]:off[2], off[0]:off[1]] = W21
    W[off[2]:off[3], off[1]:off[2]] = W32
    X = torch.zeros(B, N, dtype=F64)
    X[:, :4] = X1

    # explicit layered forward + autograd
    w21, w32 = W21.clone().requires_grad_(), W32.clone().requires_grad_()
    y1 = torch.tanh(X1)
    y3 = torch.tanh(torch.tanh(y1 @ w21.T) @ w32.T)
    loss = 0.5 * ((y3 - T) ** 2).sum(-1).mean()
    g21, g32 = torch.autograd.grad(loss, (w21, w32))

    r = solve_fixed_point(W, X, tol=1e-14).r
    assert torch.allclose(r[:, off[2]:], y3.detach(), atol=1e-12)
    delta = torch.zeros(B, N, dtype=F64)
    delta[:, off[2]:] = r[:, off[2]:] - T
    grad = dW1(W, r, delta, gain(r))
    assert torch.allclose(grad[off[1]:off[2], off[0]:off[1]], g21, atol=1e-12)
    assert torch.allclose(grad[off[2]:off[3], off[1]:off[2]], g32, atol=1e-12)

    # every entry (also the non-layered ones) equals autograd through 2L unrolled iterations from r = 0
    Wf = W.clone().requires_grad_()
    rr = torch.zeros(B, N, dtype=F64)
    for _ in range(2 * len(sizes)):
        rr = torch.tanh(rr @ Wf.T + X)
    full = torch.autograd.grad(0.5 * ((rr[:, off[2]:] - T) ** 2).sum(-1).mean(), Wf)[0]
    assert torch.allclose(grad, full, atol=1e-12)


def test_linear_solver_raises_on_spectral_radius_above_one() -> None:
    gen = torch.Generator().manual_seed(2)
    W = random_matrix(10, 3.0, gen)
    X = torch.randn(4, 10, generator=gen, dtype=F64)
    with pytest.raises(FixedPointError) as err:                         # the iteration diverges
        solve_fixed_point(W, X, activation="linear", method="damped", max_iter=500)
    assert not err.value.residual <= 1e-8
    with pytest.raises(FixedPointError):                                # no convergence (or unstable)
        solve_fixed_point(W, X, activation="linear", method="anderson", max_iter=500)
    with pytest.raises(FixedPointError) as err:                         # exact root, but it is unstable
        solve_fixed_point(W, X, activation="linear", method="solve")
    assert err.value.residual < 1e-10
    assert err.value.spectral_abscissa is not None and err.value.spectral_abscissa > 1


def test_tanh_solver_raises_without_convergence() -> None:
    gen = torch.Generator().manual_seed(4)
    W = random_matrix(40, 6.0, gen)                                     # strongly chaotic tanh network
    X = 0.1 * torch.randn(3, 40, generator=gen, dtype=F64)
    with pytest.raises(FixedPointError) as err:
        solve_fixed_point(W, X, method="damped", max_iter=200)
    assert err.value.residual > 1e-8 and math.isfinite(err.value.residual)
    with pytest.raises(FixedPointError):
        solve_fixed_point(W, X, method="anderson", max_iter=200, check_stability=True)


def test_stable_solvers_agree_with_published_euler_relaxation() -> None:
    W, X, _ = _setup(N=12, B=3, rho=0.5)
    fp = solve_fixed_point(W, X, tol=1e-12)
    assert fp.iterations < 60
    r_euler = euler_relax(W, X, dt=0.01, steps=6000)
    assert torch.allclose(fp.r, r_euler, atol=1e-8)
    # the published budget (500 steps of 0.01) is only a partial relaxation
    assert float((euler_relax(W, X) - fp.r).abs().max()) < 0.1


def test_term_directions_are_batched_over_seeds() -> None:
    from discovery.recurrent.network import SolverConfig, rule_update, term_directions
    from rules.recurrent import RECURRENT_TERMS

    gen = torch.Generator().manual_seed(7)
    S, B, N = 3, 4, 6
    W = torch.stack([random_matrix(N, 0.5, gen) for _ in range(S)])
    X = torch.randn(S, B, N, generator=gen, dtype=F64)
    r = solve_fixed_point(W, X, tol=1e-13).r
    delta = torch.randn(S, B, N, generator=gen, dtype=F64)
    cfg = SolverConfig(tol=1e-13, adjoint_tol=1e-13, adjoint_method="solve")
    ids = list(RECURRENT_TERMS)
    dirs = dict(zip(ids, term_directions(W, r, delta, ids, cfg)))
    for s in range(S):
        single = dict(zip(ids, term_directions(W[s], r[s], delta[s], ids, cfg)))
        for k, v in dirs.items():
            assert v.shape == (S, N, N)
            assert torch.allclose(v[s], single[k], atol=1e-12)
    oja = (r[0].T @ r[0] - r[0].T @ r[0] @ W[0]) / B
    assert torch.allclose(dirs["rec_oja"][0], oja, atol=1e-12)
    # one sign convention: F = −dW for the paper's gradient directions, ΔW = Σ θ_k F_k
    g = gain(r)
    assert torch.allclose(dirs["rec_dW1"], -dW1(W, r, delta, g), atol=1e-10)
    assert torch.allclose(dirs["rec_dW3"], -dW3(W, r, delta, g), atol=1e-12)
    assert torch.allclose(dirs["rec_dW4"], -dW4(W, r, delta, g), atol=1e-12)
    step = rule_update(W, r, delta, torch.tensor([1.0, 0.1], dtype=F64), ["rec_dW1", "rec_decay"], cfg)
    assert torch.allclose(step, dirs["rec_dW1"] - 0.1 * W, atol=1e-12)


def test_linear_runner_shapes_and_progress() -> None:
    curves = run_fixedpoint_linear("dW2", [0.3, 1.0], iterations=40, N=16, m=8, seed=[0, 1])
    assert curves.shape == (2, 2, 41)
    assert (curves[..., -1] < 0.5 * curves[..., 0]).all()
    single = run_fixedpoint_linear("dW3", 1.0, iterations=40, N=16, m=8, seed=0)
    assert single.shape == (41,)
    assert torch.allclose(single, run_fixedpoint_linear("dW4", 1.0, iterations=40, N=16, m=8, seed=0))
    # dW2 and dW3 are close for a small step
    c2 = run_fixedpoint_linear("dW2", 0.01, iterations=20, N=16, m=8)
    c3 = run_fixedpoint_linear("dW3", 0.01, iterations=20, N=16, m=8)
    assert torch.allclose(c2, c3, rtol=1e-3)
    c1, W1 = run_fixedpoint_linear("euclidean", 0.3, iterations=40, N=16, m=8, return_weights=True)
    assert c1[-1] < c1[0] and W1.shape == (16, 16) and float(spectral_radius(W1)) < 1.5


def test_mnist_runner_on_tiny_synthetic_data() -> None:
    gen = torch.Generator().manual_seed(0)
    xtr, xte = torch.rand(96, 784, generator=gen), torch.rand(40, 784, generator=gen)
    ytr, yte = torch.randint(0, 10, (96,), generator=gen), torch.randint(0, 10, (40,), generator=gen)
    for rule in ("dW1", "dW3", "dW4"):
        res = run_fixedpoint_mnist(rule, 0.1, N=24, epochs=1, batch=32, data=(xtr, ytr, xte, yte))
        assert res["status"] == "ok" and res["steps"] == 3
        assert 0.0 <= res["test_acc"] <= 1.0
        assert len(res["history"]["abscissa"]) == 4
    res = run_fixedpoint_mnist("dW3", 0.1, N=24, epochs=1, batch=48, data=(xtr, ytr, xte, yte), solver="euler")
    assert res["status"] == "ok" and res["steps"] == 2
