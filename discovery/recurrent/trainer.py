"""Meta-learning recurrent plasticity rules on the fixed-point MNIST network (docs/science.md S2).

Network: N tanh units at the fixed point r = tanh(W r + W_x x), readout logits R r, loss 𝓛 = CE(R r, y),
δ = ∂𝓛/∂r = Rᵀ(softmax(R r) − onehot(y)), G = diag(1 − r²). W_x ~ N(0, 1/784) and R ~ N(0, 1/N) are fixed per
job (seeded by spec.meta.seed); only W learns. The rule (rules.recurrent) is ΔW = Σ_k θ_k F_k(W, r, δ, G), each F_k
batch-averaged; θ_k are per-term learning rates (θ_dW3 = .25 is the paper's dW3 at lr .25).

Meta-episode: fresh W₀ = 0.5·M/ρ(M), T inner steps W ← W + Σ_k θ_k F_k on minibatches of B training images, then
meta-loss = CE of the readout on Q held-out images at the fixed point of W_T, plus λ‖θ‖₁. The terms' natural step
sizes differ by orders of magnitude, so Adam (lr = meta.lr) runs on φ_k = θ_k / s_k with fixed per-term scales
s = META_SCALE (the published learning rates for the dW terms, 1e-3 for Oja / decay): one Adam step changes θ_k
by about meta.lr·s_k (meta.lr ≈ 0.05–0.1 is a sensible choice here; the default 1e-3 barely moves θ).

Spec mapping (task.kind = "fixedpoint-mnist"): N = network.widths[1] (widths must be [784, N, 10]); T =
task.shots inner steps; B = task.ways × task.queries images per inner step (all 10 digits, no label remapping);
Q = QUERY_FACTOR·B query images per episode (capped by the split); the 4,000 training images of load_mnist_5k are
split into inner-training and meta-query images by task.heldout_fraction; evaluation trains on all 4,000 and
reports test accuracy on the 1,000 test images over min(meta.eval_episodes, MAX_EVAL_EPISODES) fresh W₀
(mean ± 95 % t-interval, discovery.analysis.stats). meta.grad_mode is ignored: the meta-gradient is always reverse mode.

Exact meta-gradient: reverse-mode autograd through the T unrolled updates, each fixed point differentiated
implicitly (discovery.recurrent.network); checked against central finite differences in the tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from discovery.analysis.stats import mean_halfwidth
from discovery.feedforward.checkpoint import Checkpointed
from discovery.feedforward.trainer import resolve_device
from discovery.optim import BestTheta, apply_schedule, guard_cliff
from discovery.recurrent.fixedpoint import random_matrix, spectral_abscissa
from discovery.recurrent.network import (
    DIVERGENCE_ERRORS,
    INPUT_DIM,
    N_CLASSES,
    RHO_INIT,
    FixedPointNet,
    MnistData,
    SolverConfig,
    accuracy_on,
    inner_step,
    load_mnist5k_split,
    run_episode,
)
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.spec import DiscoverySpec
from rules.recurrent import RecurrentRule

KIND = "fixedpoint-mnist"
CHECKPOINT_NAME = "recurrent_checkpoint.pt"
QUERY_FACTOR = 4
MAX_EVAL_EPISODES = 50
STREAM_STRIDE = 1_000_003
"""A search's stage i draws its episodes from the generator seeded seed + STREAM_STRIDE · i (discovery.search)."""
META_SCALE: dict[str, float] = {"rec_dW1": 0.01, "rec_dW3": 0.25, "rec_dW4": 0.1, "rec_oja": 1e-3, "rec_decay": 1e-3}
"""s_k: Adam runs on φ_k = θ_k / s_k (see the module docstring)."""
GENERATED_SCALE = {"error": 0.1, "hebbian": 1e-3}
"""s_k of a generated library term (rules.recurrent_library): 0.1 (dW4's) when it carries δ or u, else 1e-3."""


def term_scale(tid: str) -> float:
    """s_k of term ``tid``: META_SCALE for the published terms, GENERATED_SCALE by kind for the generated ones."""
    from rules.recurrent import recurrent_term

    if tid in META_SCALE:
        return META_SCALE[tid]
    names = {s.name for s in recurrent_term(tid).expr.free_symbols if hasattr(s, "name")}
    return GENERATED_SCALE["error" if names & {"delta", "u"} else "hebbian"]


# ================================================================================ the spec

@dataclass(frozen=True)
class RecurrentSetting:
    """What a fixedpoint-mnist spec means here (see the module docstring)."""

    N: int
    inner_steps: int
    batch: int
    query: int
    term_ids: list[str]
    theta0: dict[str, float]


def recurrent_setting(spec: DiscoverySpec) -> RecurrentSetting:
    """Validate the spec for the recurrent setting and map its fields; ValueError with a clear message."""
    if spec.task.kind != KIND:
        raise ValueError(f"discover_recurrent needs task.kind == {KIND!r}, got {spec.task.kind!r}")
    w = spec.network.widths
    if len(w) != 3 or w[0] != INPUT_DIM or w[2] != N_CLASSES:
        raise ValueError(f"{KIND} needs network.widths = [784, N, 10] (N recurrent tanh units), got {w}")
    if spec.task.dataset != "mnist5k":
        raise ValueError(f"{KIND} runs on mnist5k only, got dataset {spec.task.dataset!r}")
    rule = spec.rule
    if rule.family != "recurrent":
        raise ValueError(f"{KIND} needs a recurrent rule (rule.family 'recurrent'), got {rule.family!r}")
    ids, theta0 = list(rule.terms or []), rule.initial_theta()
    B = spec.task.ways * spec.task.queries
    return RecurrentSetting(N=w[1], inner_steps=spec.task.shots, batch=B, query=QUERY_FACTOR * B, term_ids=ids,
                            theta0=theta0)


def _draw(n: int, k: int, gen: torch.Generator) -> Tensor:
    """k indices of range(n): concatenated random permutations (no repeats while k ≤ n)."""
    perms = [torch.randperm(n, generator=gen) for _ in range(max(1, math.ceil(k / n)))]
    return torch.cat(perms)[:k]


# ================================================================================ the meta-trainer

def record_accuracy(acc: float, W: Tensor, accs: list[float], absc: list[float]) -> bool:
    """Append an episode's test accuracy to ``accs`` (0 when it diverged / is not finite) and, when finite, the
    spectral abscissa of its final W to ``absc``; True when the episode failed."""
    failed = not math.isfinite(acc)
    if failed:
        acc = 0.0
    else:
        absc.append(float(spectral_abscissa(W.cpu())))
    accs.append(acc)
    return failed


class RecurrentMetaTrainer(Checkpointed):
    """θ, Adam, data and generators of a fixedpoint-mnist discovery; `step()` is one meta-step."""

    checkpoint_name = CHECKPOINT_NAME

    def __init__(self, spec: DiscoverySpec, device: torch.device | None = None, data: MnistData | None = None,
                 stream: int = 0):
        self.spec = spec
        self.setting = recurrent_setting(spec)
        self.device = device or resolve_device(spec.resources.device)
        self.dtype = torch.float64 if spec.meta.dtype == "float64" else torch.float32
        self.cfg = SolverConfig.default(self.setting.N, self.dtype)
        xtr, ytr, xte, yte = data if data is not None else load_mnist5k_split()
        if xtr.shape[1] != INPUT_DIM:
            raise ValueError(f"images must have {INPUT_DIM} pixels, got {xtr.shape[1]}")
        dev, dt = self.device, self.dtype
        self.x_train, self.y_train = xtr.to(dev, dt), ytr.to(dev)
        self.x_test, self.y_test = xte.to(dev, dt), yte.to(dev)
        seed = spec.meta.seed
        split = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed + 17))
        n_q = max(1, round(spec.task.heldout_fraction * len(ytr)))
        self.query_idx, self.inner_idx = split[:n_q].to(dev), split[n_q:].to(dev)
        self.gen = torch.Generator().manual_seed(seed + STREAM_STRIDE * stream)   # stream 0: the job's own draws
        self.net = FixedPointNet.random(self.setting.N, torch.Generator().manual_seed(seed + 1), dt, dev)
        self.term_ids = self.setting.term_ids
        self.scale = torch.tensor([term_scale(t) for t in self.term_ids], dtype=dt, device=dev)
        theta0 = torch.tensor([self.setting.theta0[t] for t in self.term_ids], dtype=dt, device=dev)
        self.phi = torch.nn.Parameter(theta0 / self.scale)
        self.opt = torch.optim.Adam([self.phi], lr=spec.meta.lr)
        self.best = BestTheta(spec.meta)
        self.episode = 0
        self.history: list[dict] = []
        self.diverged = 0
        self.skipped = 0

    @property
    def theta(self) -> Tensor:
        """θ = s ⊙ φ (detached)."""
        return self.scale * self.phi.detach()

    # ------------------------------------------------------------------ sampling
    def _W0(self, gen: torch.Generator) -> Tensor:
        return random_matrix(self.setting.N, RHO_INIT, gen).to(self.device, self.dtype)

    def _episode_data(self, gen: torch.Generator, pool: Tensor, steps: int, batch: int
                      ) -> list[tuple[Tensor, Tensor]]:
        idx = pool[_draw(len(pool), steps * batch, gen).to(pool.device)].view(steps, batch)
        return [(self.x_train[i], self.y_train[i]) for i in idx]

    def sample_episode(self) -> tuple[Tensor, list[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
        """(W₀, T minibatches from the inner split, a query batch from the meta-query split)."""
        s = self.setting
        W0 = self._W0(self.gen)
        batches = self._episode_data(self.gen, self.inner_idx, s.inner_steps, s.batch)
        q = min(s.query, len(self.query_idx))
        (query,) = self._episode_data(self.gen, self.query_idx, 1, q)
        return W0, batches, query

    # ------------------------------------------------------------------ one meta-step
    def step(self) -> ProgressEvent:
        """Meta-batch of episodes (each its own graph); drop diverged ones; Adam-step θ on the mean gradient."""
        meta = self.spec.meta
        phi_before = self.phi.detach().clone()
        grads, losses, accs, absc, tl = [], [], [], [], []
        n_bad = 0
        for _ in range(meta.meta_batch):
            W0, batches, query = self.sample_episode()
            try:
                out = run_episode(self.net, W0, batches, query, self.theta, self.term_ids, self.cfg)
            except DIVERGENCE_ERRORS:
                n_bad += 1
                continue
            ok = (math.isfinite(out.loss) and out.grad is not None and bool(torch.isfinite(out.grad).all())
                  and bool(torch.isfinite(out.W).all()) and float(out.W.abs().amax()) < meta.max_update_norm)
            if not ok:
                n_bad += 1
                continue
            grads.append(out.grad)
            losses.append(out.loss)
            accs.append(out.accuracy)
            absc.append(out.abscissa)
            tl.append(out.train_loss[-1] if out.train_loss else math.nan)
        self.diverged += n_bad
        skipped = not grads
        if skipped:
            self.skipped += 1
        else:
            g = torch.stack(grads).mean(0) + meta.l1 * torch.sign(self.theta)      # ∂(CE + λ‖θ‖₁)/∂θ
            self.opt.zero_grad(set_to_none=True)
            self.phi.grad = (self.scale * g).to(self.phi.dtype)                     # chain rule θ = s ⊙ φ
            apply_schedule(self.opt, meta, self.episode)
            self.opt.step()
        self.episode += 1
        l1_term = meta.l1 * float(self.theta.abs().sum())
        event = ProgressEvent(
            episode=self.episode, total=meta.episodes,
            meta_loss=None if skipped else sum(losses) / len(losses) + l1_term,
            meta_accuracy=None if skipped else sum(accs) / len(accs),
            theta=self.theta_dict(), skipped=skipped, dropped_episodes=n_bad,
            spectral_abscissa=None if skipped else sum(absc) / len(absc),
            train_loss=None if skipped else sum(tl) / len(tl))
        event = guard_cliff(self.best, self.opt, self.phi, event, phi_before, self.theta_dict)
        self.history.append(event.model_dump())
        return event

    def finish(self) -> None:
        """meta.keep 'best': φ ← the φ of the lowest meta-train loss average (discovery.optim.BestTheta)."""
        self.best.restore(self.phi)

    def theta_dict(self) -> dict[str, float]:
        return {t: float(v) for t, v in zip(self.term_ids, self.theta.cpu())}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: int) -> dict[str, Any]:
        """Test accuracy after T inner steps (minibatches of B from all training images) with the current θ,
        over `episodes` fresh W₀; a lost fixed point scores 0 and counts as a failure."""
        s = self.setting
        gen = torch.Generator().manual_seed(self.spec.meta.seed + 7_777)
        all_idx = torch.arange(len(self.y_train), device=self.device)
        theta = self.theta
        accs, absc, failures = [], [], 0
        with torch.no_grad():
            for _ in range(episodes):
                W = self._W0(gen)
                batches = self._episode_data(gen, all_idx, s.inner_steps, s.batch)
                try:
                    for x, y in batches:
                        W, _ = inner_step(self.net, W, x, y, theta, self.term_ids, self.cfg)
                    acc = accuracy_on(self.net, W, self.x_test, self.y_test, self.cfg)
                except DIVERGENCE_ERRORS:
                    acc = math.nan
                failures += record_accuracy(acc, W, accs, absc)
        mean, ci = mean_halfwidth(accs) if accs else (None, None)
        return {"accuracy": mean, "ci95": ci, "episodes": len(accs), "failures": failures,
                "spectral_abscissa": sum(absc) / len(absc) if absc else None}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"episode": self.episode, "phi": self.phi.detach().cpu(), "opt": self.opt.state_dict(),
                "history": self.history, "diverged": self.diverged, "skipped": self.skipped,
                "gen": self.gen.get_state(), "spec": self.spec.model_dump(), "best": self.best.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.episode = state["episode"]
        with torch.no_grad():
            self.phi.copy_(state["phi"].to(self.phi))
        self.opt.load_state_dict(state["opt"])
        self.history = list(state["history"])
        self.diverged, self.skipped = state["diverged"], state["skipped"]
        self.gen.set_state(state["gen"])
        self.best.load_state_dict(state.get("best"))


def discover_recurrent(spec: DiscoverySpec | dict, progress: Callable[[ProgressEvent], None] | None = None,
                       checkpoint_dir: Path | str | None = None, should_stop: Callable[[], bool] | None = None, *,
                       data: MnistData | None = None) -> DiscoveryResult:
    """Meta-learn θ of ΔW = Σ θ_k F_k on fixedpoint-mnist, evaluate on test images, return the RecurrentRule."""
    spec = spec if isinstance(spec, DiscoverySpec) else DiscoverySpec.model_validate(spec)
    t0 = time.perf_counter()
    trainer = RecurrentMetaTrainer(spec, data=data)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stopped = trainer.run(progress, folder, should_stop)
    n_eval = 0 if stopped else min(spec.meta.eval_episodes, MAX_EVAL_EPISODES)
    ev = trainer.evaluate(n_eval) if n_eval else {"accuracy": None, "ci95": None, "episodes": 0, "failures": 0,
                                                   "spectral_abscissa": None}
    theta = trainer.theta_dict()
    rule_dict = RecurrentRule(theta, name=spec.name).rounded(6).to_dict()     # float32 noise off the display
    rule_dict["coefficients_raw"] = theta
    s = trainer.setting
    rule_dict["setting"] = {"task": KIND, "N": s.N, "inner_steps": s.inner_steps, "batch": s.batch,
                            "query": s.query, "eval_failures": ev["failures"],
                            "eval_spectral_abscissa": ev["spectral_abscissa"]}
    return DiscoveryResult(
        rule=rule_dict, theta=theta, history=trainer.history,
        theta_history=[h["theta"] for h in trainer.history], heldout_accuracy=ev["accuracy"],
        heldout_ci95=ev["ci95"], heldout_episodes=ev["episodes"], diverged_episodes=trainer.diverged,
        skipped_steps=trainer.skipped, stopped=stopped, wall_time_s=time.perf_counter() - t0,
        device=str(trainer.device), spec=spec.model_dump())
