"""Reward rules beside FORCE, RMHL and SUPERTREX on one motor task, η tuned on the same budget for every learner
(docs/reward.md#scoring-beside-the-seeds-learners).

Tuning: every learner runs on the tuning protocol (`fast`) on the same tuning seeds at each multiplier of the same
grid, applied to its learning rate: the whole θ of a reward rule (θ ← gθ), the library's RMHL term's η₀ = 5κ, the
exploratory κ of the seed's RMHL and SUPERTREX, P₀ of FORCE (its RLS step; task 1 only); the multiplier with the
lowest mean deviation is kept. Scoring: each learner at its tuned multiplier on the score protocol (`shortened`)
on the test seeds (disjoint from the tuning and search seeds): test-phase deviation per seed, mean ± 95 %
t-interval (discovery.analysis.stats), n_satisfactory (< 0.5). Reward rules are batched in one simulation
(discovery.reward.sim); the seed's learners run in discovery.reservoir.model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from discovery.analysis.stats import t_interval
from discovery.reservoir.model import SATISFACTORY, run_reservoir
from discovery.reward.search import ETA0
from discovery.reward.sim import CAP, RewardEnv, SimResult, simulate
from rules.reward import REWARD_TERMS, RMHL

#: the seed's learners per task (FORCE needs the target output: task 1 only)
BUILTIN: dict[int, tuple[str, ...]] = {1: ("force", "rmhl", "supertrex"), 2: ("rmhl", "supertrex")}
LABEL = {"force": "FORCE", "rmhl": "RMHL (seed, tuned κ)", "supertrex": "SUPERTREX (tuned κ)"}


@dataclass(frozen=True)
class CompareConfig:
    """Task, reservoir size, protocols, seeds and the shared tuning grid; ``sizes`` overrides the periods of both
    protocols (tests: {"periods_train": 2, "periods_test": 1, "period_steps": 300})."""

    task: int = 1
    N: int = 1000
    tune_protocol: str = "fast"
    score_protocol: str = "shortened"
    tune_seeds: tuple[int, ...] = (800, 801)
    test_seeds: tuple[int, ...] = (900, 901, 902)
    grid: tuple[float, ...] = (0.25, 1.0, 4.0)
    builtins: tuple[str, ...] | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def env(self, protocol: str) -> RewardEnv:
        return RewardEnv(task=self.task, N=self.N, protocol=protocol, **self.sizes)


def _entry(name: str, kind: str, g: float, devs: list[float], tuning: dict[str, Any], extra: dict[str, Any]
           ) -> dict[str, Any]:
    mean, lo, hi = t_interval(devs)
    return {"learner": name, "kind": kind, "score": mean, "ci95": [lo, hi], "ci95_halfwidth": (hi - lo) / 2,
            "episodes": len(devs), "lr_scale": g, "deviation_per_seed": devs,
            "n_satisfactory": int(sum(v < SATISFACTORY for v in devs)), "tuning": tuning, **extra}


def _builtin_run(cfg: CompareConfig, learner: str, setting: str, protocol: str, seeds: list[int],
                 scales: list[float]) -> list[float]:
    pt, pe, ps = cfg.env(protocol).sizes
    res = run_reservoir(cfg.task, learner, seeds, pt, pe, ps, setting, cfg.N, lr_scale=scales)  # type: ignore[arg-type]
    # a run whose readout diverged (NaN / inf deviation) scores CAP, as a diverged reward rule does
    return [float(v) if math.isfinite(v) else CAP for v in res["deviation"]]


def builtin_entry(cfg: CompareConfig, learner: str, setting: str = "published", name: str | None = None,
                  tuning: list[float | None] | None = None) -> dict[str, Any]:
    """One of the seed's learners: its learning rate tuned over the grid on the tuning seeds (one batch), then
    scored at the best multiplier on the test seeds. ``tuning``: the mean tuning deviation per multiplier of an
    earlier run of this config (None / NaN = diverged, read as CAP), used instead of running the tuning again."""
    G = list(cfg.grid)
    if tuning is None:
        seeds = [s for _ in G for s in cfg.tune_seeds]
        scales = [g for g in G for _ in cfg.tune_seeds]
        devs = torch.tensor(_builtin_run(cfg, learner, setting, cfg.tune_protocol, seeds, scales)).view(len(G), -1)
    else:
        if len(tuning) != len(G):
            raise ValueError(f"tuning: one deviation per multiplier of {G} expected, got {tuning}")
        devs = torch.tensor([[CAP if v is None or not math.isfinite(v) else float(v)] for v in tuning])
    g = G[int(devs.mean(1).argmin())]
    test = _builtin_run(cfg, learner, setting, cfg.score_protocol, list(cfg.test_seeds), [g] * len(cfg.test_seeds))
    return _entry(name or LABEL[learner], "baseline", g, test,
                  {"grid": G, "deviation": devs.mean(1).tolist(), "protocol": cfg.tune_protocol},
                  {"locality": "global error" if learner == "force" else "reward-modulated"})


def _simulate_unique(env: RewardEnv, terms: list[str], theta: torch.Tensor, seeds: list[int]) -> SimResult:
    """``simulate`` of the distinct rows of θ only (equal to 12 significant digits, e.g. a rule that is RMHL at
    4 η₀ beside the RMHL term tuned ×4), the result spread back to every row: rows of one seed share reservoir
    and noise (common random numbers), so a repeated row's result is the same."""
    keys = [tuple(f"{v:.12g}" for v in row.tolist()) for row in theta]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    uniq = sorted(first.values())
    res = simulate(env, terms, theta[uniq], seeds)
    back = torch.tensor([uniq.index(first[k]) for k in keys])
    return SimResult(res.deviation[back], res.diverged[back], res.wall_s, res.steps,
                     {**res.extra, "rows_simulated": len(uniq)})


def rule_entries(learners: Mapping[str, Mapping[str, float]], cfg: CompareConfig, rule_names: set[str]
                 ) -> list[dict[str, Any]]:
    """Reward learners (name → θ by term id): every learner × multiplier tuned in one simulation, all scored at
    their best multiplier in another; kind "rule" for the names in ``rule_names``, else "baseline"."""
    terms = list(dict.fromkeys(t for th in learners.values() for t in th))
    if cfg.task != 1 and any(REWARD_TERMS[t].supervised for t in terms):
        raise ValueError("a rule with the output error z − f runs on task 1 only")
    names, G = list(learners), list(cfg.grid)
    base = torch.tensor([[learners[n].get(t, 0.0) for t in terms] for n in names], dtype=torch.float64)
    tune = _simulate_unique(cfg.env(cfg.tune_protocol), terms, torch.cat([base * g for g in G]),
                            list(cfg.tune_seeds)).deviation.mean(1).view(len(G), -1)
    best = {n: int(tune[:, i].argmin()) for i, n in enumerate(names)}
    theta = torch.stack([base[i] * G[best[n]] for i, n in enumerate(names)])
    res = _simulate_unique(cfg.env(cfg.score_protocol), terms, theta, list(cfg.test_seeds))
    entries = []
    for i, n in enumerate(names):
        tuning = {"grid": G, "deviation": tune[:, i].tolist(), "protocol": cfg.tune_protocol}
        coefs = {t: float(theta[i, k]) for k, t in enumerate(terms) if theta[i, k] != 0}
        entries.append(_entry(n, "rule" if n in rule_names else "baseline", G[best[n]], res.deviation[i].tolist(),
                              tuning, {"locality": "reward-modulated", "coefficients": coefs,
                                       "names": {t: REWARD_TERMS[t].name for t in coefs},
                                       "diverged": int(res.diverged[i].sum())}))
    return entries


def compare(rules: Mapping[str, Mapping[str, float]], cfg: CompareConfig,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Entries for every rule (name → θ by term id), the library RMHL term and the seed's learners."""
    say = progress or (lambda _m: None)
    learners = {**{k: dict(v) for k, v in rules.items()}, "RMHL term (R − R̄)(z − z̄) rᵀ, tuned η": {RMHL: ETA0}}
    say(f"tuning and scoring {len(learners)} reward learners")
    entries = rule_entries(learners, cfg, set(rules))
    for learner in cfg.builtins if cfg.builtins is not None else BUILTIN[cfg.task]:
        say(f"tuning and scoring {learner}")
        entries.append(builtin_entry(cfg, learner))
    return {"task": cfg.task, "N": cfg.N, "tune_protocol": cfg.tune_protocol, "score_protocol": cfg.score_protocol,
            "tune_seeds": list(cfg.tune_seeds), "test_seeds": list(cfg.test_seeds), "grid": list(cfg.grid),
            "entries": entries}
