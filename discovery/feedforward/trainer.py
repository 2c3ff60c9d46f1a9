"""Meta-trainer: learn θ of ΔW_ℓ = Σ_r θ_r F^r_ℓ through the unrolled online inner loop (docs/science.md S3).

Meta-loss per meta-step: mean over the meta-batch of the query cross-entropy of the adapted network, plus
λ Σ_r |θ_r|. The exact meta-gradient is computed in forward mode (R tangents carried through the loop, O(1) memory
in the inner steps) or in reverse mode (the C adjoint kernel with checkpoints where the rule runs fused, else autograd
through the unrolled loop); meta.grad_mode 'auto' picks the faster for the rule's number of terms. Adam updates θ; an episode whose
loss or gradient is not finite is dropped and recorded, and a meta-step with none left is skipped, so the optimizer
state is never poisoned; after `backtrack_after` skipped steps in a row θ returns to its last finite value with
Adam's moments cleared and the learning rate halved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from discovery.analysis.diagnostics import alignment_angles, subspace_orthonormality_error
from discovery.analysis.stats import mean_halfwidth
from discovery.feedforward.checkpoint import Checkpointed
from discovery.feedforward.inner import (
    RuleLearner,
    onehot,
    query_accuracy,
    query_loss_accuracy,
    query_loss_forward,
    rule_step,
    run_online,
    run_online_forward,
)
from discovery.feedforward.kernels import fused
from discovery.feedforward.network import init_feedback, init_weights
from discovery.optim import BestTheta, apply_schedule, guard_cliff, restart_from
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.spec import DiscoverySpec
from rules.compiler import CompiledRule, compile_terms

CHECKPOINT_NAME = "checkpoint.pt"
#: meta.grad_mode 'auto': the C adjoint kernel from this many terms on, forward mode below (AMD EPYC, one thread,
#: 784-170-130-100-70-47, 250 inner steps: forward 0.079 s at R = 3, 0.112 s at R = 5, 0.225 s at R = 10; the adjoint
#: 0.10–0.12 s whatever R; rules of ≤ 5 terms keep forward mode's numbers; docs/results.md, "Issue 29, session 10")
REVERSE_MIN_TERMS = 6


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("the spec asks for device 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def build_rule(spec: DiscoverySpec) -> CompiledRule:
    """Compile the spec's term family F^r into the torch code of the inner loop."""
    from rules.terms import term

    ids = list(spec.rule.terms or [])
    return compile_terms([term(t).expr for t in ids], [term(t).id for t in ids])


class MetaTrainer(Checkpointed):
    """Holds θ, Adam, samplers and generators; `step()` performs one meta-step on a meta-batch of episodes."""

    checkpoint_name = CHECKPOINT_NAME

    def __init__(self, spec: DiscoverySpec, device: torch.device | None = None, stream: int = 0):
        """``stream`` > 0 draws another meta-train episode stream from the same seed (the stages of a search see
        fresh episodes); held-out episodes depend on the seed alone, so every stage is scored on the same ones."""
        from discovery.data import EpisodeSampler
        from discovery.data.uploads import load_task_data

        self.spec = spec
        self.device = device or resolve_device(spec.resources.device)
        self.dtype = torch.float64 if spec.meta.dtype == "float64" else torch.float32
        task, net = spec.task, spec.network
        extra = {}
        if task.dataset == "synthetic":  # enough images per class for both splits of K + Q
            need = task.shots + task.queries
            extra = {"dim": net.widths[0], "per_class": max(100, math.ceil(need / min(task.heldout_fraction,
                                                                                        1 - task.heldout_fraction)) + 2)}
        self.dataset = load_task_data(task, **extra)   # built-in by name, or an upload by checksum
        d = self.dataset.images.shape[1]
        if net.widths[0] != d:
            raise ValueError(f"network input width {net.widths[0]} does not match the data set's {d} features "
                             f"({task.dataset}{' upsampled' if task.upsample else ''})")
        if not task.remap_labels and net.widths[-1] < self.dataset.n_classes:
            raise ValueError(f"output width {net.widths[-1]} < {self.dataset.n_classes} classes (remap_labels off)")
        common = {"heldout_fraction": task.heldout_fraction, "remap_labels": task.remap_labels}
        seed = spec.meta.seed
        stream_seed = seed + 7_919 * stream
        self.train_sampler = EpisodeSampler(self.dataset, task.ways, task.shots, task.queries, split="train",
                                            seed=stream_seed, **common)
        self._sampler_args = (EpisodeSampler, task, common, seed)
        self._heldout = None
        self.gen = torch.Generator().manual_seed(stream_seed)
        self.rule = build_rule(spec)
        self.term_ids = list(spec.rule.terms or [])
        init = spec.rule.initial_theta()
        theta0 = torch.tensor([init[t] for t in self.term_ids], dtype=self.dtype, device=self.device)
        self.scale = torch.ones_like(theta0)
        self.norms: Tensor | None = None      # ‖F_r‖ on fresh networks, measured when term_scale is 'norm'
        if spec.meta.term_scale == "norm":
            self.norms = term_norms(self)
            self.scale = scales_from_norms(self.norms, self.rule.names).to(theta0)
        self.phi = torch.nn.Parameter(theta0 / self.scale)          # Adam runs on φ; θ = s ⊙ φ
        self.opt = torch.optim.Adam([self.phi], lr=spec.meta.lr)
        self.use_fused = self._choose_kernel()
        self.episode = 0
        self.history: list[dict] = []
        self.diverged = 0
        self.skipped = 0
        self.run_of_skips = 0
        self.last_good_theta: Tensor | None = None
        self.best = BestTheta(spec.meta)

    @property
    def theta(self) -> Tensor:
        """θ = s ⊙ φ (differentiable in φ; s = 1 unless meta.term_scale is 'norm')."""
        return self.scale * self.phi

    @property
    def heldout_sampler(self):
        """Held-out images (and classes, for many-class sets), built on first use."""
        if self._heldout is None:
            cls, task, common, seed = self._sampler_args
            self._heldout = cls(self.dataset, task.ways, task.shots, task.queries, split="heldout",
                                seed=seed + 1_000_003, **common)
        return self._heldout

    # ------------------------------------------------------------------ one meta-step
    def _weights(self, batch: int, gen: torch.Generator | None = None) -> tuple[list[Tensor], list[Tensor] | None]:
        """Fresh W (Xavier × init_scale) and B for every episode: no meta-learned initialization."""
        net, gen = self.spec.network, gen or self.gen
        Ws = init_weights(net.widths, batch, gen, net.init_scale, self.device, self.dtype)
        Bs = init_feedback(net.widths, net.feedback, batch, gen, self.device, self.dtype)
        return Ws, Bs

    def _choose_kernel(self) -> bool:
        """Whether the inner loop runs in the fused CPU kernel (discovery.feedforward.kernels.fused) or as batched torch ops."""
        kind, net = self.spec.meta.kernel, self.spec.network
        ok = fused.fusable(self.rule, net.feedback, self.device, self.dtype)
        if kind == "fused" and not ok:
            raise ValueError("meta.kernel 'fused' needs the CPU device, fa, dfa or bp feedback, numba, and terms whose "
                             "atoms are u vᵀ with u in {y, e, 1} and v in {x, e_pre, 1, Wᵀy, Wᵀe, Wᵀ1} (plus decay); "
                             "use kernel 'auto' or 'torch'")
        return ok and kind != "torch"

    def _online(self, theta: Tensor, Ws, Bs, ep, tangents: bool):
        """The inner loop on the chosen kernel: adapted W (and Ẇ = ∂W/∂θ when tangents)."""
        net = self.spec.network
        args = (self.rule, theta, Ws, Bs, ep.x_train, ep.y_train, net.feedback, net.beta)
        if tangents:
            return (fused.run_online_forward_fused if self.use_fused else run_online_forward)(*args)
        if self.use_fused:
            return fused.run_online_fused(*args)
        return run_online(RuleLearner(self.rule, theta, net.feedback, net.beta), Ws, Bs, ep.x_train, ep.y_train)

    def _gradient_forward(self, ep, Ws, Bs) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        net = self.spec.network
        with torch.no_grad():
            theta = self.theta.detach()
            Wf, Wd = self._online(theta, Ws, Bs, ep, tangents=True)
            loss, grad, acc = query_loss_forward(Wf, Wd, ep.x_query, ep.y_query, net.beta)
        return loss, grad, acc, Wf

    def _gradient_reverse(self, ep, Ws, Bs) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        net = self.spec.network
        theta = self.theta
        targets = onehot(ep.y_train, net.widths[-1], self.dtype)
        Wt = list(Ws)
        for s in range(ep.x_train.shape[1]):
            Wt = rule_step(self.rule, theta, Wt, Bs, ep.x_train[:, s], targets[:, s], net.feedback, net.beta)
        loss, acc = query_loss_accuracy(Wt, ep.x_query, ep.y_query, net.beta)
        grads = []
        for b in range(loss.shape[0]):
            (g,) = torch.autograd.grad(loss[b], theta, retain_graph=b < loss.shape[0] - 1)
            grads.append(g)
        grad = torch.stack(grads, dim=1)
        return loss.detach(), grad.detach(), acc.detach(), [w.detach() for w in Wt]

    def _gradient_reverse_fused(self, ep, Ws, Bs) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Reverse mode in the C adjoint kernel (discovery.feedforward.kernels.adjoint_kernel.c, docs/kernels.md):
        the cost of one episode does not grow with R."""
        net = self.spec.network
        with torch.no_grad():
            Wf, grad = fused.meta_gradient_reverse_fused(self.rule, self.theta.detach(), Ws, Bs, ep.x_train,
                                                         ep.y_train, ep.x_query, ep.y_query, net.feedback, net.beta)
            loss, acc = query_loss_accuracy(Wf, ep.x_query, ep.y_query, net.beta)
        return loss, grad.to(self.device), acc, Wf

    @cached_property
    def gradient_path(self) -> str:
        """Which meta-gradient runs: 'forward' (R tangents, fused or torch), 'reverse-fused' (the C adjoint kernel)
        or 'reverse-torch' (autograd through the unrolled torch loop). meta.grad_mode 'auto' takes the adjoint
        kernel when the rule runs fused with a C compiler and has at least REVERSE_MIN_TERMS terms (the measured
        crossover, docs/results.md), else forward mode; 'reverse' takes the adjoint kernel wherever it can run."""
        mode = self.spec.meta.grad_mode
        if mode == "forward":
            return "forward"
        adjoint = self.use_fused and fused.reverse_available(self.rule, self.spec.network.feedback, self.device,
                                                             self.dtype)
        if mode == "reverse":
            return "reverse-fused" if adjoint else "reverse-torch"
        return "reverse-fused" if adjoint and len(self.rule) >= REVERSE_MIN_TERMS else "forward"

    def meta_gradient(self, ep, Ws, Bs) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Per-episode query loss (B,), ∂loss/∂θ (R, B), accuracy (B,), adapted weights."""
        path = self.gradient_path
        if path == "reverse-fused":
            return self._gradient_reverse_fused(ep, Ws, Bs)
        if path == "reverse-torch":
            return self._gradient_reverse(ep, Ws, Bs)
        return self._gradient_forward(ep, Ws, Bs)

    def step(self) -> ProgressEvent:
        """Sample a meta-batch, compute the exact meta-gradient, drop non-finite episodes, Adam-step θ."""
        meta = self.spec.meta
        phi_before = self.phi.detach().clone()                 # the φ this step's episodes ran with
        ep = self.train_sampler.sample(meta.meta_batch, device=self.device, dtype=self.dtype)
        Ws, Bs = self._weights(meta.meta_batch)
        loss, grad, acc, Wf = self.meta_gradient(ep, Ws, Bs)
        finite = torch.isfinite(loss) & torch.isfinite(grad).all(0)
        finite &= torch.stack([torch.isfinite(w).flatten(1).all(1) for w in Wf]).all(0)
        finite &= torch.stack([w.abs().flatten(1).amax(1) < meta.max_update_norm for w in Wf]).all(0)
        n_bad = int((~finite).sum())
        self.diverged += n_bad
        skipped = not bool(finite.any())
        alignment, e1 = [], []
        backtracked = False
        if skipped:
            self.skipped += 1
            self.run_of_skips += 1
            backtracked = self._maybe_backtrack()
        else:
            self.run_of_skips = 0
            self.last_good_theta = self.theta.detach().clone()
            g = grad[:, finite].mean(1)
            if meta.l1_mode == "subgradient":
                g = g + meta.l1 * self.l1_weights * torch.sign(self.theta.detach())  # ∂(CE + λ Σ w|θ|)/∂θ
            self.opt.zero_grad(set_to_none=True)
            self.phi.grad = (g * self.scale).to(self.phi.dtype)                      # chain rule: ∂/∂φ = s ⊙ ∂/∂θ
            apply_schedule(self.opt, self.spec.meta, self.episode)
            self.opt.step()
            if meta.l1_mode == "proximal" and meta.l1 > 0:
                self._prox_l1(meta.l1)
            idx = finite.nonzero()[0, 0].item()
            alignment, e1 = self._diagnostics(ep, Wf, Bs, idx)
        self.episode += 1
        event = ProgressEvent(
            episode=self.episode, total=meta.episodes,
            meta_loss=None if skipped else float(loss[finite].mean() + meta.l1 * (self.l1_weights * self.theta.detach().abs()).sum()),
            meta_accuracy=None if skipped else float(acc[finite].mean()),
            theta=self.theta_dict(), alignment_deg=alignment, subspace_orth_error=e1, skipped=skipped, dropped_episodes=n_bad,
            backtracked=backtracked, lr=self.opt.param_groups[0]["lr"])
        event = guard_cliff(self.best, self.opt, self.phi, event, phi_before, self.theta_dict)
        self.history.append(event.model_dump())
        return event

    def finish(self) -> None:
        """meta.keep 'best': φ ← the φ of the lowest meta-train loss average (discovery.optim.BestTheta)."""
        self.best.restore(self.phi)

    @cached_property
    def l1_weights(self) -> Tensor:
        """w_r of the penalty λ Σ_r w_r |θ_r|: 0 for the terms in meta.l1_exempt, else 1 (fixed by the spec)."""
        exempt = set(self.spec.meta.l1_exempt)
        return torch.tensor([0.0 if t in exempt else 1.0 for t in self.term_ids], dtype=self.dtype,
                            device=self.device)

    def _prox_l1(self, lam: float) -> None:
        """Proximal step of λ‖φ‖₁ after Adam's step: φ_r ← sign(φ_r) max(|φ_r| − λ η_r, 0) with Adam's per-coordinate
        step η_r = lr / (√v̂_r + ε). φ = θ / s is θ in units of effect (θ_r ‖F_r‖ ∝ φ_r for s_r < 1), so terms of
        different magnitude are penalized alike; a coefficient whose mean gradient stays below λ becomes exactly 0."""
        state = self.opt.state.get(self.phi)
        if not state:
            return
        group = self.opt.param_groups[0]
        beta2, eps = group["betas"][1], group["eps"]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** step)
        eta = group["lr"] / (v_hat.sqrt() + eps)
        eta = eta * self.l1_weights.to(eta.dtype)
        with torch.no_grad():
            self.phi.copy_(torch.sign(self.phi) * torch.clamp(self.phi.abs() - lam * eta, min=0.0))

    def _maybe_backtrack(self) -> bool:
        """After `backtrack_after` skipped steps in a row, θ ← the last θ with finite episodes, Adam's moments
        cleared and lr ← lr/2: a run whose θ entered a region where every episode diverges would otherwise stay
        there (no finite gradient ever moves it out)."""
        n = self.spec.meta.backtrack_after
        if n == 0 or self.run_of_skips < n or self.last_good_theta is None:
            return False
        restart_from(self.opt, self.phi, self.last_good_theta / self.scale)
        self.run_of_skips = 0
        return True

    def _diagnostics(self, ep, Wf, Bs, idx: int) -> tuple[list[float], list[float]]:
        """Alignment angles α_ℓ (FA vs BP teaching signal) and E1_ℓ of one adapted episode, on its queries."""
        net = self.spec.network
        W1 = [w[idx:idx + 1] for w in Wf]
        B1 = None if Bs is None else [b[idx:idx + 1] for b in Bs]
        xq = ep.x_query[idx]
        tq = onehot(ep.y_query[idx], net.widths[-1], self.dtype)
        with torch.no_grad():
            ang = alignment_angles(W1, B1, xq, tq, net.feedback, net.beta)
            e1 = subspace_orthonormality_error(W1, xq, net.beta)
        return ang, e1

    def theta_dict(self) -> dict[str, float]:
        return {t: float(v) for t, v in zip(self.term_ids, self.theta.detach().cpu())}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: int, batch: int = 25) -> tuple[float | None, float | None, int]:
        """Held-out accuracy of the rule with the current θ: mean ± 95% t-interval half-width over `episodes` held-out
        episodes (discovery.analysis.stats)."""
        if episodes <= 0:
            return None, None, 0
        values = self.heldout_values(episodes, batch)
        mean, ci = mean_halfwidth(values)
        return mean, ci, values.numel()

    def heldout_values(self, episodes: int, batch: int = 25) -> Tensor:
        """Per-episode held-out query accuracy (float64, `episodes` values; a diverged episode counts 0). The
        episodes and the fresh W, B depend on the seed alone: rules scored with one seed are paired."""
        net = self.spec.network
        eval_gen = torch.Generator().manual_seed(self.spec.meta.seed + 7_777)
        self.heldout_sampler.reseed(self.spec.meta.seed + 1_000_003)
        accs = []
        with torch.no_grad():
            done = 0
            while done < episodes:
                b = min(batch, episodes - done)
                ep = self.heldout_sampler.sample(b, device=self.device, dtype=self.dtype)
                Ws, Bs = self._weights(b, eval_gen)
                Wf = self._online(self.theta.detach(), Ws, Bs, ep, tangents=False)
                accs.append(query_accuracy(Wf, ep.x_query, ep.y_query, net.beta).cpu())
                done += b
        values = torch.cat(accs).double()
        return torch.nan_to_num(values, nan=0.0)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "episode": self.episode, "theta": self.theta.detach().cpu(), "scale": self.scale.cpu(),
            "phi": self.phi.detach().cpu().clone(),   # φ itself: (s ⊙ φ) / s may differ from φ in the last bit
            "opt": self.opt.state_dict(),
            "history": self.history, "diverged": self.diverged, "skipped": self.skipped,
            "run_of_skips": self.run_of_skips, "last_good_theta": self.last_good_theta, "best": self.best.state_dict(),
            "gen": self.gen.get_state(), "train_sampler": self.train_sampler.get_state(),
            "spec": self.spec.model_dump(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.episode = state["episode"]
        with torch.no_grad():
            self.scale = state.get("scale", torch.ones_like(state["theta"])).to(self.phi)
            if "phi" in state:
                self.phi.copy_(state["phi"].to(self.phi))
            else:
                self.phi.copy_(state["theta"].to(self.phi) / self.scale)
        self.opt.load_state_dict(state["opt"])
        self.history = list(state["history"])
        self.diverged, self.skipped = state["diverged"], state["skipped"]
        self.run_of_skips = state.get("run_of_skips", 0)
        self.last_good_theta = state.get("last_good_theta")
        self.best.load_state_dict(state.get("best"))
        self.gen.set_state(state["gen"])
        self.train_sampler.set_state(state["train_sampler"])


def scales_from_norms(norms: Tensor, names: list[str]) -> Tensor:
    """s_r = min(1, ‖F_ref‖/‖F_r‖) from the norms of :func:`term_norms`; F_ref = pseudo_grad (F0) when it is in the
    pool, else the median term."""
    ids = list(names)
    ref = norms[ids.index("F0")] if "F0" in ids else norms.median()
    return torch.clamp(ref / norms.clamp_min(1e-30), max=1.0)


def term_norms(trainer: MetaTrainer, episodes: int = 8, samples: int = 10) -> Tensor:
    """‖F_r‖: RMS Frobenius norm of each term summed over layers, on `samples` online samples of fresh networks
    (own generator and sampler, so the run's random streams are untouched)."""
    from discovery.feedforward.inner import rule_env
    from discovery.feedforward.network import errors, forward, post_activities

    net = trainer.spec.network
    cls, task, common, seed = trainer._sampler_args
    sampler = cls(trainer.dataset, task.ways, task.shots, task.queries, split="train", seed=seed + 424_242, **common)
    ep = sampler.sample(episodes, device=trainer.device, dtype=trainer.dtype)
    Ws, Bs = trainer._weights(episodes, torch.Generator().manual_seed(seed + 424_243))
    targets = onehot(ep.y_train, net.widths[-1], trainer.dtype)
    ones = torch.ones(1, dtype=trainer.dtype, device=trainer.device)
    singles = [CompiledRule([t]) for t in trainer.rule.terms]
    sq = torch.zeros(len(singles), dtype=torch.float64)
    steps = torch.linspace(0, ep.x_train.shape[1] - 1, samples).long().tolist()
    with torch.no_grad():
        for s in steps:
            ys = forward(Ws, ep.x_train[:, s], net.beta)
            es = errors(ys, targets[:, s], Ws, Bs, net.feedback, net.beta)
            post = post_activities(ys)
            for r, single in enumerate(singles):
                for i, W in enumerate(Ws):
                    sq[r] += float(single.delta(ones, rule_env(i, ys, post, es, W)).pow(2).sum()) / episodes
    return (sq / len(steps)).sqrt()


def learned_rule(term_ids: list[str], theta: dict[str, float], prune_rel: float = 1e-3):
    """The discovered rule Σ θ_r F_r with coefficients below prune_rel · max|θ| dropped."""
    from rules.rule import Rule

    return Rule({t: theta[t] for t in term_ids}).pruned(prune_rel * max([abs(v) for v in theta.values()] + [1e-12]))


def discover_feedforward(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                         checkpoint_dir: Path | str | None = None,
                         should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Meta-train θ of a fixed feedforward term family for `spec`, evaluate on held-out episodes, return the rule
    and its history (``discovery.discover`` routes a spec here when it is not an open search or recurrent)."""
    t0 = time.perf_counter()
    trainer = MetaTrainer(spec)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stopped = trainer.run(progress, folder, should_stop)
    acc, ci, n = (None, None, 0) if stopped else trainer.evaluate(spec.meta.eval_episodes)
    theta = trainer.theta_dict()
    rule = learned_rule(trainer.term_ids, theta)
    rule_dict = rule.to_dict()
    rule_dict["coefficients_raw"] = theta
    return DiscoveryResult(
        rule=rule_dict, theta=theta, history=trainer.history,
        theta_history=[h["theta"] for h in trainer.history], heldout_accuracy=acc, heldout_ci95=ci,
        heldout_episodes=n, diverged_episodes=trainer.diverged, skipped_steps=trainer.skipped, stopped=stopped,
        resumed_from_episode=trainer.resumed_from, wall_time_s=time.perf_counter() - t0, device=str(trainer.device),
        spec=spec.model_dump())
