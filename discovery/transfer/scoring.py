"""A fixed θ scored on a cell, and the baselines' θ0 meta-tuned on it (docs/transfer.md).

Protocol (the issue-26 table): 5-way 50-shot, 10 queries, held-out fraction 0.4, `term_scale: "norm"`; the rule's
θ is fixed and run on E held-out episodes of the evaluation seed (episodes and fresh W, B depend on that seed
alone, so every learner of a cell sees the same ones: paired). A baseline (BP = F0 under bp feedback, FA = F0
under fa feedback) gets its own θ0, meta-tuned on the cell's meta-train episodes (Adam on the query
cross-entropy, `tune_episodes` one-episode steps from θ0 = 1e-3, the S3 protocol) with the tuning seed.

Per-episode accuracy a_i; a diverged episode (adapted weights or logits not finite) counts 0 and is counted:
a θ that diverges on a cell *fails* there (``CellScore.failed``), whatever its mean.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from discovery.analysis.stats import t_interval
from discovery.spec import DiscoverySpec
from discovery.transfer.cells import Cell, cell_spec


class TransferProtocol(BaseModel):
    """How cells are scored and baselines tuned (defaults: the table of docs/results.md, issue 26)."""

    model_config = ConfigDict(extra="ignore")

    eval_seed: int = 7
    eval_episodes: int = Field(100, ge=2)
    heldout_fraction: float = Field(0.4, gt=0, lt=1)
    ways: int = 5
    shots: int = 50
    queries: int = 10
    term_scale: str = "norm"
    dtype: str = "float32"
    tune_episodes: int = Field(600, ge=1)
    tune_lr: float = 1e-3
    tune_lr_schedule: str = "constant"
    theta0: float = 1e-3
    base_widths: list[int] = Field(default_factory=lambda: [784, 170, 130, 100, 70, 10])
    rule_feedback: str = "fa"

    def base(self) -> DiscoverySpec:
        """The spec every cell starts from (the S3 net and task with this protocol's split and sizes)."""
        return DiscoverySpec.model_validate({
            "network": {"widths": self.base_widths, "feedback": self.rule_feedback},
            "task": {"dataset": "mnist5k", "ways": self.ways, "shots": self.shots, "queries": self.queries,
                     "heldout_fraction": self.heldout_fraction},
            "meta": {"term_scale": self.term_scale, "dtype": self.dtype, "episodes": 1}})


class CellScore(BaseModel):
    """One learner on one cell: per-episode accuracy, mean with its 95 % t-interval, diverged episodes."""

    cell: str
    role: str = "train"
    score: float
    ci95: list[float]
    per_episode: list[float]
    diverged: int = 0
    failed: bool = False
    theta: dict[str, Any] = Field(default_factory=dict)


def heldout_outcome(trainer: Any, episodes: int, batch: int = 25) -> tuple[Tensor, int]:
    """Per-episode held-out accuracy of ``trainer``'s current θ and how many episodes diverged. The episodes and
    initial weights are those of ``MetaTrainer.heldout_values`` (same seeds, same order), so the values equal it
    wherever nothing diverged; a diverged episode counts 0 here."""
    from discovery.feedforward.inner import query_logits

    net = trainer.spec.network
    gen = torch.Generator().manual_seed(trainer.spec.meta.seed + 7_777)
    trainer.heldout_sampler.reseed(trainer.spec.meta.seed + 1_000_003)
    accs, diverged, done = [], 0, 0
    with torch.no_grad():
        while done < episodes:
            b = min(batch, episodes - done)
            ep = trainer.heldout_sampler.sample(b, device=trainer.device, dtype=trainer.dtype)
            Ws, Bs = trainer._weights(b, gen)
            Wf = trainer._online(trainer.theta.detach(), Ws, Bs, ep, tangents=False)
            logits = query_logits(Wf, ep.x_query, net.beta)
            ok = torch.isfinite(logits).flatten(1).all(1)
            for W in Wf:
                ok &= torch.isfinite(W).flatten(1).all(1)
            acc = (logits.argmax(-1) == ep.y_query).to(trainer.dtype).mean(-1)
            accs.append(torch.where(ok, acc, torch.zeros_like(acc)).cpu())
            diverged += int((~ok).sum())
            done += b
    return torch.nan_to_num(torch.cat(accs).double(), nan=0.0), diverged


def fixed_trainer(cell: Cell, terms: list[str], theta: dict[str, float], protocol: TransferProtocol, *,
                  feedback: str | None = None, seed: int | None = None, extra: dict[str, Any] | None = None) -> Any:
    """A trainer on ``cell`` holding θ (the terms' coefficients), on the protocol's evaluation seed (the cell's
    own draw of it: ``Cell.eval_seed``). θ in a layered layout (profile slopes ``F2~slope`` or per-layer ``F2@ℓ``,
    discovery.transfer.layered) runs as such: θ_{r,ℓ} = Σ_k φ_{r,k} b_k(ℓ) on the cell's depth L; per-layer θ
    exists for one depth only, so another depth is refused."""
    from discovery.transfer.multitask import fixed_cell_trainer

    if feedback is not None:
        cell = cell.model_copy(update={"feedback": feedback})
    return fixed_cell_trainer(protocol.base(), cell, terms, theta, protocol.eval_seed if seed is None else seed,
                              **(extra or {}))


def score_cell(cell: Cell, terms: list[str], theta: dict[str, float], protocol: TransferProtocol, *,
               feedback: str | None = None) -> CellScore:
    """θ fixed, scored on the cell's held-out episodes of the evaluation seed."""
    trainer = fixed_trainer(cell, terms, theta, protocol, feedback=feedback)
    return score_trainer(cell, trainer, protocol, theta)


def score_trainer(cell: Cell, trainer: Any, protocol: TransferProtocol, theta: dict[str, Any]) -> CellScore:
    """The :class:`CellScore` of a ready trainer (its θ) on the protocol's evaluation episodes."""
    values, diverged = heldout_outcome(trainer, protocol.eval_episodes)
    mean, lo, hi = t_interval(values)
    return CellScore(cell=cell.label, role=cell.role, score=mean, ci95=[lo, hi], per_episode=values.tolist(),
                     diverged=diverged, failed=diverged > 0, theta=dict(theta))


def tune_theta0(cell: Cell, feedback: str, protocol: TransferProtocol, seed: int) -> dict[str, float]:
    """θ0 of F0 (the baseline's learning rate) meta-tuned on the cell's meta-train episodes under ``feedback``:
    `tune_episodes` Adam steps (lr `tune_lr`, schedule `tune_lr_schedule`) on the query cross-entropy from
    θ0 = `theta0`, seed ``seed``."""
    from discovery.feedforward.trainer import MetaTrainer

    spec = cell_spec(protocol.base(), cell.model_copy(update={"feedback": feedback}),
                     rule={"terms": ["F0"], "theta_init": {"F0": protocol.theta0}},
                     meta={"seed": seed, "episodes": protocol.tune_episodes, "lr": protocol.tune_lr,
                           "lr_schedule": protocol.tune_lr_schedule, "meta_batch": 1})
    trainer = MetaTrainer(spec)
    trainer.run(None, None, None)
    return trainer.theta_dict()
