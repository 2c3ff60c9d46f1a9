"""Predictive coding (Torch2PC-style) as learners on the functional MLP and on any ``nn.Sequential`` (docs/science.md S4).

Layers f_ℓ (ℓ = 1..L): v̂_0 = x, v̂_ℓ = f_ℓ(v̂_{ℓ−1}); loss 𝓛(v̂_L, y); J_ℓ(u) = ∂f_ℓ/∂u. Errors ε are +gradients and
the parameter update is dθ_ℓ = (∂f_ℓ(u_{ℓ−1}; θ_ℓ)/∂θ_ℓ)ᵀ ε_ℓ (u = v̂ for Exact / FixedPred, u = beliefs v for
Strict); the learner then applies θ ← θ − lr · dθ.

* Exact:      ε_L = ∂𝓛/∂v̂_L, ε_ℓ = J_{ℓ+1}(v̂_ℓ)ᵀ ε_{ℓ+1}  (= backprop).
* FixedPred:  ε_L fixed; n sweeps, top-down ℓ = L−1..1: ε_ℓ ← v̂_ℓ − v_ℓ; v_ℓ ← v_ℓ + η(ε_ℓ − J_{ℓ+1}(v̂_ℓ)ᵀ ε_{ℓ+1}).
  Iterated directly on d_ℓ = v̂_ℓ − v_ℓ (exact in float32): d_ℓ ← (1−η) ε_ℓ + η J_{ℓ+1}ᵀ ε_{ℓ+1}. Closed form
  ε_{L−k} = a_k δ_{L−k}, a_k = P[Binomial(n−1, η) ≥ k] (:func:`fixedpred_shrink`); η = 1, n = L is exactly BP.
* Strict:     v ← v̂; n sweeps: ε_L = ∂𝓛(f_L(v_{L−1}), y)/∂ŷ; top-down ε_ℓ = f_ℓ(v_{ℓ−1}) − v_ℓ,
  v_ℓ ← v_ℓ + η(ε_ℓ − J_{ℓ+1}(v_ℓ)ᵀ ε_{ℓ+1}) (gradient descent on F(v) = Σ_{ℓ<L} ½‖v_ℓ − f_ℓ(v_{ℓ−1})‖² + 𝓛).
  The ε of the last sweep (as Torch2PC returns them) drive dθ, with ∂f_ℓ/∂θ_ℓ taken at the final beliefs v_{ℓ−1}.

On the functional MLP f_ℓ(u) = softplus_β(W_ℓ u) for ℓ < L and f_L(u) = W_L u (logits), 𝓛 = cross-entropy, so
J_{ℓ+1}(u)ᵀ ε = W_{ℓ+1}ᵀ (σ'(W_{ℓ+1} u) ⊙ ε) and dW_ℓ = (σ'(z_ℓ) ⊙ ε_ℓ) u_{ℓ−1}ᵀ, all in closed form, batched over
episodes. On an ``nn.Sequential`` every top-level module is one PC layer and J_ℓᵀ ε is an autograd vjp.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from discovery.feedforward.network import forward, matvec, softplus, softplus_grad_from_output, vecmat

Weights = list[Tensor]
PC_MODES = ("exact", "fixedpred", "strict")


def fixedpred_shrink(n: int, eta: float, k: int) -> float:
    """a_k(n, η) = P[Binomial(n−1, η) ≥ k] = Σ_{j=k}^{n−1} C(n−1, j) η^j (1−η)^{n−1−j}: ε_{L−k} = a_k δ_{L−k}.

    k = 0 (the output) is always 1; with n = 0 sweeps every hidden ε stays 0."""
    if k <= 0:
        return 1.0
    if n <= 0:
        return 0.0
    m = n - 1
    return float(sum(math.comb(m, j) * eta**j * (1.0 - eta) ** (m - j) for j in range(k, m + 1)))


def _check_mode(mode: str) -> str:
    m = mode.lower()
    if m not in PC_MODES:
        raise ValueError(f"unknown predictive-coding mode {mode!r}; choose one of {PC_MODES}")
    return m


# --------------------------------------------------------------------------------------- functional MLP

def _vjp_mlp(W: Tensor, gain: Tensor | None, eps: Tensor) -> Tensor:
    """J(u)ᵀ ε = Wᵀ (gain ⊙ ε) for f(u) = act(W u), gain = act'(W u) (None: linear output layer)."""
    return vecmat(eps if gain is None else gain * eps, W)


def pc_errors_mlp(Ws: Sequence[Tensor], x: Tensor, target: Tensor, mode: str, eta: float = 1.0,
                  n: int | None = None, beta: float = 10.0) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """PC errors on the functional MLP for one sample per episode.

    Returns (us, eps, gains), each indexed by weight i = ℓ−1: us[i] = u_{ℓ−1} (B, n_{ℓ−1}) the layer input the
    update uses, eps[i] = ε_ℓ (B, n_ℓ) the post-activation error, gains[i] = σ'(W_ℓ u_{ℓ−1}) (ones for the
    output), so the pre-activation teaching signal is gains[i] ⊙ eps[i] and dW_ℓ = (gain ⊙ ε_ℓ) u_{ℓ−1}ᵀ."""
    mode = _check_mode(mode)
    L = len(Ws)
    n_iter = L if n is None else int(n)
    ys = forward(Ws, x, beta)  # [v̂_0 .. v̂_{L−1}, logits]
    eps_L = torch.softmax(ys[-1], dim=-1) - target
    if mode in ("exact", "fixedpred"):
        # gains at v̂: σ'(z_ℓ) = 1 − exp(−β v̂_ℓ) for hidden layers (local form, as in network.errors)
        gains: list[Tensor] = [softplus_grad_from_output(ys[i + 1], beta) for i in range(L - 1)]
        gains.append(torch.ones_like(eps_L))
        eps: list[Tensor] = [torch.zeros_like(ys[i + 1]) for i in range(L - 1)] + [eps_L]
        if mode == "exact":
            for i in range(L - 2, -1, -1):
                eps[i] = _vjp_mlp(Ws[i + 1], gains[i + 1], eps[i + 1])
        else:
            d = [torch.zeros_like(ys[i + 1]) for i in range(L - 1)]  # d_ℓ = v̂_ℓ − v_ℓ
            for _ in range(n_iter):
                for i in range(L - 2, -1, -1):
                    eps[i] = d[i]
                    d[i] = (1.0 - eta) * eps[i] + eta * _vjp_mlp(Ws[i + 1], gains[i + 1], eps[i + 1])
        return list(ys[:-1]), eps, gains

    # strict: beliefs v_1..v_{L−1} relax; v_0 = x is clamped. z[i] = W_{i+1} v_i is cached: J_{ℓ+1}(v_ℓ) needs
    # σ'(W_{ℓ+1} v_ℓ), computed a moment earlier in the same sweep for ε_{ℓ+1} (v_ℓ unchanged in between).
    v = [y.clone() for y in ys[:-1]]
    eps = [torch.zeros_like(ys[i + 1]) for i in range(L - 1)] + [eps_L]
    z: list[Tensor] = [matvec(Ws[i], v[i]) for i in range(L)]
    for _ in range(n_iter):
        z[L - 1] = matvec(Ws[L - 1], v[L - 1])
        eps[L - 1] = torch.softmax(z[L - 1], dim=-1) - target
        for i in range(L - 2, -1, -1):  # layer ℓ = i+1, belief v[i+1]
            z[i] = matvec(Ws[i], v[i])
            eps[i] = softplus(z[i], beta) - v[i + 1]
            gain = None if i + 1 == L - 1 else torch.sigmoid(beta * z[i + 1])
            v[i + 1] = v[i + 1] + eta * (eps[i] - _vjp_mlp(Ws[i + 1], gain, eps[i + 1]))
    gains = [torch.sigmoid(beta * (z[0] if i == 0 else matvec(Ws[i], v[i]))) for i in range(L - 1)]
    gains.append(torch.ones_like(eps_L))
    return v, eps, gains


def pc_weight_grads_mlp(Ws: Sequence[Tensor], x: Tensor, target: Tensor, mode: str, eta: float = 1.0,
                        n: int | None = None, beta: float = 10.0) -> Weights:
    """dW_ℓ = (σ'(W_ℓ u_{ℓ−1}) ⊙ ε_ℓ) u_{ℓ−1}ᵀ per episode: list of (B, n_ℓ, n_{ℓ−1}); Exact = the BP gradient."""
    us, eps, gains = pc_errors_mlp(Ws, x, target, mode, eta, n, beta)
    return [torch.bmm((g * e).unsqueeze(2), u.unsqueeze(1)) for u, e, g in zip(us, eps, gains)]


@dataclass
class PCLearner:
    """Online predictive coding on the functional MLP: W_ℓ ← W_ℓ − lr (σ'_ℓ ⊙ ε_ℓ) u_{ℓ−1}ᵀ.

    ``n`` = None means n = L sweeps. Needs symmetric feedback (the vjp uses W): locality "weight transport"."""

    mode: str
    lr: float
    eta: float = 1.0
    n: int | None = None
    beta: float = 10.0
    name: str = ""
    feedback: str = "bp"
    locality: str = "weight transport"
    hyperparameters: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.mode = _check_mode(self.mode)
        if not self.name:
            self.name = {"exact": "PC-Exact", "fixedpred": "PC-FixedPred", "strict": "PC-Strict"}[self.mode]
        self.hyperparameters = {"lr": float(self.lr)}
        if self.mode != "exact":
            self.hyperparameters["eta"] = float(self.eta)
            if self.n is not None:
                self.hyperparameters["n"] = int(self.n)

    def vjp_per_step(self, L: int) -> int:
        """Number of J_ℓᵀ ε products per online step (cost model; Exact = backprop's L−1)."""
        n = L if self.n is None else self.n
        return (L - 1) if self.mode == "exact" else n * (L - 1)

    def teaching_signals(self, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor,
                         target: Tensor) -> list[Tensor]:
        """[σ'_1 ⊙ ε_1, …, ε_L]: the pre-activation errors the update uses (compare with BP's δ_ℓ)."""
        _, eps, gains = pc_errors_mlp(Ws, x, target, self.mode, self.eta, self.n, self.beta)
        return [g * e for e, g in zip(eps, gains)]

    def step(self, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor, target: Tensor) -> Weights:
        us, eps, gains = pc_errors_mlp(Ws, x, target, self.mode, self.eta, self.n, self.beta)
        return [torch.baddbmm(W, (g * e).unsqueeze(2), u.unsqueeze(1), alpha=-self.lr)
                for W, u, e, g in zip(Ws, us, eps, gains)]


# ------------------------------------------------------------------------------------------ nn.Sequential

def pc_errors_seq(model: nn.Sequential, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                  mode: str = "fixedpred", eta: float = 1.0, n: int | None = None
                  ) -> tuple[list[Tensor], list[Tensor], list[Tensor | None], Tensor]:
    """Torch2PC on any ``nn.Sequential`` (each top-level module one PC layer).

    Returns (vhat, v, eps, loss): lists indexed 0..L (vhat[0] = v[0] = x; eps[0] is None), beliefs v (= v̂ − ε
    for Exact, the relaxed beliefs otherwise) and the loss at v̂. Tensors are detached."""
    mode = _check_mode(mode)
    layers = list(model)
    L = len(layers)
    n_iter = L if n is None else int(n)
    # forward with every layer input a leaf, so J_ℓ(v̂_{ℓ−1})ᵀ ε is one autograd.grad on a retained graph
    vin: list[Tensor] = [x.detach()]
    vhat: list[Tensor] = [x.detach()]
    outs: list[Tensor] = []
    for f in layers:
        u = vhat[-1].detach().requires_grad_(True)
        o = f(u)
        vin.append(u)
        outs.append(o)
        vhat.append(o.detach())
    top = outs[-1].detach().requires_grad_(True)
    loss = loss_fn(top, y)
    eps_L = torch.autograd.grad(loss, top)[0]

    def vjp_hat(ell: int, e: Tensor) -> Tensor:  # J_ℓ(v̂_{ℓ−1})ᵀ e
        return torch.autograd.grad(outs[ell - 1], vin[ell], grad_outputs=e, retain_graph=True)[0]

    eps: list[Tensor | None] = [None] + [torch.zeros_like(vhat[ell]) for ell in range(1, L)] + [eps_L]
    if mode == "exact":
        for ell in range(L - 1, 0, -1):
            eps[ell] = vjp_hat(ell + 1, eps[ell + 1])
        v = [vhat[0]] + [vhat[ell] - eps[ell] for ell in range(1, L + 1)]
    elif mode == "fixedpred":
        d = [None] + [torch.zeros_like(vhat[ell]) for ell in range(1, L)]
        for _ in range(n_iter):
            for ell in range(L - 1, 0, -1):
                eps[ell] = d[ell]
                d[ell] = (1.0 - eta) * eps[ell] + eta * vjp_hat(ell + 1, eps[ell + 1])
        v = [vhat[0]] + [vhat[ell] - d[ell] for ell in range(1, L)] + [vhat[L]]
    else:
        v = [t.clone() for t in vhat]
        for _ in range(n_iter):
            with torch.enable_grad():
                top = layers[L - 1](v[L - 1]).detach().requires_grad_(True)
                eps[L] = torch.autograd.grad(loss_fn(top, y), top)[0]
            for ell in range(L - 1, 0, -1):
                with torch.no_grad():
                    eps[ell] = layers[ell - 1](v[ell - 1]) - v[ell]
                with torch.enable_grad():
                    u = v[ell].detach().requires_grad_(True)
                    jt = torch.autograd.grad(layers[ell](u), u, grad_outputs=eps[ell + 1])[0]
                v[ell] = v[ell] + eta * (eps[ell] - jt)
    return vhat, [t.detach() for t in v], [None if e is None else e.detach() for e in eps], loss.detach()


def pc_gradients(model: nn.Sequential, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 mode: str = "fixedpred", eta: float = 1.0, n: int | None = None, *,
                 set_grad: bool = False) -> list[Tensor]:
    """dθ per parameter of ``model.parameters()`` (same order): dθ_ℓ = (∂f_ℓ(u_{ℓ−1}; θ_ℓ)/∂θ_ℓ)ᵀ ε_ℓ.

    Exact and FixedPred(η = 1, n = L) equal ``torch.autograd`` gradients of ``loss_fn(model(x), y)``; an optimizer
    subtracts dθ. With ``set_grad`` the result is also written to ``p.grad`` (as Torch2PC's SetPCGrads)."""
    mode = _check_mode(mode)
    vhat, v, eps, _ = pc_errors_seq(model, x, y, loss_fn, mode, eta, n)
    us = v if mode == "strict" else vhat
    acc: dict[int, Tensor] = {}
    for ell, f in enumerate(model, start=1):
        params = [p for p in f.parameters() if p.requires_grad]
        if not params:
            continue
        with torch.enable_grad():
            out = f(us[ell - 1].detach())
            grads = torch.autograd.grad(out, params, grad_outputs=eps[ell], allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None:
                acc[id(p)] = acc[id(p)] + g if id(p) in acc else g
    result = [acc.get(id(p), torch.zeros_like(p)) for p in model.parameters()]
    if set_grad:
        for p, g in zip(model.parameters(), result):
            p.grad = g.clone()
    return result
