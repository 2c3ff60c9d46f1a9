"""Reproduce the reward family's acceptance (docs/reward.md, docs/results.md "Reward-modulated family"):

1. ``discover --seed S``: the open search over the reward library (no hint: the 18 terms without the supervised
   error) on task 1, searched on the `fast` protocol, the front scored on the `shortened` protocol;
   writes results/reward/discover_seed{S}.json;
2. ``table --task T``: the selected rules of the discover runs beside FORCE, RMHL and SUPERTREX on task T, every
   learner's η tuned on the same grid and seeds on the `fast` protocol, scored on the `shortened` protocol on the
   test seeds (discovery.reward.compare); writes results/reward/table_task{T}.json;
3. ``report``: the markdown tables from the JSONs.

    OMP_NUM_THREADS=1 nice -n 19 python -m experiments.reward_search discover --seed 0 --N 100 --tag _fast
    N=500 experiments/reward_table_short.sh        # every table part, one process at a time
    python -m experiments.reward_search report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from discovery.analysis.stats import paired_difference
from discovery.results import jsonable
from discovery.reward.search import RewardSearch, RewardSearchConfig
from discovery.reward.sim import RewardEnv
from rules.reward import REWARD_POOLS, REWARD_TERMS, RMHL

OUT = Path("results/reward")


def discover(args: argparse.Namespace) -> dict:
    env = RewardEnv(task=args.task, N=args.N, protocol="fast")
    score_env = RewardEnv(task=args.task, N=args.N, protocol=args.score_protocol)
    base = 10_000 * args.seed
    cfg = RewardSearchConfig(max_terms=args.max_terms, grid=tuple(args.grid), top_m=args.top_m,
                             popsize=args.popsize, generations=args.generations,
                             search_seeds=tuple(base + i for i in range(args.search_seeds)), screen_seeds=1,
                             eval_seeds=tuple(base + 500 + i for i in range(args.eval_seeds)))
    t0 = time.perf_counter()
    search = RewardSearch(env, score_env, REWARD_POOLS[args.pool], cfg)
    front, fits = search.run()
    wall = time.perf_counter() - t0
    chosen = next(p for p in front if p.selected)
    result = {"args": vars(args), "wall_time_s": wall, "timing": search.log.timing,
              "simulations": search.log.simulations, "reservoir_steps": search.log.reservoir_steps,
              "front": [p.model_dump() for p in front], "selected": chosen.model_dump(),
              "rmhl_in_selected": RMHL in chosen.terms, "rmhl_coefficient": chosen.theta.get(RMHL),
              "screening": search.log.screening, "history": search.log.history,
              "fits": [{"terms": f.terms, "names": [REWARD_TERMS[t].name for t in f.terms], "theta": f.theta,
                        "train_deviation": f.train_deviation, "stage": f.stage} for f in fits]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"discover{args.tag}_seed{args.seed}.json").write_text(json.dumps(jsonable(result), indent=1))
    for p in front:
        names = {REWARD_TERMS[t].name: f"{v:.3g}" for t, v in p.theta.items()}
        print(f"{'*' if p.selected else ' '} {p.n_terms} terms {names} deviation "
              f"{1 - (p.heldout_accuracy or 0):.3f} ± {p.heldout_ci95 or 0:.3f}", flush=True)
    print(f"wall {wall:.0f}s timing {search.log.timing}", flush=True)
    return result


def table(args: argparse.Namespace) -> dict:
    """--part baselines: the library RMHL term and the seed's learners (no discovered rule needed); --part rules:
    the selected rules of the discover runs; both tuned and scored with the same config (seeds, grid)."""
    from discovery.reward.compare import BUILTIN, CompareConfig, builtin_entry, rule_entries
    from discovery.reward.search import ETA0

    cfg = CompareConfig(task=args.task, N=args.N, test_seeds=tuple(900 + i for i in range(args.test_seeds)),
                        tune_seeds=tuple(800 + i for i in range(args.tune_seeds)), grid=tuple(args.tune_grid),
                        score_protocol=args.score_protocol)
    t0, cpu0 = time.perf_counter(), time.process_time()
    dtag = args.tag if args.discover_tag is None else args.discover_tag
    if args.part == "rules":
        rules = {}
        for s in args.seeds:
            data = json.loads((OUT / f"discover{dtag}_seed{s}.json").read_text())
            rules[f"selected rule (seed {s})"] = data["selected"]["theta"]
        term = {"RMHL term (R − R̄)(z − z̄) rᵀ, tuned η": {RMHL: ETA0}} if args.with_rmhl_term else {}
        entries = rule_entries({**term, **rules}, cfg, set(rules))   # one simulation, repeated θ run once
    else:
        entries = rule_entries({"RMHL term (R − R̄)(z − z̄) rᵀ, tuned η": {RMHL: ETA0}}, cfg, set()) \
            if "rmhl_term" in args.learners else []
        for learner in [lr for lr in BUILTIN[args.task] if lr in args.learners]:
            print(f"tuning and scoring {learner}", flush=True)
            entries.append(builtin_entry(cfg, learner, tuning=_earlier_tuning(args.tuning_from, cfg, learner)))
    out = {"task": cfg.task, "N": cfg.N, "part": args.part, "tune_protocol": cfg.tune_protocol,
           "score_protocol": cfg.score_protocol, "tune_seeds": list(cfg.tune_seeds), "test_seeds": list(cfg.test_seeds),
           "grid": list(cfg.grid), "entries": entries, "wall_time_s": time.perf_counter() - t0,
           "cpu_time_s": time.process_time() - cpu0, "loadavg_end": list(os.getloadavg()),
           "discover_tag": dtag if args.part == "rules" else None}
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"table{args.tag}_task{args.task}_{args.part}" + ("" if args.part == "rules" else "_" + "_".join(args.learners))
    (OUT / f"{name}.json").write_text(json.dumps(jsonable(out), indent=1))
    for e in entries:
        print(f"{e['learner']}: ×{e['lr_scale']} {e['score']:.3f} {e['ci95']}", flush=True)
    return out


def _earlier_tuning(path: str | None, cfg: object, learner: str) -> list[float | None] | None:
    """The tuning curve of ``learner`` in an earlier table JSON of the same config (task, N, grid, tuning seeds
    and protocol), or None without --tuning-from."""
    if path is None:
        return None
    from discovery.reward.compare import LABEL

    d = json.loads(Path(path).read_text())
    same = (d["task"], d["N"], d["grid"], d["tune_seeds"], d["tune_protocol"]) == (
        cfg.task, cfg.N, list(cfg.grid), list(cfg.tune_seeds), cfg.tune_protocol)      # type: ignore[attr-defined]
    entry = next((e for e in d["entries"] if e["learner"] == LABEL[learner]), None)
    if not same or entry is None:
        raise SystemExit(f"{path}: not a {learner} tuning of this config")
    return entry["tuning"]["deviation"]


def report(_: argparse.Namespace) -> None:
    for path in sorted(OUT.glob("discover*_seed*.json")):
        d = json.loads(path.read_text())
        print(f"{path.name}: wall {d['wall_time_s']:.0f}s, RMHL in selected: {d['rmhl_in_selected']} "
              f"(θ = {d['rmhl_coefficient']})")
        for p in d["front"]:
            names = {REWARD_TERMS[t].name: f"{v:.3g}" for t, v in p["theta"].items()}
            m = p["rule"]["metrics"]
            print(f"  {'*' if p['selected'] else ' '} {names}: deviation {m['deviation']:.3f} "
                  f"[{m['deviation_ci95'][0]:.3f}, {m['deviation_ci95'][1]:.3f}] (train {m['train_deviation']:.3f})")
    tags = sorted({m.group(1) for f in OUT.glob("table*_task*_*.json") if (m := re.match(r"table(.*)_task\d_", f.name))})
    for task, tag in [(t, g) for t in (1, 2) for g in tags]:
        parts = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"table{tag}_task{task}_*.json"))]
        if not parts:
            continue
        walls = ", ".join(f"{d['part']} {d['wall_time_s']:.0f}s" + (f" (cpu {d['cpu_time_s']:.0f}s)" if
                          "cpu_time_s" in d else "") for d in parts)
        print(f"\ntask {task}, scored on {parts[0]['score_protocol']} (N = {parts[0]['N']}; wall {walls})\n"
              "| learner | tuned lr × | deviation (95% CI) | < 0.5 |")
        entries = [e for d in parts for e in d["entries"]]
        for e in entries:
            print(f"| {e['learner']} | {e['lr_scale']} | {e['score']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] | "
                  f"{e['n_satisfactory']}/{len(e['deviation_per_seed'])} |")
        refs = [e for e in entries if e["learner"].startswith("RMHL")]
        for e in [e for e in entries if e.get("kind") == "rule"]:     # paired: the same test seeds and noise
            for ref in refs:
                diff = paired_difference(e["deviation_per_seed"], ref["deviation_per_seed"])
                print(f"  {e['learner']} − {ref['learner']}: {diff.delta:+.3f} [{diff.ci95[0]:+.3f}, {diff.ci95[1]:+.3f}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("discover")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--task", type=int, default=1)
    d.add_argument("--N", type=int, default=200)
    d.add_argument("--pool", default="reward", choices=sorted(REWARD_POOLS))
    d.add_argument("--max-terms", type=int, default=2)
    d.add_argument("--grid", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    d.add_argument("--top-m", type=int, default=3)
    d.add_argument("--popsize", type=int, default=6)
    d.add_argument("--generations", type=int, default=4)
    d.add_argument("--search-seeds", type=int, default=2)
    d.add_argument("--eval-seeds", type=int, default=3)
    d.add_argument("--score-protocol", default="shortened", choices=["fast", "shortened", "full"])
    d.add_argument("--tag", default="", help="suffix of the output name, e.g. _fast")
    t = sub.add_parser("table")
    t.add_argument("--task", type=int, default=1)
    t.add_argument("--N", type=int, default=200)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--test-seeds", type=int, default=3)
    t.add_argument("--tune-seeds", type=int, default=2)
    t.add_argument("--tune-grid", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    t.add_argument("--part", choices=["baselines", "rules"], default="rules")
    t.add_argument("--learners", nargs="+", default=["rmhl_term", "force", "rmhl", "supertrex"])
    t.add_argument("--score-protocol", default="shortened", choices=["fast", "shortened", "full"])
    t.add_argument("--tag", default="", help="suffix of the discover / table names, e.g. _fast")
    t.add_argument("--discover-tag", default=None, help="suffix of the discover runs whose rules are scored "
                   "(default: --tag), e.g. _fast while --tag names this table")
    t.add_argument("--tuning-from", default=None, help="--part baselines: reuse the tuning curve of an earlier "
                   "table JSON of the same config (e.g. one whose entry was lost to a NaN), score only")
    t.add_argument("--with-rmhl-term", action="store_true", help="--part rules: the library RMHL term tuned and "
                   "scored in the same simulation as the rules")
    sub.add_parser("report")
    args = p.parse_args()
    {"discover": discover, "table": table, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
