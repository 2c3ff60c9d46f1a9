"""The multi-task acceptance of issue 26 (docs/results.md, "Rules that transfer"): an open search meta-trained on
mnist5k at depths 3, 5, 7, selected on depths 4 and 6, tested on digits28 at depths 3, 5, 7 (5-way 50-shot,
held-out fraction 0.4); then the selected rule's fixed θ on all eight cells beside BP with its own θ0 meta-tuned
per cell (the ``transfer`` suite), Δ = rule − BP paired per cell with its 95 % t-interval.

    nice -n 10 python -m experiments.transfer_search --seeds 0 --episodes 600 --out results/transfer

``--coefficients profile`` adds the depth-profile variant of every support (reported beside the shared one);
``--refit`` refits the selected support alone with the full budget (warm and from scratch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from discovery.benchmarks.cache import compare_cells
from discovery.benchmarks.registry import run_suite
from discovery.results import FrontPoint
from discovery.router import discover
from discovery.spec import DiscoverySpec
from discovery.transfer.layered import LayeredRule
from experiments.open_search import add_fit_options, fit_options, printer
from rules.rule import Rule

CELLS = ([{"dataset": "mnist5k", "depth": d, "role": "train"} for d in (3, 5, 7)]
         + [{"dataset": "mnist5k", "depth": d, "role": "select"} for d in (4, 6)]
         + [{"dataset": "digits28", "depth": d, "role": "test"} for d in (3, 5, 7)])


def search_spec(seed: int, args: argparse.Namespace) -> dict:
    """The S3 protocol (lr 1e-3, θ0 = 1e-3, term_scale norm, one-episode meta-steps) over the task distribution."""
    return {"network": {"widths": [784, 170, 130, 100, 70, 10], "feedback": "fa"},
            "task": {"dataset": "mnist5k", "ways": 5, "shots": 50, "queries": 10, "heldout_fraction": 0.4},
            "rule": {"pool": "library"},
            "search": {"method": "forward", "max_terms": args.max_terms, "front_eval_episodes": args.eval_episodes},
            "meta": {"episodes": args.episodes, "meta_batch": args.meta_batch, "lr": 1e-3, "seed": seed,
                     "term_scale": "norm", "eval_episodes": args.eval_episodes, **fit_options(args)},
            "transfer": {"cells": CELLS, "coefficients": args.coefficients, "refit": args.refit,
                         "objective": args.objective, "quantile": args.quantile, "screen": args.screen,
                         **transfer_options(args)}}


def add_transfer_options(ap: argparse.ArgumentParser) -> None:
    """``--trials`` and ``--refit-restarts`` (discovery.transfer.spec.TransferSpec), shared by the transfer scripts."""
    ap.add_argument("--trials", type=int, default=1,
                    help="candidates fitted per forward step; the best on the selection cells joins")
    ap.add_argument("--refit-restarts", type=int, default=1, help="refits of each kind, each on its own stream")


def transfer_options(args: argparse.Namespace) -> dict:
    return {"trials": args.trials, "refit_restarts": args.refit_restarts}


def suite_overrides(args: argparse.Namespace, baselines: list[str]) -> dict:
    return {"network": {"cells": [dict(c) for c in CELLS]}, "baselines": baselines,
            "protocol": {"tune_episodes": args.tune_episodes, "eval_episodes": args.suite_episodes}}


def bp_baselines(seed: int, args: argparse.Namespace) -> list[dict]:
    """BP with its θ0 meta-tuned on each of the eight cells (seed ``seed``), cached in ``--out``: the baselines do
    not depend on the rule, so they are tuned once (the benchmark cache's idea, by hand)."""
    path = args.out / f"multitask_bp_t{args.tune_episodes}_e{args.suite_episodes}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())["entries"]
    t0 = time.perf_counter()
    report = run_suite("transfer", None, seed=seed, threads=1, overrides=suite_overrides(args, ["BP"]))
    report["wall_time_s"] = time.perf_counter() - t0
    path.write_text(json.dumps(report, indent=1))
    return report["entries"]


def score_rule(rule: Rule, seed: int, args: argparse.Namespace) -> dict:
    """The rule's fixed θ on the eight cells beside the cached BP, Δ paired per cell."""
    baselines = bp_baselines(seed, args)
    report = run_suite("transfer", rule, seed=seed, threads=1, overrides=suite_overrides(args, []))
    entry = next(e for e in report["entries"] if e["kind"] == "rule")
    compare_cells(entry, baselines)
    report["entries"] = [*baselines, entry]
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--max-terms", type=int, default=5)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--coefficients", default="shared", choices=["shared", "profile", "per-layer"])
    ap.add_argument("--refit", action="store_true")
    ap.add_argument("--objective", default="mean", choices=["mean", "quantile"],
                    help="over the training cells of a meta-batch (quantile: the cells at or above the q-quantile "
                         "of the loss; --meta-batch 3 draws each of the 3 training cells once per step)")
    ap.add_argument("--quantile", type=float, default=0.5)
    ap.add_argument("--meta-batch", type=int, default=1)
    ap.add_argument("--screen", default="mean", choices=["mean", "objective"],
                    help="screens over episodes across the training cells, or over the objective's tail cells")
    add_fit_options(ap)   # BP's cached θ0 tuning stays at a constant lr
    add_transfer_options(ap)
    ap.add_argument("--tune-episodes", type=int, default=600, help="BP's θ0 meta-tuning per cell (the suite)")
    ap.add_argument("--suite-episodes", type=int, default=100, help="held-out episodes per cell in the suite")
    ap.add_argument("--tag", default="")
    ap.add_argument("--baselines-only", action="store_true", help="only tune and score BP on the cells (cached)")
    ap.add_argument("--score-only", action="store_true", help="score the selected rule of an earlier search")
    ap.add_argument("--out", type=Path, default=Path("results/transfer"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        path = args.out / f"multitask{args.tag}_seed{seed}.json"
        if args.baselines_only:
            bp_baselines(seed, args)
            continue
        if args.score_only:
            base = json.loads(path.read_text())
            chosen = FrontPoint.model_validate(base["selected"])
            t1 = time.perf_counter()
            report = score_rule(LayeredRule(chosen.terms, chosen.theta, name=f"multitask seed {seed}"),
                                seed, args)
            path.write_text(json.dumps({**base, "suite_wall_time_s": time.perf_counter() - t1, "transfer": report},
                                       indent=1, default=str))
            print_cells(report)
            continue
        t0 = time.perf_counter()
        spec = DiscoverySpec.model_validate(search_spec(seed, args))
        result = discover(spec, progress=printer(f"seed {seed}"), checkpoint_dir=args.out / f"ckpt{args.tag}_{seed}")
        search_wall = time.perf_counter() - t0
        chosen = next(p for p in result.front if p.selected)
        print(f"seed {seed}: selected {chosen.stage}: {chosen.rule.expression} "
              f"(selection cells {chosen.heldout_accuracy:.3f} ± {chosen.heldout_ci95:.3f}); {search_wall:.0f} s",
              flush=True)
        for p, pt in zip(result.front, result.search["transfer"]["points"]):
            cells = " · ".join(f"{c['cell'].split(', ')[1]} {c['role'][:2]} {c['score']:.3f}"
                               f"{' FAIL' if c['failed'] else ''}" for c in pt["cells"])
            print(f"    {p.stage}{' (selected)' if p.selected else ''}: {p.heldout_accuracy:.3f} | {cells}",
                  flush=True)
        base = {"seed": seed, "args": vars(args) | {"out": str(args.out)}, "search_wall_time_s": search_wall,
                "selected": chosen.model_dump(), "front": [p.model_dump() for p in result.front],
                "search": result.search}
        path.write_text(json.dumps(base, indent=1, default=str))
        t1 = time.perf_counter()
        rule = LayeredRule(chosen.terms, chosen.theta, name=f"multitask seed {seed}")
        report = score_rule(rule, seed, args)
        out = {**base, "suite_wall_time_s": time.perf_counter() - t1, "transfer": report}
        path.write_text(json.dumps(out, indent=1, default=str))
        print_cells(report)


def print_cells(report: dict) -> None:
    """One line per cell: the rule's accuracy and Δ vs BP with its 95 % CI."""
    entry = next(e for e in report["entries"] if e["kind"] == "rule")
    for c in entry["metrics"]["cells"]:
        v = c["vs"]["BP"]
        print(f"  {c['cell']} ({c['role']}): rule {c['score']:.3f} Δ vs BP {100 * v['delta']:+.1f} "
              f"[{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}]{' FAILED' if c['failed'] else ''}",
              flush=True)


if __name__ == "__main__":
    main()
