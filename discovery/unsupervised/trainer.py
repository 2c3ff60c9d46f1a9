"""Online inner loop and meta-training of the unsupervised family.

Inner loop (one episode): W₀ ∈ ℝ^{k×d} Gaussian with rows of norm ≈ ``init_norm``; for t = 1..T one training
sample x_t (a random order of the training split), y_t = W x_t, W ← W + Σ_r θ_r F_r(x_t, y_t, W).
Meta-objective, per episode, averaged over the checkpoints t_j = T(1 − j/2C), j < C (C = 1: the end only):
``reconstruction`` log(‖X − X WᵀW‖² / ‖X‖²) on the training split (log: a diverging episode stays finite and
does not swamp the batch; the minimizer is the same), ``subspace`` 1 − tr(P_W U Uᵀ)/k with U the training split's
top-k principal subspace. Meta-loss = mean over a batch of episodes + λ Σ_r |φ_r|; θ_r = s_r φ_r with s_r = ‖W_ref‖ /
E‖F_r(W_ref, x)‖ (W_ref random orthonormal rows: φ_r = 1 moves W by its own norm per step); the gradient ∂/∂φ is
exact reverse-mode autograd through the T steps; Adam on φ inside a relative trust region (|Δφ_r| ≤ max(10⁻⁴,
0.2·max|φ|)) with a cosine learning-rate decay to lr/10.
An episode whose ‖W‖_F exceeds ``max_norm`` (or is not finite) is frozen from that step on and counted as diverged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from discovery.analysis.stats import mean_halfwidth
from discovery.unsupervised.data import PCAData
from discovery.unsupervised.metrics import reconstruction_error, subspace_error, subspace_error_smooth
from discovery.unsupervised.terms import TermEvaluator

Objective = Literal["reconstruction", "subspace"]
STEP_MIN = 1e-4      # trust region of a meta-step in φ: |Δφ_r| ≤ max(STEP_MIN, STEP_REL · max|φ|)
STEP_REL = 0.2
COLLAPSE = 1e-2      # ‖W_T‖_F below this × init_norm: the episode collapsed to W = 0 (every y-gradient vanishes)


@dataclass(frozen=True)
class InnerConfig:
    """The inner loop and its meta-objective."""

    k: int = 4
    unroll: int = 1000                 # T online steps per meta-training episode
    init_norm: float = 0.3             # row norm of W₀
    objective: Objective = "reconstruction"
    checkpoints: int = 1               # C checkpoints averaged in the meta-objective
    max_norm: float = 1e4              # ‖W‖_F above this: the episode is frozen (diverged)

    def checkpoint_steps(self) -> list[int]:
        """t_j = T(1 − j/2C), j = 0..C−1, ascending."""
        c = max(1, self.checkpoints)
        return sorted({max(1, round(self.unroll * (1 - j / (2 * c)))) for j in range(c)})


@dataclass
class FitResult:
    """θ of a support after meta-training, with its per-step history."""

    terms: list[str]
    theta: dict[str, float]
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    dropped_episodes: int = 0
    skipped_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Held-out scores of a rule over ``episodes`` episodes (fresh W₀ and sample orders, a fixed seed).

    ``recon``/``subspace`` at the meta-training horizon T; ``recon_passes``/``subspace_passes`` after each of the
    ``passes`` full online passes over the training split (mean over episodes); ``*_ci95`` the 95 % t half-widths."""

    episodes: int
    recon: float
    recon_ci95: float
    subspace: float
    subspace_ci95: float
    recon_per_episode: list[float]
    subspace_per_episode: list[float]
    recon_passes: list[float]
    subspace_passes: list[float]
    subspace_passes_ci95: list[float]
    diverged: int
    ww_eigenvalues: list[float]        # mean eigenvalues of W Wᵀ after the last pass (Oja: a/b)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Stop(Exception):
    """Raised inside an L-BFGS closure when the job is asked to stop."""


class UnsupervisedTrainer:
    """Meta-trains θ over a pool of unsupervised terms (see the module docstring)."""

    def __init__(self, data: PCAData, pool: Sequence[str], cfg: InnerConfig, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        self.data, self.cfg, self.dtype = data, cfg, dtype
        self.pool = list(pool)
        self.index = {t: i for i, t in enumerate(self.pool)}
        self.evaluator = TermEvaluator(self.pool, dtype)
        self.X = data.train.to(dtype)
        self.U = data.top_subspace(cfg.k, full=False).to(dtype)
        self.U_full = data.top_subspace(cfg.k, full=True).to(dtype)
        self.gen = torch.Generator().manual_seed(seed)
        self._evaluators: dict[tuple[int, ...], TermEvaluator] = {}
        self._last_collapsed = torch.zeros(0, dtype=torch.bool)
        self.scale = self._term_scale()

    # ------------------------------------------------------------------ units
    def _term_scale(self) -> Tensor:
        """s_r = ‖W_ref‖_F / E_x ‖F_r(W_ref, x)‖_F (W_ref: random orthonormal rows, fixed seed)."""
        g = torch.Generator().manual_seed(1234)
        q, _ = torch.linalg.qr(torch.randn(self.data.dim, self.cfg.k, generator=g, dtype=self.dtype))
        w_ref = q.T.contiguous()
        norms = self.evaluator.term_norms(w_ref, self.X[:512])
        return (w_ref.norm() / norms.clamp_min(1e-12)).to(self.dtype)

    @torch.no_grad()
    def state_scale(self, theta: dict[str, float], episodes: int = 8) -> Tensor:
        """s_r re-measured where the rule θ actually takes W: ‖W_T‖ / E‖F_r(W_T, x)‖ averaged over the sound end
        states W_T of ``episodes`` seeded episodes (the current units when none is sound). Used at the start of
        each fit, so φ = 1 means 'moves W by its own norm per step' in the states that matter."""
        gen = torch.Generator().manual_seed(30_000)
        W0, idx = self.sample_episodes(episodes, gen)
        Ws, alive = self.run(self.theta_vector(theta).expand(episodes, -1), W0, idx, [self.cfg.unroll])
        W = Ws[-1]
        sound = alive & (W.flatten(1).norm(dim=1) > COLLAPSE * self.cfg.init_norm)
        if not bool(sound.any()):
            return self.scale
        X = self.X[:256]
        scales = [W[b].norm() / self.evaluator.term_norms(W[b], X).clamp_min(1e-12)
                  for b in torch.nonzero(sound).flatten().tolist()]
        return torch.stack(scales).mean(0).to(self.dtype)

    def theta_vector(self, theta: dict[str, float]) -> Tensor:
        """(R,) θ over the pool from a dict (missing terms 0)."""
        out = torch.zeros(len(self.pool), dtype=self.dtype)
        for t, v in theta.items():
            out[self.index[t]] = float(v)
        return out

    # ------------------------------------------------------------------ inner loop
    def sample_episodes(self, n: int, gen: torch.Generator | None = None, steps: int | None = None
                        ) -> tuple[Tensor, Tensor]:
        """(W₀ (n, k, d), sample indices (steps, n)): Gaussian W₀ with rows of norm ≈ init_norm, and per
        episode consecutive random permutations of the training split (online passes)."""
        gen = gen or self.gen
        steps = steps or self.cfg.unroll
        d, N = self.data.dim, self.X.shape[0]
        W0 = torch.randn(n, self.cfg.k, d, generator=gen, dtype=self.dtype) * (self.cfg.init_norm / math.sqrt(d))
        reps = -(-steps // N)
        idx = torch.stack([torch.cat([torch.randperm(N, generator=gen) for _ in range(reps)])[:steps]
                           for _ in range(n)], 1)
        return W0, idx

    def run(self, theta: Tensor, W0: Tensor, idx: Tensor, keep: Sequence[int],
            columns: Sequence[int] | None = None) -> tuple[list[Tensor], Tensor]:
        """Run the inner loop for len(idx) steps with θ (B, R) over the pool terms ``columns`` (default: the
        columns of θ not identically 0); returns W at the steps in ``keep`` (1-based) and the alive mask (B,)
        (False: diverged and frozen)."""
        W, alive = W0, torch.ones(W0.shape[0], dtype=torch.bool)
        wanted, kept = set(keep), []
        xs = self.X[idx]                                                      # (steps, B, d)
        if columns is None:
            columns = [int(i) for i in torch.nonzero(theta.detach().ne(0).any(0)).flatten()]
        evaluator = self._evaluator_for(tuple(columns))
        theta = theta[:, list(columns)]
        for t in range(idx.shape[0]):
            dW, _ = evaluator.delta(theta, W, xs[t])
            W_new = W + dW
            with torch.no_grad():     # NaN and ∞ fail the comparison too
                alive = alive & (W_new.flatten(1).norm(dim=1) < self.cfg.max_norm)
            W = torch.where(alive[:, None, None], W_new, W)
            if t + 1 in wanted:
                kept.append(W)
        return kept, alive

    def _evaluator_for(self, cols: tuple[int, ...]) -> TermEvaluator:
        """The evaluator of the pool's terms ``cols`` (cached per support)."""
        if cols not in self._evaluators:
            self._evaluators[cols] = TermEvaluator([self.pool[i] for i in cols], self.dtype)
        return self._evaluators[cols]

    def objective(self, Ws: list[Tensor]) -> Tensor:
        """Per-episode meta-objective (B,), averaged over the kept checkpoints."""
        if self.cfg.objective == "subspace":
            vals = [subspace_error_smooth(W, self.U) for W in Ws]
        else:
            vals = [torch.log(reconstruction_error(W, self.X).clamp_min(1e-12)) for W in Ws]
        return torch.stack(vals).mean(0)

    def episode_losses(self, phi: Tensor, n: int, columns: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """(per-episode objective (n,), alive (n,)) for φ (R,) or (n, R) on n fresh training episodes, the terms
        ``columns`` of the pool active (default all)."""
        W0, idx = self.sample_episodes(n)
        theta = (phi * self.scale).expand(n, -1) if phi.dim() == 1 else phi * self.scale
        columns = list(range(len(self.pool))) if columns is None else columns
        Ws, alive = self.run(theta, W0, idx, self.cfg.checkpoint_steps(), columns)
        self._last_collapsed = Ws[-1].detach().flatten(1).norm(dim=1) < COLLAPSE * self.cfg.init_norm
        return self.objective(Ws), alive

    # ------------------------------------------------------------------ meta-gradient
    def per_episode_gradient(self, theta: dict[str, float], n: int) -> tuple[Tensor, Tensor]:
        """(per-episode objective (n,), per-episode gradient ∂L_b/∂φ_r (n, R)) at θ over n fresh episodes; the
        score test of the forward search reads candidates at θ_r = 0 from it."""
        phi = (self.theta_vector(theta) / self.scale).expand(n, -1).clone().requires_grad_(True)
        losses, _ = self.episode_losses(phi, n)
        (grad,) = torch.autograd.grad(losses.sum(), phi)
        return losses.detach(), grad

    def fit(self, terms: Sequence[str], theta: dict[str, float], steps: int, *, batch: int = 8, lr: float = 3e-3,
            l1: float = 0.0, label: str = "fit", on_step: Callable[[dict[str, Any]], None] | None = None,
            should_stop: Callable[[], bool] | None = None, rescale: bool = True) -> FitResult:
        """Meta-train φ of ``terms`` (the others stay 0) for ``steps`` meta-steps of ``batch`` fresh episodes, warm
        started at ``theta``, with Adam and a relative trust region: each step of φ_r is clipped to
        max(STEP_MIN, STEP_REL · max_r |φ_r|), so θ grows geometrically from 0 and never jumps to a rule that
        overshoots (plain Hebb: W explodes) or shrinks W to 0 in one step (where every Hebbian gradient vanishes:
        an absorbing state). Cosine decay of the learning rate to lr/10. A step whose gradient is not finite or whose
        batch has more than half of its episodes diverged or collapsed (‖W_T‖ < 10⁻² · init_norm) is undone: φ goes
        back to the last sound value, the step size is halved and Adam's moments are reset (a skipped step)."""
        terms = list(terms)
        sel = torch.tensor([self.index[t] for t in terms], dtype=torch.long)
        start = self.theta_vector(theta)
        if rescale and any(abs(v) > 0 for v in theta.values()):
            self.scale = self.state_scale(theta)
        phi = (start[sel] / self.scale[sel]).clone().requires_grad_(True)
        b1, b2, eps = 0.9, 0.999, 1e-16
        m, v, n_ok, gain = torch.zeros_like(phi), torch.zeros_like(phi), 0, 1.0
        good = phi.detach().clone()
        result = FitResult(terms=terms, theta={t: float(start[self.index[t]]) for t in terms}, steps=0)
        for step in range(steps):
            if should_stop is not None and should_stop():
                break
            lr_t = gain * lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
            full = torch.zeros(len(self.pool), dtype=self.dtype).index_put((sel,), phi)
            losses, alive = self.episode_losses(full, batch, sel.tolist())
            loss = losses.mean() + l1 * phi.abs().sum()
            (grad,) = torch.autograd.grad(loss, phi)
            degenerate = int((~alive).sum()) + int(self._last_collapsed.sum())
            skipped = not bool(torch.isfinite(grad).all()) or (degenerate > batch // 2 and step > 0)
            if skipped:      # back to the last θ whose episodes were mostly sound, half the step, fresh moments
                result.skipped_steps += 1
                gain *= 0.5
                n_ok = 0
                with torch.no_grad():
                    phi.copy_(good)
                    m.zero_()
                    v.zero_()
            else:
                n_ok += 1
                with torch.no_grad():
                    good.copy_(phi)
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).add_(grad ** 2, alpha=1 - b2)
                    delta = lr_t * (m / (1 - b1 ** n_ok)) / ((v / (1 - b2 ** n_ok)).sqrt() + eps)
                    cap = max(STEP_MIN, STEP_REL * float(phi.abs().max()))
                    phi -= delta.clamp(-cap, cap)
            dropped = int((~alive).sum())
            result.dropped_episodes += dropped
            result.steps = step + 1
            th = (phi.detach() * self.scale[sel]).tolist()
            result.theta = dict(zip(terms, th, strict=True))
            event = {"step": step + 1, "steps": steps, "meta_loss": float(losses.detach().mean()),
                     "theta": dict(result.theta), "lr": lr_t, "dropped_episodes": dropped,
                     "skipped": skipped, "phase": label}
            result.history.append(event)
            if on_step is not None:
                on_step(event)
        return result

    def common_episodes(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """(W₀, sample order) of n seeded training episodes: the same for every θ (common random numbers)."""
        return self.sample_episodes(n, torch.Generator().manual_seed(seed))

    def fit_lbfgs(self, terms: Sequence[str], theta: dict[str, float], iters: int, *, episodes: int = 8,
                  seed: int = 0, label: str = "fit", on_step: Callable[[dict[str, Any]], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> FitResult:
        """Meta-train θ of ``terms`` (the others 0) by L-BFGS with a strong-Wolfe line search on a sample-average
        approximation: the mean meta-objective over ``episodes`` fixed episodes (W₀ and sample orders drawn from
        ``seed``), so the meta-loss is a smooth deterministic function of θ. With 1–3 coefficients this converges
        in tens of function evaluations, and the line search backs off from the explosive side (plain Hebb) by
        itself. φ = θ T / s (s: the term units of ``scale``; φ = 1 moves W by its own norm over the unroll); warm start at ``theta``. ``on_step`` gets one event per
        function evaluation (each costs ``episodes`` episodes)."""
        terms = list(terms)
        sel = [self.index[t] for t in terms]
        start = self.theta_vector(theta)
        scale = self.scale[sel] / self.cfg.unroll        # φ = 1: moves W by its own norm over the whole unroll
        phi = (start[sel] / scale).clone().requires_grad_(True)
        W0, idx = self.common_episodes(episodes, seed)
        keep = self.cfg.checkpoint_steps()
        result = FitResult(terms=terms, theta={t: float(start[self.index[t]]) for t in terms}, steps=0)
        best: list[Any] = [math.inf, phi.detach().clone()]
        opt = torch.optim.LBFGS([phi], lr=1.0, max_iter=iters, max_eval=iters, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12)

        def closure() -> Tensor:
            opt.zero_grad()
            if should_stop is not None and should_stop():
                raise _Stop
            th = (phi * scale).expand(episodes, -1)
            Ws, alive = self._run_cols(th, sel, W0, idx, keep)
            losses = self.objective(Ws)
            loss = losses.mean()
            if not torch.isfinite(loss):
                loss = torch.nan_to_num(loss, nan=1e6, posinf=1e6)
            loss.backward()
            with torch.no_grad():
                phi.grad.nan_to_num_(0.0, 0.0, 0.0)
            value = float(loss.detach())
            if value < best[0]:
                best[0], best[1] = value, phi.detach().clone()
            result.steps += 1
            dropped = int((~alive).sum())
            result.dropped_episodes += dropped
            event = {"step": result.steps, "steps": iters, "meta_loss": value,
                     "theta": dict(zip(terms, (phi.detach() * scale).tolist(), strict=True)), "lr": None,
                     "dropped_episodes": dropped, "skipped": False, "phase": label}
            result.history.append(event)
            if on_step is not None:
                on_step(event)
            return loss

        try:
            opt.step(closure)
        except _Stop:
            pass
        result.theta = dict(zip(terms, (best[1] * scale).tolist(), strict=True))
        result.extra = {"train_loss": best[0]}
        return result

    def _run_cols(self, theta_sel: Tensor, sel: Sequence[int], W0: Tensor, idx: Tensor, keep: Sequence[int]
                  ) -> tuple[list[Tensor], Tensor]:
        """``run`` with θ given only for the pool columns ``sel`` ((B, len(sel)))."""
        full = torch.zeros(theta_sel.shape[0], len(self.pool), dtype=self.dtype)
        full = full.index_put((torch.arange(theta_sel.shape[0])[:, None], torch.tensor(sel)[None, :]), theta_sel)
        return self.run(full, W0, idx, keep, list(sel))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def trial_loss(self, theta: dict[str, float], episodes: int = 16, seed: int = 20_000) -> float:
        """Mean meta-objective of θ on ``episodes`` seeded training episodes (common to every call: paired)."""
        gen = torch.Generator().manual_seed(seed)
        W0, idx = self.sample_episodes(episodes, gen)
        theta_b = self.theta_vector(theta).expand(episodes, -1)
        Ws, _ = self.run(theta_b, W0, idx, self.cfg.checkpoint_steps())
        collapsed = Ws[-1].flatten(1).norm(dim=1) < COLLAPSE * self.cfg.init_norm
        value = self.objective(Ws).masked_fill(collapsed, 0.0 if self.cfg.objective == "reconstruction" else 1.0)
        return float(value.mean())

    @torch.no_grad()
    def evaluate(self, theta: dict[str, float], episodes: int = 16, passes: int = 5, seed: int = 10_000
                 ) -> Evaluation:
        """Held-out scores of θ on ``episodes`` fresh episodes (seeded, so paired across rules): reconstruction
        error on the held-out split and subspace error against the top-k subspace of all samples, at the
        meta-training horizon T and after each of ``passes`` online passes over the training split."""
        gen = torch.Generator().manual_seed(seed)
        N, T = self.X.shape[0], self.cfg.unroll
        total = max(T, passes * N)
        W0, idx = self.sample_episodes(episodes, gen, total)
        theta_b = self.theta_vector(theta).expand(episodes, -1)
        keep = sorted({T, *[p * N for p in range(1, passes + 1)]})
        Ws, alive = self.run(theta_b, W0, idx, keep)
        at = dict(zip(keep, Ws, strict=True))
        held = self.data.heldout.to(self.dtype)

        def scores(W: Tensor) -> tuple[list[float], list[float]]:
            rec = reconstruction_error(W, held)
            sub = subspace_error(W, self.U_full)
            return [float(v) if math.isfinite(v) else math.inf for v in rec.tolist()], sub.tolist()

        rec_T, sub_T = scores(at[T])
        rec_m, rec_h = mean_halfwidth(rec_T)
        sub_m, sub_h = mean_halfwidth(sub_T)
        rec_p, sub_p, sub_ph = [], [], []
        for p in range(1, passes + 1):
            r, s = scores(at[p * N])
            rec_p.append(sum(r) / len(r))
            m, h = mean_halfwidth(s)
            sub_p.append(m)
            sub_ph.append(h)
        last = at[keep[-1]]
        eig = torch.linalg.eigvalsh(last @ last.transpose(-1, -2)).mean(0)
        return Evaluation(episodes=episodes, recon=rec_m, recon_ci95=rec_h, subspace=sub_m, subspace_ci95=sub_h,
                          recon_per_episode=rec_T, subspace_per_episode=sub_T, recon_passes=rec_p,
                          subspace_passes=sub_p, subspace_passes_ci95=sub_ph, diverged=int((~alive).sum()),
                          ww_eigenvalues=eig.tolist())
