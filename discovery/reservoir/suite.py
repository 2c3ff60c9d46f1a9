"""The ``reservoir-motor`` benchmark suite (docs/science.md S5): FORCE, RMHL and SUPERTREX on the three motor tasks
and any rule of the reward family (docs/reward.md) on tasks 1 and 2, every learner's learning rate tuned alike,
scored by the test-phase deviation (lower is better); registered by discovery.benchmarks.registry."""

from __future__ import annotations

from discovery.benchmarks.suite import Suite
from discovery.reservoir.model import DT, LAMBDA, P_CONNECT, PROTOCOLS, TAU

SUITE_CONFIGS: tuple[tuple[int, str, str], ...] = (
    (1, "force", "published"), (1, "rmhl", "published"), (1, "supertrex", "published"),
    (2, "rmhl", "published"), (2, "supertrex", "published"),
    (3, "rmhl", "published"), (3, "supertrex", "published"), (3, "supertrex", "fixed"))
LOCALITY = {"force": "global error", "rmhl": "reward-modulated", "supertrex": "reward-modulated"}


def read_reward_rule(rule: object) -> object:
    """A reward rule (rules.reward.RewardRule) from what a benchmark is given: the rule, its text ('reward/v1: …' or
    '0.0025*rmhl') or a stored rule dict; ValueError for a rule of another family."""
    from rules.reward import RewardRule, is_reward_rule_dict, parse_reward

    if isinstance(rule, RewardRule):
        return rule
    if isinstance(rule, str):
        try:
            return parse_reward(rule)
        except ValueError:
            raise ValueError("it is not a reward rule (a reward rule reads 'reward/v1: …' or a sum of "
                             "<number>*<reward term>, e.g. '0.0025*rmhl')") from None
    if isinstance(rule, dict) and is_reward_rule_dict(rule):
        return RewardRule(rule.get("coefficients_raw") or rule["coefficients"], rule.get("name"))
    raise ValueError(f"a {getattr(rule, 'FAMILY', type(rule).__name__)} rule is not a reward rule")


def reservoir_suite_runner(suite: object, ctx: object) -> dict:
    """discovery.benchmarks.registry runner: every (task, learner, setting) of the suite and a given reward rule on
    its tasks, each learner's learning rate tuned over the same grid on the same tuning seeds (`fast` protocol)
    and scored on the test seeds (`shortened`; discovery.reward.compare). Score: test-phase deviation (mean over
    seeds ± 95% t-interval; lower is better)."""
    from discovery.reward.compare import CompareConfig, builtin_entry, rule_entries

    p = {**suite.network, **suite.data, **suite.protocol}                      # type: ignore[attr-defined]
    seed = int(ctx.seed)                                                       # type: ignore[attr-defined]
    keys = ("periods_train", "periods_test", "period_steps")
    sizes = {k: int(p[k]) for k in keys} if p.get("same_sizes") else {}   # tiny: both protocols at these periods

    def config(task: int) -> CompareConfig:
        return CompareConfig(task=task, N=int(p["N"]), tune_protocol=str(p["tune_protocol"]),
                             score_protocol=str(p["score_protocol"]), grid=tuple(float(g) for g in p["grid"]),
                             tune_seeds=tuple(1000 * seed + 100 + i for i in range(int(p["tune_seeds"]))),
                             test_seeds=tuple(1000 * seed + i for i in range(int(p["seeds"]))), sizes=sizes)

    wanted = set(suite.baselines)                                              # type: ignore[attr-defined]
    jobs = [tuple(c) for c in p["configs"] if _name(*c) in wanted]
    notes = [("score = test-phase deviation mean √(low-passed squared error); lower is better, < 0.5 is "
              "satisfactory; every learner's learning rate (κ of RMHL / SUPERTREX, P₀ of FORCE, the whole θ of "
              f"a reward rule) tuned over ×{list(p['grid'])} on the {p['tune_protocol']} protocol on the same "
              "tuning seeds")]
    rule = None
    if ctx.rule is not None:                                                   # type: ignore[attr-defined]
        try:
            rule = read_reward_rule(ctx.rule)                                  # type: ignore[attr-defined]
        except (ValueError, KeyError, TypeError) as exc:
            notes.append(f"the given rule was not run: {exc}")
    rule_tasks = [int(t) for t in p["rule_tasks"]] if rule is not None else []
    total = len(jobs) + len(rule_tasks)
    entries = []
    for k, (task, learner, setting) in enumerate(jobs):
        ctx.emit({"stage": "score", "learner": _name(task, learner, setting), "done": k, "total": total})  # type: ignore[attr-defined]
        entry = builtin_entry(config(int(task)), learner, setting, _name(task, learner, setting))
        entry.update(metrics={"deviation_per_seed": entry["deviation_per_seed"], "n_satisfactory":
                              entry["n_satisfactory"], "lr_scale": entry["lr_scale"]},
                     hyperparameters={"task": task, "setting": setting, "N": p["N"], "lr_scale": entry["lr_scale"]},
                     cost_per_sample_ms=None)
        entries.append(entry)
    for j, task in enumerate(rule_tasks):
        ctx.emit({"stage": "score", "learner": f"rule task{task}", "done": len(jobs) + j, "total": total})  # type: ignore[attr-defined]
        try:
            (entry,) = rule_entries({f"rule task{task}": rule.coefficients}, config(task), {f"rule task{task}"})  # type: ignore[attr-defined]
        except ValueError as exc:
            notes.append(f"the rule was not run on task {task}: {exc}")
            continue
        entry.update(metrics={"deviation_per_seed": entry["deviation_per_seed"], "n_satisfactory":
                              entry["n_satisfactory"], "lr_scale": entry["lr_scale"]},
                     hyperparameters={"task": task, "N": p["N"], "lr_scale": entry["lr_scale"]},
                     rule=rule.to_dict(), cost_per_sample_ms=None)                 # type: ignore[attr-defined]
        entries.append(entry)
    return {"entries": entries, "notes": notes}


def _name(task: int, learner: str, setting: str) -> str:
    return f"{learner} task{task}" + ("" if setting == "published" else f" ({setting})")


def reservoir_suite() -> Suite:
    """The ``reservoir-motor`` suite (S5), version 2: FORCE / RMHL / SUPERTREX on the three motor tasks and a given
    reward rule on tasks 1–2, learning rates tuned over ×{0.25, 1, 4} on the `fast` protocol (2 tuning seeds),
    scored on the `shortened` protocol with 3 seeds (tiny: N = 60, 2 + 1 periods of 300 steps for both protocols,
    2 seeds, 1 tuning seed)."""
    proto = PROTOCOLS["shortened"]
    return Suite(
        name="reservoir-motor", version="2", kind="reservoir", metric="test-phase deviation",
        higher_is_better=False, rule_family="reward",
        title="Reservoir motor learning: FORCE, RMHL, SUPERTREX and reward rules (S5)",
        description="Chaotic rate reservoir (λ = 1.5, p = 0.1) drawing the butterfly directly (task 1) or with a "
                    "2- or 3-joint arm (tasks 2, 3); readouts learned by FORCE, RMHL, SUPERTREX or a reward-"
                    "modulated rule of the reward family, each learner's learning rate tuned alike.",
        network={"N": 1000, "lambda": LAMBDA, "p": P_CONNECT, "dt": DT, "tau": TAU},
        data={"target": "butterfly", "tasks": [1, 2, 3]},
        protocol={**proto, "seeds": 3, "configs": [list(c) for c in SUITE_CONFIGS], "tune_protocol": "fast",
                  "score_protocol": "shortened", "grid": [0.25, 1.0, 4.0], "tune_seeds": 2, "rule_tasks": [1, 2], "same_sizes": False},
        metrics=["deviation", "n_satisfactory", "lr_scale"],
        baselines=sorted({_name(t, lr, s) for t, lr, s in SUITE_CONFIGS}),
        tiny={"network": {"N": 60}, "protocol": {"periods_train": 2, "periods_test": 1, "period_steps": 300,
                                                 "seeds": 2, "tune_seeds": 1, "same_sizes": True}},
        protocol_text=("S5 reservoir, N={network[N]}: learning rates tuned over ×{protocol[grid]} on the "
                       "{protocol[tune_protocol]} protocol, then {protocol[periods_train]} training + "
                       "{protocol[periods_test]} test periods of {protocol[period_steps]} steps (dt = 0.2) over "
                       "{protocol[seeds]} seeds; test phase with W_exp = 0, frozen weights and teacher-forced "
                       "feedback; score = mean √(low-passed squared error) in the test phase (lower is better)."),
        runner=reservoir_suite_runner,
    )
