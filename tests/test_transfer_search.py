"""The search over a task distribution (docs/transfer.md): trained on the training cells, the front scored on
every cell and chosen on the selection cells; layered variants on the front with their parameters counted; the
full-budget refit; a support that diverges on a cell fails there, visibly, and is not selected."""

from __future__ import annotations

import json

import pytest

from discovery.router import discover
from discovery.spec import DiscoverySpec
from discovery.transfer.search import FitStage, TransferSearch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELLS = [{"dataset": "digits", "widths": [64, 12, 10]}, {"dataset": "digits", "widths": [64, 12, 10, 10]},
         {"dataset": "digits", "widths": [64, 16, 10, 10], "role": "select"},
         {"dataset": "digits", "widths": [64, 10, 10, 10, 10], "role": "test"}]


def spec(**transfer: object) -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [64, 12, 10], "feedback": "fa"},
        "task": {"dataset": "digits", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"terms": ["F0", "F2", "F3", "F9"]},
        "search": {"method": "forward", "max_terms": 2, "screen_episodes": 4, "front_eval_episodes": 4},
        "meta": {"episodes": 8, "meta_batch": 2, "seed": 0, "lr": 0.01, "term_scale": "norm"},
        "transfer": {"cells": CELLS, **transfer}})


def test_a_multitask_search_selects_on_the_selection_cells_and_refits(tmp_path) -> None:
    s = spec(coefficients="profile", refit=True)
    result = discover(s, checkpoint_dir=tmp_path)
    stages = [(st["label"], st["episodes"]) for st in result.search["stages"]]
    labels = [label for label, _ in stages]
    assert labels[:3] == ["fit 1 terms", "screen for term 2", "fit 2 terms"]
    assert "profile 2 terms" in labels and "refit warm" in " ".join(labels) and "refit scratch" in " ".join(labels)
    assert all(n == 8 for label, n in stages if label.startswith("refit"))        # the full budget each
    front = result.front
    assert sum(p.selected for p in front) == 1
    shared2 = next(p for p in front if p.stage == "fit 2 terms")
    layered2 = next(p for p in front if p.stage == "profile 2 terms")
    assert layered2.complexity == shared2.complexity + 2 and any(k.endswith("~slope") for k in layered2.theta)
    points = result.search["transfer"]["points"]
    assert all([c["role"] for c in p["cells"]] == ["train", "train", "select", "test"] for p in points)
    for f, p in zip(front, points):   # the front accuracy is the selection cell's
        sel = next(c for c in p["cells"] if c["role"] == "select")
        assert f.heldout_accuracy == pytest.approx(sel["score"])
    again = discover(s, checkpoint_dir=tmp_path)            # every stage replayed from transfer_search.json
    assert [p.theta for p in again.front] == [p.theta for p in front]


def test_a_support_that_diverges_fails_there_and_is_not_selected() -> None:
    search = TransferSearch(spec())
    calm = FitStage(kind="fit", label="calm", terms=["F0"], theta={"F0": 0.02}, episodes=1)
    wild = FitStage(kind="fit", label="wild", terms=["F0", "F3"], theta={"F0": 0.02, "F3": 50.0}, episodes=1)
    front, points = search.front([calm, wild])
    bad = points[1]
    assert bad.failed == [c["dataset"] + ", " + "-".join(map(str, c["widths"])) for c in CELLS]
    assert all(c.diverged == 4 and c.score == 0.0 for c in bad.cells)
    assert front[0].selected and not front[1].selected


def test_a_search_stopped_inside_its_second_fit_resumes_to_the_uninterrupted_front(tmp_path) -> None:
    """Stopped once two stages are logged (fit 1, screen 2), restarted on the same folder: the screen after the
    restart draws the uninterrupted run's episodes (the screener redraws the replayed screens), same front."""
    s = spec().model_copy(update={"search": spec().search.model_copy(update={"max_terms": 3})})
    whole = discover(s, checkpoint_dir=tmp_path / "whole")
    folder = tmp_path / "cut"

    def two_stages() -> bool:
        path = folder / "transfer_search.json"
        return path.exists() and len(json.loads(path.read_text())["stages"]) >= 2

    assert discover(s, checkpoint_dir=folder, should_stop=two_stages).stopped
    again = discover(s, checkpoint_dir=folder)
    assert again.search["resumed"]["stage"] == 3
    assert [(p.terms, p.theta, p.heldout_accuracy) for p in again.front] == \
        [(p.terms, p.theta, p.heldout_accuracy) for p in whole.front]


def test_refit_restarts_draw_their_own_streams_and_a_second_draw_of_a_cell_selects() -> None:
    """Two refits of each kind, each on its own episode stream (different θ); the train cell listed again as a
    selection cell on stream 1 scores other episodes than stream 0, and the front accuracy is stream 1's."""
    cell = {"dataset": "digits", "widths": [64, 12, 10]}
    s = spec(refit=True, refit_restarts=2)
    s = s.model_copy(update={"transfer": s.transfer.model_copy(update={"cells": [
        s.transfer.cells[0], s.transfer.cells[0].model_validate({**cell, "role": "select", "stream": 1})]})})
    result = discover(s)
    refits = [st["label"] for st in result.search["stages"] if st["label"].startswith("refit")]
    n = refits[0].split()[2]                               # the selected support's size
    assert refits == [f"refit warm {n} terms", f"refit scratch {n} terms", f"refit warm {n} terms #2",
                      f"refit scratch {n} terms #2"]
    thetas = {p.stage: p.theta for p in result.front}
    warm = [v for k, v in thetas.items() if k.startswith("refit warm")]
    assert len(warm) == 2 and warm[0] != warm[1]
    points = result.search["transfer"]["points"]
    for f, p in zip(result.front, points):
        train, select = p["cells"]
        assert select["cell"].endswith("episodes #1") and select["role"] == "select"
        assert train["per_episode"] != select["per_episode"]
        assert f.heldout_accuracy == pytest.approx(select["score"])
    assert sum(p.selected for p in result.front) == 1


def test_trials_fit_the_top_candidates_and_the_best_on_the_selection_cells_joins() -> None:
    """With 2 trials per step, both of the screen's top candidates are fitted and on the front; the path goes on
    from the one with the higher selection-cell accuracy."""
    s = spec(trials=2)
    s = s.model_copy(update={"search": s.search.model_copy(update={"max_terms": 3})})
    result = discover(s)
    labels = [st["label"] for st in result.search["stages"]]
    trials2 = [lb for lb in labels if lb.startswith("fit 2 terms + ")]
    trials3 = [lb for lb in labels if lb.startswith("fit 3 terms + ")]
    assert len(trials2) == 2 and len(trials3) == 2
    by_stage = {p.stage: p for p in result.front}
    winner = max((by_stage[lb] for lb in trials2), key=lambda p: p.heldout_accuracy)
    assert all(set(winner.terms) < set(by_stage[lb].terms) for lb in trials3)    # grown from the winner
    screened = next(st for st in result.search["screening"] if st["label"] == "screen for term 2")["scores"]
    top = sorted((t for t in screened if t != "F0"), key=screened.get, reverse=True)[:2]
    assert sorted(by_stage[lb].terms[-1] for lb in trials2) == sorted(top)


def test_a_selected_shared_point_of_a_layered_search_is_also_refit_layered_and_parsimony_decides() -> None:
    """Depth-profile search, shared point selected: the refits are warm and scratch in its layout plus a warm one
    in the layered layout (from that support's layered fit, full budget). Among the selected point and its refits,
    a layered one with the shared point's accuracy (zero slope: the same θ in every layer, bit for bit) loses to
    the simpler; a refit that diverges is never selected."""
    s = spec(coefficients="profile", refit=True)
    search = TransferSearch(s)
    shared = FitStage(kind="fit", label="fit 1 terms", terms=["F0"], theta={"F0": 0.02}, episodes=1)
    layered = FitStage(kind="fit", label="profile 1 terms", terms=["F0"], coefficients="profile",
                       theta={"F0": 0.02, "F0~slope": 0.005}, episodes=1)
    refits = search.refit(shared, [shared, layered])
    assert [(f.label, f.coefficients, f.episodes) for f in refits] == [
        ("refit warm 1 terms", "shared", 8), ("refit scratch 1 terms", "shared", 8),
        ("refit warm 1 terms profile", "profile", 8)]
    assert set(refits[2].theta) == {"F0", "F0~slope"} and refits[2].theta != layered.theta
    tied = FitStage(kind="fit", label="tied", terms=["F0"], coefficients="profile",
                    theta={"F0": 0.02, "F0~slope": 0.0}, episodes=1)
    wild = FitStage(kind="fit", label="wild", terms=["F0", "F3"], theta={"F0": 0.02, "F3": 50.0}, episodes=1)
    front, points = search.front([shared])
    front, points = search.refit_front(front, points, [tied, wild], 0)
    assert points[1].selection_accuracy == points[0].selection_accuracy and not points[2].selectable
    assert [p.selected for p in front] == [True, False, False]
