"""Per-layer coefficients (docs/transfer.md): θ_{r,ℓ} = Σ_k φ_{r,k} b_k(ℓ) over a depth basis b (L × K).

* ``shared``: K = 1, b = 1 (the ordinary rule ΔW_ℓ = Σ_r θ_r F^r_ℓ);
* ``profile``: K = 2, b = [1, u_ℓ] with u_ℓ = 2ℓ/(L−1) − 1 ∈ [−1, 1] (ℓ = 0..L−1): a linear depth profile,
  defined for every depth, so it can be trained and scored across depths;
* ``per-layer``: K = L, b = I (one free θ per term per layer; one depth).

Where the rule runs fused on the CPU with a C compiler (and meta.grad_mode is 'auto' or 'reverse'), the
meta-gradient comes from the adjoint kernel's per-layer-θ entry point (docs/kernels.md, "Per-layer θ"): it returns
∂L/∂θ_{r,ℓ} (L × R) and the chain rule gives ∂L/∂φ_{r,k} = Σ_ℓ b_k(ℓ) ∂L/∂θ_{r,ℓ}; held-out scoring runs the same
kernel's primal pass. Otherwise (no compiler, not fusable, grad_mode 'forward', meta.kernel 'torch') the layers'
updates are combined per layer, ΔW_ℓ = Σ_r θ_{r,ℓ} F^r_ℓ (``CompiledRule.update`` with layer ℓ's θ column), on the
batched torch loop, and forward mode carries R·K tangents ∂W/∂φ_{r,k}: the chain part
of each step is the compiled rule's (``step_forward_`` with ``own=False``, any number of tangent rows), and the
explicit part ∂ΔW_ℓ/∂φ_{r,k} = b_k(ℓ) F^r_ℓ is added per layer from each term's own update F^r_ℓ at the same
state. With all layers tied (per-layer φ_{r,ℓ} = θ_r, or a profile with zero slopes) the layers' θ equal the shared
θ exactly, so the adapted weights are bit-identical to the shared rule's on the torch loop, and the
gradient summed over k·b equals the shared gradient (tests/test_transfer_layered.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cached_property

import torch
from torch import Tensor

from discovery.feedforward.inner import (
    _tangent_errors,
    _tangent_forward,
    onehot,
    query_loss_accuracy,
    rule_env,
)
from discovery.feedforward.kernels import fused
from discovery.feedforward.network import errors, forward, post_activities
from discovery.feedforward.trainer import MetaTrainer
from discovery.spec import DiscoverySpec
from rules.compiler import CompiledRule
from rules.rule import Rule

#: separator of a layered parameter id: "F2@3" (per-layer, layer 3), "F2~slope" (profile slope)
SLOPE = "~slope"


def layout_of(theta: Mapping[str, float]) -> str:
    """The coefficient layout that ``theta``'s parameter ids name (``param_ids``): 'profile' if it holds slopes,
    'per-layer' if it holds per-layer keys, else 'shared'."""
    if any(k.endswith(SLOPE) for k in theta):
        return "profile"
    return "per-layer" if any("@" in k for k in theta) else "shared"


def shared_theta(terms: Sequence[str], theta: Mapping[str, float]) -> dict[str, float]:
    """θ_r of the rule's shared language: the level of a profile, the layer mean of per-layer coefficients."""
    out = {}
    for t in terms:
        if t in theta:
            out[t] = theta[t]
        else:
            vals = [v for k, v in theta.items() if k.startswith(t + "@")]
            out[t] = sum(vals) / len(vals) if vals else 0.0
    return out


def layered_part(terms: Sequence[str], theta: Mapping[str, float]) -> dict[str, float] | None:
    """The parameters of ``theta`` beyond the shared θ_r (slopes, per-layer values); None for a shared θ."""
    return {k: v for k, v in theta.items() if k not in terms} or None


def layered_hash(rule: Rule, theta: Mapping[str, float]) -> str:
    """The content hash of a rule whose θ may be layered: the rule's own hash (sha256 of its canonical string) for
    a shared θ; for a layered θ, sha256 of the canonical string and every parameter θ_{r,k} (sorted by id, 6
    significant digits), so two depth profiles with the same level and different slopes are two stored rules."""
    if layout_of(theta) == "shared":
        return rule.hash()
    params = ";".join(f"{k}={float(v):.6g}" for k, v in sorted(theta.items()))
    return hashlib.sha256(f"{rule.canonical()} | layered: {params}".encode()).hexdigest()


class LayeredRule(Rule):
    """A rule with layered coefficients: its expression (and ``coefficients``) is the shared projection
    (``shared_theta``); ``layered`` holds every parameter θ_{r,k}, which is what runs where it is scored
    (discovery.transfer.multitask.fixed_cell_trainer); its hash covers them (``layered_hash``). With a shared θ
    it is the plain rule."""

    def __init__(self, terms: Sequence[str], theta: Mapping[str, float], name: str | None = None) -> None:
        super().__init__(shared_theta(terms, theta), name=name)
        self.layered = dict(theta) if layered_part(terms, theta) else {}

    def hash(self) -> str:
        return layered_hash(self, self.layered)


def basis(mode: str, depth: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The depth basis b (L × K) of a coefficient layout."""
    if mode == "shared":
        return torch.ones(depth, 1, dtype=dtype)
    if mode == "profile":
        u = torch.linspace(-1.0, 1.0, depth, dtype=dtype) if depth > 1 else torch.zeros(1, dtype=dtype)
        return torch.stack([torch.ones(depth, dtype=dtype), u], 1)
    if mode == "per-layer":
        return torch.eye(depth, dtype=dtype)
    raise ValueError(f"unknown coefficient layout {mode!r}")


def param_ids(terms: Sequence[str], mode: str, depth: int) -> list[str]:
    """Names of the R·K parameters, term-major: 'F2' (shared / profile level), 'F2~slope', 'F2@1'…'F2@L'."""
    if mode == "shared":
        return list(terms)
    if mode == "profile":
        return [p for t in terms for p in (t, t + SLOPE)]
    return [f"{t}@{ell + 1}" for t in terms for ell in range(depth)]


def n_params(n_terms: int, mode: str, depth: int) -> int:
    """Free coefficients of a support of ``n_terms`` terms (the front's parameter count)."""
    return n_terms * {"shared": 1, "profile": 2}.get(mode, depth)


def layer_thetas(theta: Tensor, R: int, b: Tensor) -> Tensor:
    """θ per layer (L, R) from the flat parameters (R·K): Θ_ℓ = Σ_k φ_{r,k} b_k(ℓ)."""
    return (theta.view(R, -1) @ b.to(theta).T).T


def layered_online(rule: CompiledRule, thetas: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                   x_train: Tensor, y_train: Tensor, feedback: str, beta: float) -> list[Tensor]:
    """The online pass with layer ℓ's update Σ_r Θ_{ℓ,r} F^r_ℓ (the torch loop of discovery.feedforward.inner)."""
    Ws = list(Ws)
    targets = onehot(y_train, Ws[-1].shape[1], Ws[0].dtype)
    for s in range(x_train.shape[1]):
        ys = forward(Ws, x_train[:, s], beta)
        es = errors(ys, targets[:, s], Ws, Bs, feedback, beta)
        post = post_activities(ys)
        Ws = [rule.update(thetas[i], rule_env(i, ys, post, es, W)) for i, W in enumerate(Ws)]
    return Ws


def layered_online_forward(rule: CompiledRule, singles: Sequence[CompiledRule], thetas: Tensor, b: Tensor,
                           Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x_train: Tensor, y_train: Tensor,
                           feedback: str, beta: float) -> tuple[list[Tensor], list[Tensor]]:
    """The online pass with the R·K tangents ∂W/∂φ (rows term-major: (r, k))."""
    R, K = len(singles), b.shape[1]
    Ws = [W.clone() for W in Ws]
    Wd = [torch.zeros((R * K, *W.shape), dtype=W.dtype, device=W.device) for W in Ws]
    targets = onehot(y_train, Ws[-1].shape[1], Ws[0].dtype)
    one = torch.ones(1, dtype=Ws[0].dtype, device=Ws[0].device)
    bb = b.to(Ws[0])
    for s in range(x_train.shape[1]):
        ys, yd, p, pd = _tangent_forward(Ws, Wd, x_train[:, s], beta)
        es, ed = _tangent_errors(ys, yd, p, pd, targets[:, s], Ws, Wd, Bs, feedback, beta)
        post, post_d = [*ys[:-1], p], [*yd[:-1], pd]
        for i, (W, D) in enumerate(zip(Ws, Wd)):
            env = rule_env(i, ys, post, es, W)
            own = torch.stack([f.delta(one, env) for f in singles])            # F^r_ℓ at this state (R, B, n, m)
            tan = {"y": post_d[i + 1], "e": ed[i + 1], "e_pre": ed[i], "W": D}
            if yd[i] is not None:
                tan["x"] = yd[i]
            rule.step_forward_(thetas[i], env, tan, own=False)                  # chain part, and W ← W + ΔW
            D.view(R, K, *D.shape[1:]).add_(own.unsqueeze(1) * bb[i].view(1, K, 1, 1, 1))
    return Ws, Wd


class LayeredTrainer(MetaTrainer):
    """The meta-trainer with θ_{r,ℓ} = Σ_k φ_{r,k} b_k(ℓ) (see the module docstring); Adam on the R·K parameters
    (each with its term's step scale); the adjoint kernel with per-layer θ where it runs, else forward mode on the
    torch loop (`gradient_path`)."""

    def __init__(self, spec: DiscoverySpec, device: torch.device | None = None, stream: int = 0,
                 coefficients: str = "profile", theta_init: dict[str, float] | None = None):
        super().__init__(spec, device, stream)
        self.coefficients = coefficients
        R, L = len(self.term_ids), spec.network.depth
        self.basis = basis(coefficients, L, self.dtype)
        K = self.basis.shape[1]
        self.param_ids = param_ids(self.term_ids, coefficients, L)
        shared = self.theta.detach()
        init = torch.zeros(R, K, dtype=self.dtype, device=self.device)
        if coefficients == "per-layer":
            init[:] = shared.unsqueeze(1)
        else:
            init[:, 0] = shared
        flat = init.reshape(-1)
        for k, v in (theta_init or {}).items():
            flat[self.param_ids.index(k)] = float(v)
        self.scale = self.scale.repeat_interleave(K)
        self.phi = torch.nn.Parameter(flat / self.scale)
        self.opt = torch.optim.Adam([self.phi], lr=spec.meta.lr)
        # the C adjoint kernel with θ per layer: the meta-gradient (unless grad_mode 'forward') and held-out scoring
        self.layered_fused = self.use_fused and fused.reverse_available(
            self.rule, spec.network.feedback, self.device, self.dtype, layered=True)
        self.use_fused = False                    # the shared-θ fused kernels never run here
        self.singles = [CompiledRule([t]) for t in self.rule.terms]

    def layer_theta(self) -> Tensor:
        """θ per layer (L, R)."""
        return layer_thetas(self.theta.detach(), len(self.term_ids), self.basis)

    @cached_property
    def gradient_path(self) -> str:
        """'reverse-fused' (the adjoint kernel with per-layer θ) where it runs and grad_mode is 'auto' or 'reverse'
        (at any R: the parameters number R·K), else 'forward' (R·K tangents on the torch loop)."""
        if self.spec.meta.grad_mode == "forward" or not self.layered_fused:
            return "forward"
        return "reverse-fused"

    def _gradient_reverse_fused(self, ep, Ws, Bs) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """∂L/∂θ_{r,ℓ} from the adjoint kernel, then ∂L/∂φ_{r,k} = Σ_ℓ b_k(ℓ) ∂L/∂θ_{r,ℓ} (R·K, B)."""
        net = self.spec.network
        R, K = len(self.term_ids), self.basis.shape[1]
        with torch.no_grad():
            thetas = layer_thetas(self.theta.detach(), R, self.basis)
            Wf, g = fused.meta_gradient_reverse_fused_layered(self.rule, thetas, Ws, Bs, ep.x_train, ep.y_train,
                                                              ep.x_query, ep.y_query, net.feedback, net.beta)
            grad = torch.einsum("lk,lrb->rkb", self.basis.to(g), g).reshape(R * K, -1)
            loss, acc = query_loss_accuracy(Wf, ep.x_query, ep.y_query, net.beta)
        return loss, grad.to(self.device), acc, Wf

    def _online(self, theta: Tensor, Ws, Bs, ep, tangents: bool):
        net = self.spec.network
        thetas = layer_thetas(theta, len(self.term_ids), self.basis)
        if tangents:
            return layered_online_forward(self.rule, self.singles, thetas, self.basis, Ws, Bs, ep.x_train,
                                          ep.y_train, net.feedback, net.beta)
        if self.layered_fused:
            return fused.run_online_fused_layered(self.rule, thetas, Ws, Bs, ep.x_train, ep.y_train, net.feedback,
                                                  net.beta)
        return layered_online(self.rule, thetas, Ws, Bs, ep.x_train, ep.y_train, net.feedback, net.beta)

    @cached_property
    def l1_weights(self) -> Tensor:
        """w of λ Σ w|φ|: 0 for every parameter of a term in meta.l1_exempt."""
        exempt = set(self.spec.meta.l1_exempt)
        K = self.basis.shape[1]
        return torch.tensor([0.0 if t in exempt else 1.0 for t in self.term_ids for _ in range(K)],
                            dtype=self.dtype, device=self.device)

    def theta_dict(self) -> dict[str, float]:
        return {p: float(v) for p, v in zip(self.param_ids, self.theta.detach().cpu())}

    def shared_equivalent(self) -> dict[str, float]:
        """θ_r averaged over the layers (the rule written in the shared language of rules/, for display)."""
        mean = self.layer_theta().mean(0)
        return {t: float(v) for t, v in zip(self.term_ids, mean.cpu())}
