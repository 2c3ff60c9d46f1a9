"""The first tuning of a suite's baselines as Ray tasks (workers.baseline_tasks), at tiny size, on a local Ray of
this process: the fan-out picks the points and scores of the serial tuning, and stops when cancelled."""

from __future__ import annotations

from typing import Any

import pytest

from discovery.benchmarks.cache import BaselineSet, tune_serial
from tests.test_benchmark_cache import _strip

pytestmark = pytest.mark.usefixtures("one_torch_thread", "ray_local")


@pytest.fixture(scope="module")
def fa5_baselines() -> BaselineSet:
    return tune_serial("fa5-online", tiny=True, seed=0, threads=1)

def test_fanout_tuning_equals_the_serial_tuning(fa5_baselines: BaselineSet) -> None:
    from workers.baseline_tasks import tune_fanout

    events: list[dict[str, Any]] = []
    fanned = tune_fanout("fa5-online", tiny=True, seed=0, progress=lambda e: events.append(e.model_dump()))
    assert fanned.tuned_with == "fan-out" and fanned.key == fa5_baselines.key
    assert _strip(fanned.entries) == _strip(fa5_baselines.entries)  # same chosen points, same scores
    assert {e["phase"] for e in events} == {"tune", "score"}
    assert events[-1]["fraction"] == pytest.approx(1.0)
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions)


def test_fanout_stops_when_cancelled() -> None:
    from workers.baseline_tasks import BenchmarkCancelled, tune_fanout

    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(BenchmarkCancelled):
        tune_fanout("fa5-online", tiny=True, seed=1, should_stop=stop)

