"""Meta-training over a task distribution (docs/transfer.md): one θ, the meta-batch drawn across the training
cells, the meta-objective their mean (or an upper quantile).

* Sampler: the episodes of successive meta-batches take the cells in shuffled rounds — every round is a fresh
  permutation of the K training cells — so every cell supplies exactly one episode per K consecutive episodes
  (a meta-batch of B ≥ K episodes covers every cell; smaller batches cover them within ⌈K/B⌉ steps).
* Objective: each cell present in the meta-batch contributes its mean query loss L_k and mean meta-gradient g_k
  over its finite episodes; ``mean``: g = (1/K') Σ_k g_k; ``quantile`` q: g = mean of the g_k whose L_k is at or
  above the q-quantile of the batch's L_k (q = 1: the worst cell; set meta_batch ≥ K so every step sees all).
  With ``transfer.screen: objective`` the screens of a search test the same objective: each draws n episodes from
  every training cell and scores the candidates on the tail cells' episodes only (`episode_gradients`).
* One trainer per cell (its own data, network, episode stream and fresh weights: discovery.feedforward.trainer.
  MetaTrainer, or the per-layer LayeredTrainer) sharing one parameter φ, one step scale s (the first training
  cell's) and one Adam; the first cell's trainer applies the update, its L1, divergence guard and backtracking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from discovery.feedforward.checkpoint import Checkpointed
from discovery.feedforward.trainer import MetaTrainer
from discovery.optim import apply_schedule, guard_cliff
from discovery.results import ProgressEvent
from discovery.spec import DiscoverySpec
from discovery.transfer.cells import cell_spec
from discovery.transfer.spec import Cell


class TaskSampler:
    """The cell of each episode: shuffled rounds over the K cells (one generator, checkpointable)."""

    def __init__(self, n_cells: int, seed: int):
        self.n = int(n_cells)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.queue: list[int] = []

    def draw(self, batch: int) -> list[int]:
        """Episodes per cell (length K) for a meta-batch of ``batch`` episodes."""
        counts = [0] * self.n
        for _ in range(batch):
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.gen).tolist()
            counts[self.queue.pop(0)] += 1
        return counts

    def get_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "queue": list(self.queue)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.queue = list(state["queue"])


def finite_episodes(loss: Tensor, grad: Tensor, Wf: list[Tensor], max_norm: float) -> Tensor:
    """The episodes whose loss, gradient and adapted weights are finite and below ``max_norm`` (MetaTrainer's
    divergence guard)."""
    ok = torch.isfinite(loss) & torch.isfinite(grad).all(0)
    ok &= torch.stack([torch.isfinite(w).flatten(1).all(1) for w in Wf]).all(0)
    return ok & torch.stack([w.abs().flatten(1).amax(1) < max_norm for w in Wf]).all(0)


def tail_weights(losses: Tensor, objective: str, q: float) -> Tensor:
    """Weights of the cells' gradients: uniform (mean), or uniform over the cells at or above the q-quantile."""
    if objective == "mean" or losses.numel() == 1:
        return torch.full_like(losses, 1.0 / losses.numel())
    tail = (losses >= torch.quantile(losses, q)).to(losses.dtype)
    return tail / tail.sum()


def cell_mean_loss(loss: Tensor) -> Tensor:
    """A cell's mean query loss over its finite episodes; the dtype's largest value when none is finite (it is then
    the worst cell)."""
    ok = torch.isfinite(loss)
    return loss[ok].mean() if ok.any() else torch.tensor(torch.finfo(loss.dtype).max, dtype=loss.dtype)


def cell_trainer(spec: DiscoverySpec, stream: int, coefficients: str,
                 theta_init: dict[str, float] | None = None) -> MetaTrainer:
    """The trainer of one cell: the shared-θ MetaTrainer, or the LayeredTrainer of a profile / per-layer layout."""
    if coefficients == "shared":
        return MetaTrainer(spec, stream=stream)
    from discovery.transfer.layered import LayeredTrainer

    return LayeredTrainer(spec, stream=stream, coefficients=coefficients, theta_init=theta_init)


def fixed_cell_trainer(base: DiscoverySpec, cell: Cell, terms: Sequence[str], theta: Mapping[str, float], seed: int,
                       **meta: Any) -> MetaTrainer:
    """A trainer on ``cell`` holding θ fixed, on the cell's own draw of ``seed`` (``Cell.eval_seed``): the terms'
    shared θ_r as θ_init and, for a layered θ (profile slopes ``F2~slope`` or per-layer ``F2@ℓ``; the layout read
    from its keys), θ_{r,ℓ} = Σ_k φ_{r,k} b_k(ℓ) on the cell's depth L. Per-layer θ exists for one depth only, so a
    cell of another depth is refused."""
    from discovery.transfer.layered import layered_part, layout_of, param_ids, shared_theta

    spec = cell_spec(base, cell, rule={"terms": list(terms), "theta_init": shared_theta(terms, theta)},
                     meta={"seed": cell.eval_seed(seed), **meta})
    layout, layered = layout_of(theta), layered_part(terms, theta)
    if layout == "per-layer" and set(layered or {}) != set(param_ids(terms, layout, spec.network.depth)):
        raise ValueError(f"per-layer θ was fit for another depth than {cell.label}'s {spec.network.depth} layers; "
                         "score it on cells of its own depth, or use a profile or shared θ")
    return cell_trainer(spec, 0, layout, layered)


class MultiTaskTrainer(Checkpointed):
    """θ meta-trained over the training cells of ``spec.transfer`` (see the module docstring)."""

    checkpoint_name = "checkpoint.pt"

    def __init__(self, spec: DiscoverySpec, stream: int = 0, coefficients: str | None = None,
                 theta_init: dict[str, float] | None = None):
        if spec.transfer is None:
            raise ValueError("a multi-task trainer needs spec.transfer (the task distribution)")
        self.spec = spec
        self.coefficients = coefficients or spec.transfer.coefficients
        self.cells = spec.transfer.role("train")
        self.children = [cell_trainer(cell_spec(spec, c, rule=spec.rule.model_dump()), stream, self.coefficients,
                                      theta_init) for c in self.cells]
        lead = self.lead
        for child in self.children[1:]:
            child.phi, child.scale, child.opt = lead.phi, lead.scale, lead.opt
        self.tasks = TaskSampler(len(self.cells), spec.meta.seed + 7_919 * stream + 31)
        self.history: list[dict] = []

    @property
    def lead(self) -> MetaTrainer:
        return self.children[0]

    @property
    def episode(self) -> int:
        return self.lead.episode

    @property
    def theta(self) -> Tensor:
        return self.lead.theta

    @property
    def term_ids(self) -> list[str]:
        return self.lead.term_ids

    def theta_dict(self) -> dict[str, float]:
        return self.lead.theta_dict()

    def screen_counts(self, n: int) -> list[int]:
        """Episodes per training cell of a screen of n: drawn across the cells by the task sampler, or n from every
        cell when screens score the objective's tail cells (transfer.screen 'objective', quantile objective)."""
        return [n] * len(self.children) if self._tail_screen else self.tasks.draw(n)

    @property
    def _tail_screen(self) -> bool:
        """Whether screens score the objective's tail cells (transfer.screen 'objective' with a quantile objective)."""
        tr = self.spec.transfer
        return tr is not None and tr.screen == "objective" and tr.objective != "mean" and len(self.children) > 1

    def episode_gradients(self, n: int) -> tuple[Tensor, Tensor]:
        """Per-episode query loss and meta-gradient (P, ·) of the screening of candidate terms, Rao's score test of
        θ: n fresh episodes drawn across the training cells (transfer.screen 'mean'); or, with screen 'objective' and
        a quantile objective q, n fresh episodes from every cell, of which those of the cells whose mean loss L_k is
        at or above the q-quantile (`tail_weights`; q = 1: the worst cell) are returned: the gradient the objective
        follows (all cells' episodes where no tail cell has a finite one)."""
        losses, grads = [], []
        for child, k in zip(self.children, self.screen_counts(n)):
            if k:
                ep = child.train_sampler.sample(k, device=child.device, dtype=child.dtype)
                Ws, Bs = child._weights(k)
                loss, grad, _, _ = child.meta_gradient(ep, Ws, Bs)
                losses.append(loss)
                grads.append(grad)
        tr = self.spec.transfer
        if self._tail_screen:
            means = torch.stack([cell_mean_loss(loss) for loss in losses])
            tail = [i for i, w in enumerate(tail_weights(means, tr.objective, tr.quantile)) if w > 0]
            if any(bool(torch.isfinite(losses[i]).any()) for i in tail):
                losses, grads = [losses[i] for i in tail], [grads[i] for i in tail]
        return torch.cat(losses), torch.cat(grads, dim=1)

    def cell_gradients(self, batch: int) -> tuple[list[tuple[int, Tensor, Tensor, Tensor]], int]:
        """Per cell of the meta-batch: (cell index, mean loss, mean gradient, mean accuracy) over its finite
        episodes, and the number of diverged episodes."""
        out, bad = [], 0
        for i, (child, k) in enumerate(zip(self.children, self.tasks.draw(batch))):
            if not k:
                continue
            ep = child.train_sampler.sample(k, device=child.device, dtype=child.dtype)
            Ws, Bs = child._weights(k)
            loss, grad, acc, Wf = child.meta_gradient(ep, Ws, Bs)
            ok = finite_episodes(loss, grad, Wf, self.spec.meta.max_update_norm)
            bad += int((~ok).sum())
            if ok.any():
                out.append((i, loss[ok].mean(), grad[:, ok].mean(1), acc[ok].mean()))
        return out, bad

    def step(self) -> ProgressEvent:
        """One meta-step: the cells' gradients combined by the objective, one Adam step of the shared φ."""
        meta, lead, tr = self.spec.meta, self.lead, self.spec.transfer
        phi_before = lead.phi.detach().clone()
        cells, bad = self.cell_gradients(meta.meta_batch)
        lead.diverged += bad
        skipped, backtracked = not cells, False
        loss = acc = None
        if skipped:
            lead.skipped += 1
            lead.run_of_skips += 1
            backtracked = lead._maybe_backtrack()
        else:
            lead.run_of_skips = 0
            lead.last_good_theta = lead.theta.detach().clone()
            losses = torch.stack([c[1] for c in cells])
            w = tail_weights(losses, tr.objective if tr else "mean", tr.quantile if tr else 0.5)
            g = sum(wk * c[2] for wk, c in zip(w, cells))
            if meta.l1_mode == "subgradient":
                g = g + meta.l1 * lead.l1_weights * torch.sign(lead.theta.detach())
            lead.opt.zero_grad(set_to_none=True)
            lead.phi.grad = (g * lead.scale).to(lead.phi.dtype)
            apply_schedule(lead.opt, meta, lead.episode)
            lead.opt.step()
            if meta.l1_mode == "proximal" and meta.l1 > 0:
                lead._prox_l1(meta.l1)
            loss = float((w * losses).sum() + meta.l1 * (lead.l1_weights * lead.theta.detach().abs()).sum())
            acc = float(torch.stack([c[3] for c in cells]).mean())
        lead.episode += 1
        event = ProgressEvent(episode=lead.episode, total=meta.episodes, meta_loss=loss, meta_accuracy=acc,
                              theta=self.theta_dict(), skipped=skipped, dropped_episodes=bad,
                              backtracked=backtracked, lr=lead.opt.param_groups[0]["lr"])
        event = guard_cliff(lead.best, lead.opt, lead.phi, event, phi_before, self.theta_dict)
        self.history.append(event.model_dump())
        return event

    def finish(self) -> None:
        self.lead.finish()

    def state_dict(self) -> dict:
        return {**self.lead.state_dict(), "history": self.history, "spec": self.spec.model_dump(),
                "tasks": self.tasks.get_state(),
                "cells": [{"gen": c.gen.get_state(), "train_sampler": c.train_sampler.get_state()}
                          for c in self.children[1:]]}

    def load_state_dict(self, state: dict) -> None:
        self.lead.load_state_dict(state)
        self.history = list(state["history"])
        self.tasks.set_state(state["tasks"])
        for child, s in zip(self.children[1:], state["cells"]):
            child.gen.set_state(s["gen"])
            child.train_sampler.set_state(s["train_sampler"])
