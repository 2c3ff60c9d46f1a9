"""The ``reservoir-motor`` benchmark suite (docs/science.md S5): FORCE, RMHL and SUPERTREX on the three motor tasks,
scored by the test-phase deviation (lower is better); registered by discovery.benchmarks.registry."""

from __future__ import annotations

from discovery.analysis.stats import t_interval
from discovery.benchmarks.suite import Suite
from discovery.reservoir.model import DT, LAMBDA, P_CONNECT, PROTOCOLS, TAU, run_reservoir

SUITE_CONFIGS: tuple[tuple[int, str, str], ...] = (
    (1, "force", "published"), (1, "rmhl", "published"), (1, "supertrex", "published"),
    (2, "rmhl", "published"), (2, "supertrex", "published"),
    (3, "rmhl", "published"), (3, "supertrex", "published"), (3, "supertrex", "fixed"))
LOCALITY = {"force": "global error", "rmhl": "reward-modulated", "supertrex": "reward-modulated"}


def reservoir_suite_runner(suite: object, ctx: object) -> dict:
    """discovery.benchmarks.registry runner: every (task, learner, setting) of the suite on the same seeds; the score is the
    test-phase deviation (mean over seeds ± 95% t-interval; lower is better)."""
    p = {**suite.network, **suite.data, **suite.protocol}                      # type: ignore[attr-defined]
    seeds = [1000 * int(ctx.seed) + i for i in range(int(p["seeds"]))]         # type: ignore[attr-defined]
    jobs = [tuple(c) for c in p["configs"]]
    entries = []
    for k, (task, learner, setting) in enumerate(jobs):
        name = f"{learner} task{task}" + ("" if setting == "published" else f" ({setting})")
        ctx.emit({"stage": "score", "learner": name, "done": k, "total": len(jobs)})  # type: ignore[attr-defined]
        res = run_reservoir(int(task), learner, seeds, int(p["periods_train"]), int(p["periods_test"]),
                            int(p["period_steps"]), setting, int(p["N"]))
        mean, lo, hi = t_interval(res["deviation"])
        entries.append({
            "learner": name, "kind": "baseline", "score": mean, "ci95": [lo, hi], "ci95_halfwidth": (hi - lo) / 2,
            "episodes": len(seeds),
            "metrics": {"deviation_per_seed": res["deviation"],
                        "n_satisfactory": res["n_satisfactory"], "steps_per_s": res["steps_per_s"]},
            "locality": LOCALITY[learner], "cost_per_sample_ms": 1000.0 / res["steps_per_s"] / len(seeds),
            "hyperparameters": {"task": task, "setting": setting, "N": p["N"]}, "tuning": None,
        })
    notes = [("score = test-phase deviation mean √(low-passed squared error); lower is better, < 0.5 is "
              "satisfactory; cost_per_sample_ms is per simulation step and seed")]
    if ctx.rule is not None:                                                   # type: ignore[attr-defined]
        notes.append("this suite scores the built-in reservoir learners only; the given rule was not run")
    return {"entries": entries, "notes": notes}


def reservoir_suite() -> Suite:
    """The ``reservoir-motor`` suite (S5): FORCE / RMHL / SUPERTREX on the three motor tasks, `shortened`
    protocol with 3 seeds (tiny: N = 100, 2 + 1 periods of 500 steps, 2 seeds)."""
    proto = PROTOCOLS["shortened"]
    return Suite(
        name="reservoir-motor", version="1", kind="reservoir", metric="test-phase deviation",
        higher_is_better=False, rule_family=None,
        title="Reservoir motor learning: FORCE, RMHL, SUPERTREX (S5)",
        description="Chaotic rate reservoir (λ = 1.5, p = 0.1) drawing the butterfly directly (task 1) or with a "
                    "2- or 3-joint arm (tasks 2, 3); readouts learned by FORCE, RMHL or SUPERTREX.",
        network={"N": 1000, "lambda": LAMBDA, "p": P_CONNECT, "dt": DT, "tau": TAU},
        data={"target": "butterfly", "tasks": [1, 2, 3]},
        protocol={**proto, "seeds": 3, "configs": [list(c) for c in SUITE_CONFIGS]},
        metrics=["deviation", "n_satisfactory", "steps_per_s"],
        baselines=sorted({f"{lr} task{t}" for t, lr, _ in SUITE_CONFIGS}),
        tiny={"network": {"N": 100}, "protocol": {"periods_train": 2, "periods_test": 1, "period_steps": 500,
                                                  "seeds": 2}},
        protocol_text=("S5 reservoir, N={network[N]}: {protocol[periods_train]} training + {protocol[periods_test]} "
                       "test periods of {protocol[period_steps]} steps (dt = 0.2) over {protocol[seeds]} seeds; test "
                       "phase with W_exp = 0, frozen weights and teacher-forced feedback; score = mean √(low-passed "
                       "squared error) in the test phase (lower is better)."),
        runner=reservoir_suite_runner,
    )
