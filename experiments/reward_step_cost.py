"""CPU cost per simulated step of the reward family's learners at reservoir size N (docs/results.md, issue 25):
the compiled reward-rule loop (discovery.reward.sim, a batch of 3 θ × 2 seeds) and the seed's SUPERTREX (task 2)
and FORCE (task 1) in discovery.reservoir.model (a batch of 3 seeds); process CPU time of a 1,500-step run minus
that of a 500-step run (reservoir construction cancels), per reservoir-step (rules) or per batch step (seed's).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 python -m experiments.reward_step_cost 1000 500 300
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from discovery.reservoir.model import run_reservoir
from discovery.reward.search import ETA0
from discovery.reward.sim import RewardEnv, simulate
from rules.reward import RMHL


def _cpu(f: Callable[[], object]) -> float:
    c = time.process_time()
    f()
    return time.process_time() - c


def main(sizes: list[int]) -> None:
    torch.set_num_threads(1)
    simulate(RewardEnv(task=1, N=50, periods_train=1, periods_test=1, period_steps=100), [RMHL],
             torch.tensor([[ETA0]]), [0])                                     # compile (numba cache)
    for N in sizes:
        r = [_cpu(lambda ps=ps: simulate(RewardEnv(task=2, N=N, periods_train=1, periods_test=1, period_steps=ps),
                                         [RMHL], torch.tensor([[ETA0]] * 3), [900, 901])) for ps in (500, 1500)]
        print(f"N={N} rule B=6: {(r[1] - r[0]) / 2000 / 6 * 1e6:.0f} us/reservoir-step", flush=True)
        for learner, task in (("supertrex", 2), ("force", 1)):
            r = [_cpu(lambda ps=ps: run_reservoir(task, learner, [900, 901, 902], 1, 1, ps, N=N, lr_scale=[1, 1, 1]))
                 for ps in (500, 1500)]
            print(f"N={N} {learner} B=3: {(r[1] - r[0]) / 2000 * 1e6:.0f} us/step", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000])
