"""Time the cached path of the transfer suite at full size (docs/results.md, issue 26): the rule alone on the default
4-cell grid, 100 held-out episodes per cell (what score_with_baselines runs once the baselines are cached).

    nice -n 10 python -m experiments.transfer_timing
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from discovery.benchmarks.registry import run_suite
from rules.rule import Rule


def main() -> None:
    stored = json.loads(Path("results/open_search/library_forward_seed0.json").read_text())["selected"]
    t0 = time.perf_counter()
    rep = run_suite("transfer", Rule(stored["theta"]), seed=0, threads=1, overrides={"baselines": []})
    wall = time.perf_counter() - t0
    cells = rep["entries"][0]["metrics"]["cells"]
    print(json.dumps({"wall_time_s": wall, "cells": [(c["cell"], c["score"], c["diverged"]) for c in cells]}))


if __name__ == "__main__":
    main()
