"""The tiny fronts of the unsupervised and reward families (the specs of tests/test_unsupervised.py and
tests/test_reward.py), as JSON: run on two commits to compare a refactor of their search (docs/results.md, "one
family contract").

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m experiments.family_fronts results/families/fronts_after.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from discovery.goal import parse_goal
from discovery.router import discover
from discovery.spec import DiscoverySpec

UNSUPERVISED_GOAL = "tiny find an unsupervised hebbian rule that extracts principal components"
REWARD_RULE = {"N": 40, "periods_train": 2, "periods_test": 1, "period_steps": 200, "popsize": 3, "generations": 2,
               "top_m": 2, "search_seeds": 1, "eval_seeds": 2, "grid": [1.0, 4.0]}


def specs() -> dict[str, DiscoverySpec]:
    return {"unsupervised": parse_goal(UNSUPERVISED_GOAL).spec,
            "reward": DiscoverySpec.model_validate({"task": {"kind": "reservoir-motor"}, "rule": REWARD_RULE,
                                                    "search": {"method": "forward", "max_terms": 2}})}


def main() -> None:
    torch.set_num_threads(1)
    out = {}
    for name, spec in specs().items():
        t0 = time.perf_counter()
        result = discover(spec)
        out[name] = {"wall_s": time.perf_counter() - t0,
                     "front": [{"terms": p.terms, "theta": p.theta, "score": p.heldout_accuracy,
                                "ci95": p.heldout_ci95, "selected": p.selected, "stage": p.stage}
                               for p in result.front]}
        print(name, json.dumps(out[name]["front"]), flush=True)
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
