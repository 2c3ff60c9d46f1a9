"""The golden tiny discovery and tiny benchmark: produced by the code before a refactor, compared bit for bit after.

``python -m tests.golden.golden --write`` (from the repository root, one torch thread) rewrites the two JSON files;
``tests/test_golden.py`` reruns both and compares every field except the timings. Floats are compared through their
``repr`` (JSON keeps the shortest repr that round-trips), so a change in the last bit fails the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
GOAL = "find a plasticity rule for depth-2 online learning under feedback alignment on synthetic data, tiny"
SUITE = "fa5-online"
EXPRESSION = "-0.012*e*x.T + 0.065*e*e_pre.T"
#: fields that measure the machine, not the numerics
VOLATILE = {"wall_time_s", "baseline_wall_time_s", "rule_wall_time_s", "cost_per_step_ms", "cost_per_sample_ms",
            "torch_threads", "device"}


def strip(value: Any) -> Any:
    """``value`` without the volatile fields, at any depth."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def tiny_discovery() -> Any:
    """The goal's tiny open search, run by the engine in this process, as plain JSON."""
    import torch

    from discovery.goal import parse_goal
    from discovery.results import jsonable
    from discovery.router import discover

    torch.set_num_threads(1)
    spec = parse_goal(GOAL).spec
    return strip(jsonable(discover(spec)))


def tiny_benchmark(database_url: str) -> Any:
    """The tiny suite for one expression, baselines tuned into a fresh database, as plain JSON."""
    import torch

    from rules.recurrent import parse_rule_text
    from service.db.repositories.baselines import local_benchmark

    torch.set_num_threads(1)
    report = local_benchmark(database_url, SUITE, parse_rule_text(EXPRESSION), tiny=True, seed=0)
    return strip(report.to_json())


def _fresh_sqlite(folder: Path) -> str:
    from sqlalchemy import create_engine

    from service.db.migrate import upgrade

    url = f"sqlite:///{folder / 'golden.db'}"
    upgrade(create_engine(url))
    return url


def main() -> None:
    import tempfile

    if "--write" not in sys.argv:
        raise SystemExit("usage: python -m tests.golden.golden --write")
    (HERE / "discovery.json").write_text(json.dumps(tiny_discovery(), indent=1, sort_keys=True))
    with tempfile.TemporaryDirectory() as tmp:
        (HERE / "benchmark.json").write_text(json.dumps(tiny_benchmark(_fresh_sqlite(Path(tmp))), indent=1,
                                                        sort_keys=True))


if __name__ == "__main__":
    main()
