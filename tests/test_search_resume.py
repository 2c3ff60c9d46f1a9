"""Honest, exact resume of an open search (issue 29): a search stopped (or crashed) inside a fit stage and resumed
from the same checkpoint folder reports the job's episode where it resumed (finished stages + the episodes done
inside the interrupted stage), says so in a ProgressEvent, and ends with the uninterrupted run's front, bit for
bit (the screener's sampler and generator state is checkpointed too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from discovery.results import ProgressEvent
from discovery.router import discover
from discovery.search.open_search import SCREENER_FILE
from discovery.spec import DiscoverySpec

EVERY = 2


def _spec() -> DiscoverySpec:
    """Forward selection over the 16-term library: fit 1 term (6 episodes), screen (2), fit 2 terms (6), screen (2),
    fit 3 terms (6); the job's episodes 0–5, 6–7, 8–13, 14–15, 16–21."""
    return DiscoverySpec.model_validate({
        "network": {"widths": [64, 12, 10], "feedback": "fa"},
        "task": {"dataset": "digits", "shots": 4, "queries": 3},
        "rule": {"pool": "library"},
        "meta": {"episodes": 24, "eval_episodes": 5, "dtype": "float64", "term_scale": "norm",
                 "checkpoint_every": EVERY},
        "search": {"method": "forward", "max_terms": 3, "screen_episodes": 2}})


def _front(res) -> list[tuple]:
    return [(p.terms, p.theta, p.heldout_accuracy, p.heldout_ci95, p.heldout_episodes, p.selected)
            for p in res.front]


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return discover(_spec(), checkpoint_dir=tmp_path_factory.mktemp("whole"))


def test_stopped_mid_stage_resumes_at_its_episode_with_the_same_front(uninterrupted, tmp_path: Path) -> None:
    seen: list[ProgressEvent] = []

    def stop() -> bool:          # polled before each meta-step: stop after the job's episode 11 (stage 3, 4th step)
        return bool(seen) and seen[-1].episode == 11 and seen[-1].phase == "fit 2 terms"

    first = discover(_spec(), progress=seen.append, checkpoint_dir=tmp_path, should_stop=stop)
    assert first.stopped and first.resumed_from_episode is None and not first.front
    assert (tmp_path / "stage_1" / SCREENER_FILE).exists()
    events: list[ProgressEvent] = []
    again = discover(_spec(), progress=events.append, checkpoint_dir=tmp_path)
    assert not again.stopped
    assert again.resumed_from_episode == 11                 # 6 (fit 1) + 2 (screen) + 3 done inside fit 2 terms
    assert events[0].phase == "resumed stage 3 (fit 2 terms) at episode 11" and events[0].episode == 11
    assert events[1].episode == 12 and events[1].phase == "fit 2 terms"
    assert again.search["resumed"] == {"stage": 3, "label": "fit 2 terms", "episode": 11, "within_stage": 3}
    assert again.search["episodes"] == uninterrupted.search["episodes"]
    assert _front(again) == _front(uninterrupted)           # terms, θ, held-out numbers: bit for bit
    assert again.theta == uninterrupted.theta
    assert [h.theta for h in again.history] == [h.theta for h in uninterrupted.history]


def test_crash_resumes_from_the_last_checkpoint_with_the_same_front(uninterrupted, tmp_path: Path) -> None:
    """A crash (no final save) inside the last fit: the resumed attempt starts at that stage's last checkpoint,
    within checkpoint_every of the crash, and redoes the lost episodes identically."""

    def crash(event: ProgressEvent) -> None:
        if event.episode == 19 and event.phase == "fit 3 terms":
            raise _Crash

    with pytest.raises(_Crash):
        discover(_spec(), progress=crash, checkpoint_dir=tmp_path)
    events: list[ProgressEvent] = []
    again = discover(_spec(), progress=events.append, checkpoint_dir=tmp_path)
    assert 19 - EVERY <= again.resumed_from_episode <= 19
    assert again.resumed_from_episode == 16 + 2              # fit 3 terms checkpointed after its 2nd episode
    assert events[0].phase == f"resumed stage 5 (fit 3 terms) at episode {again.resumed_from_episode}"
    assert _front(again) == _front(uninterrupted)
    assert again.theta == uninterrupted.theta


def test_screens_after_a_restart_draw_the_uninterrupted_episodes(uninterrupted, tmp_path: Path) -> None:
    """Stopped right after the first screen: the second screen (run by the resumed attempt) must continue the
    screener's streams, so its scores equal the uninterrupted run's; also without screener.pt (an older folder)."""
    for drop_state in (False, True):
        folder = tmp_path / str(drop_state)
        seen: list[ProgressEvent] = []
        first = discover(_spec(), progress=seen.append, checkpoint_dir=folder,
                         should_stop=lambda: bool(seen) and seen[-1].phase == "fit 2 terms")
        assert first.stopped
        if drop_state:
            (folder / "stage_1" / SCREENER_FILE).unlink()
        again = discover(_spec(), checkpoint_dir=folder)
        assert again.resumed_from_episode == 9
        assert again.search["screening"] == uninterrupted.search["screening"]
        assert _front(again) == _front(uninterrupted)
