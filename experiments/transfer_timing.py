"""Time the cached path of the transfer suite at full size (docs/results.md, issue 26): the rule alone on the default
4-cell grid, 100 held-out episodes per cell (what score_with_baselines runs once the baselines are cached).

    nice -n 10 python -m experiments.transfer_timing            # cached path: the rule alone
    nice -n 10 python -m experiments.transfer_timing --first    # first run: BP and FA tuned on every cell too
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from discovery.benchmarks.registry import run_suite
from rules.rule import Rule


def main() -> None:
    stored = json.loads(Path("results/open_search/library_forward_seed0.json").read_text())["selected"]
    t0 = time.perf_counter()
    first = "--first" in sys.argv[1:]
    rep = run_suite("transfer", Rule(stored["theta"]), seed=0, threads=1,
                    overrides=None if first else {"baselines": []})
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_time_s": wall, "first_run": first, "entries": {
        e["learner"]: [(c["cell"], c["score"], c["diverged"]) for c in e["metrics"]["cells"]] for e in rep["entries"]}}))


if __name__ == "__main__":
    main()
