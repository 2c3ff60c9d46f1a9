"""Task distributions (docs/transfer.md): the sampler covers every task; a multi-task meta-step moves one θ with
the gradients of every training cell (mean or tail objective); the spec's types match discovery.spec's."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from discovery.spec import DatasetName, DiscoverySpec, FeedbackMode
from discovery.transfer.multitask import MultiTaskTrainer, TaskSampler, tail_weights
from discovery.transfer.spec import CellDataset, CellFeedback

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mt_spec(**transfer: object) -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [64, 12, 10], "feedback": "fa"},
        "task": {"dataset": "digits", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"terms": ["F0", "F2"], "theta_init": {"F0": 0.02}},
        "meta": {"episodes": 3, "meta_batch": 3, "seed": 1, "lr": 0.01},
        "transfer": {"cells": [{"dataset": "digits", "widths": [64, 12, 10]},
                               {"dataset": "digits", "widths": [64, 12, 10, 10]},
                               {"dataset": "digits", "widths": [64, 16, 12, 10, 10]},
                               {"dataset": "digits", "widths": [64, 8, 10], "role": "select"}], **transfer}})


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_the_sampler_covers_every_task(batch: int) -> None:
    sampler = TaskSampler(5, seed=0)
    seen = [0] * 5
    for step in range(1, 11):
        counts = sampler.draw(batch)
        assert sum(counts) == batch
        seen = [a + b for a, b in zip(seen, counts)]
        done = step * batch
        assert all(done // 5 <= s <= -(-done // 5) for s in seen), seen   # every cell once per round of 5
    assert min(seen) >= 1


def test_a_multitask_step_uses_every_training_cell() -> None:
    spec = mt_spec()
    trainer = MultiTaskTrainer(spec)
    assert [len(c.spec.network.widths) for c in trainer.children] == [3, 4, 5]   # the select cell is not trained
    before = trainer.theta.detach().clone()
    seen = [0, 0, 0]
    original = trainer.cell_gradients

    def spy(batch: int):
        out, bad = original(batch)
        for i, *_ in out:
            seen[i] += 1
        return out, bad

    trainer.cell_gradients = spy  # type: ignore[method-assign]
    trainer.run(None, None, None)
    assert seen == [3, 3, 3] and trainer.episode == 3
    assert not torch.equal(trainer.theta.detach(), before)
    assert all(c.phi is trainer.lead.phi for c in trainer.children)


def test_tail_objective_weights_the_worst_cells() -> None:
    losses = torch.tensor([0.5, 2.0, 1.0])
    assert tail_weights(losses, "mean", 0.5).tolist() == pytest.approx([1 / 3] * 3)
    assert tail_weights(losses, "quantile", 1.0).tolist() == [0.0, 1.0, 0.0]
    assert tail_weights(losses, "quantile", 0.5).tolist() == [0.0, 0.5, 0.5]


def test_transfer_types_match_the_spec() -> None:
    assert set(get_args(CellFeedback)) == set(get_args(FeedbackMode))
    assert set(get_args(CellDataset)) == set(get_args(DatasetName))


def test_spec_refuses_per_layer_across_depths_and_a_distribution_without_training_cells() -> None:
    with pytest.raises(ValueError, match="one depth"):
        mt_spec(coefficients="per-layer")
    with pytest.raises(ValueError, match="training cell"):
        DiscoverySpec.model_validate({"transfer": {"cells": [{"depth": 3, "role": "select"}]}})
    assert "transfer" not in DiscoverySpec().model_dump()


def test_a_goal_names_a_task_distribution_over_depths() -> None:
    from discovery.goal import parse_goal

    parsed = parse_goal("find a rule that works across depths 3 to 7")
    cells = parsed.spec.transfer.cells
    assert [(c.depth, c.role) for c in cells] == [(3, "train"), (4, "select"), (5, "train"), (6, "select"),
                                                 (7, "train")]
    assert parsed.spec.search.method == "forward" and any("depths 3–7" in u for u in parsed.understood)


def test_a_quantile_screen_tests_the_worst_cells_gradient() -> None:
    """Under the mean objective (or the default 'mean' screen) a screen of n draws n episodes across the cells;
    with transfer.screen 'objective' and quantile q = 1 it draws n from every cell and returns exactly the n episodes of the cell with the largest mean loss, whose loss and
    gradient equal that cell's own meta-gradient on the same draws."""
    n = 4
    mean = MultiTaskTrainer(mt_spec(objective="mean"))
    loss, grad = mean.episode_gradients(n)
    assert loss.shape == (n,) and grad.shape == (2, n)

    assert MultiTaskTrainer(mt_spec(objective="quantile", quantile=1.0)).screen_counts(n) != [n, n, n]  # 'mean' screen
    worst = MultiTaskTrainer(mt_spec(objective="quantile", quantile=1.0, screen="objective"))
    twin = MultiTaskTrainer(mt_spec(objective="quantile", quantile=1.0, screen="objective"))   # the same streams, read cell by cell
    per_cell = []
    for child in twin.children:
        ep = child.train_sampler.sample(n, device=child.device, dtype=child.dtype)
        Ws, Bs = child._weights(n)
        per_cell.append(child.meta_gradient(ep, Ws, Bs)[:2])
    k = max(range(3), key=lambda i: float(per_cell[i][0].mean()))
    loss, grad = worst.episode_gradients(n)
    assert worst.screen_counts(n) == [n, n, n]
    torch.testing.assert_close(loss, per_cell[k][0])
    torch.testing.assert_close(grad, per_cell[k][1])


def test_the_cliff_guard_returns_the_multitask_theta_to_its_lowest_loss() -> None:
    """meta.rollback in the multi-task trainer (discovery.optim.guard_cliff): the first step whose mean loss over
    the cells exceeds (1 + ρ)·min is marked backtracked, θ is the θ the lowest-loss step ran with, lr is halved."""
    spec = mt_spec()
    spec = spec.model_copy(update={"meta": spec.meta.model_copy(
        update={"episodes": 6, "lr": 0.2, "keep_window": 1, "rollback": 0.05})})
    trainer = MultiTaskTrainer(spec)
    trainer.run(None, None, None)
    history = trainer.history
    back = [i for i, h in enumerate(history) if h["backtracked"]]
    assert back, "no cliff was caught"
    i = back[0]
    losses = [h["meta_loss"] for h in history[:i + 1]]
    assert losses[i] > 1.05 * min(losses[:i])
    j = min(range(i), key=losses.__getitem__)
    ran_with = history[j - 1]["theta"] if j > 0 else {"F0": 0.02, "F2": 0.0}
    assert history[i]["theta"] == pytest.approx(ran_with, rel=1e-6, abs=1e-12)
    assert history[i]["lr"] == pytest.approx(history[i - 1]["lr"] / 2)
