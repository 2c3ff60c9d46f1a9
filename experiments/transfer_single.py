"""The single-cell acceptance of issue 26 (docs/results.md, "Rules that transfer"): an open search on the S3 cell
(mnist5k, 784-170-130-100-70-10, 5-way 50-shot, held-out fraction 0.2 as in the open-search table) with the full-budget refit of the selected
support, optionally with per-layer coefficients, against BP with its θ0 meta-tuned on the same cell.

    OMP_NUM_THREADS=1 nice -n 19 python -m experiments.transfer_single --seeds 0 1 2 --out results/transfer
    ... --coefficients per-layer --tag _perlayer

Pairing: every front point is scored by the search on the held-out episodes of the run's seed (episodes and fresh
W, B depend on the seed alone); BP (F0 under bp feedback, θ0 tuned with ``--tune-episodes`` Adam steps) is scored
on those same episodes, so Δ = rule − BP is paired per episode, 95 % t-interval (discovery.analysis.stats).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from discovery.analysis.stats import paired_difference
from discovery.router import discover
from discovery.spec import DiscoverySpec
from discovery.transfer.cells import Cell, cell_spec
from discovery.transfer.multitask import cell_trainer
from discovery.transfer.scoring import TransferProtocol, heldout_outcome, tune_theta0
from experiments.open_search import add_fit_options, fit_options, printer
from experiments.transfer_search import add_transfer_options, transfer_options

S3_CELL = {"dataset": "mnist5k", "depth": 5, "role": "train"}


def search_spec(seed: int, args: argparse.Namespace) -> dict:
    """The S3 protocol (lr 1e-3, θ0 = 1e-3, term_scale norm, one-episode meta-steps unless ``--meta-batch``) on the
    one cell."""
    return {"network": {"widths": [784, 170, 130, 100, 70, 10], "feedback": "fa"},
            "task": {"dataset": "mnist5k", "ways": 5, "shots": 50, "queries": 10, "heldout_fraction": args.heldout_fraction},
            "rule": {"pool": args.pool},
            "search": {"method": "forward", "max_terms": args.max_terms, "front_eval_episodes": args.eval_episodes},
            "meta": {"episodes": args.episodes, "meta_batch": args.meta_batch, "lr": 1e-3, "seed": seed, "term_scale": "norm",
                     "eval_episodes": args.eval_episodes, **fit_options(args)},
            "transfer": {"cells": [S3_CELL, *select_cells(args)], "coefficients": args.coefficients, "refit": True,
                         **transfer_options(args)}}


def select_cells(args: argparse.Namespace) -> list[dict]:
    """With ``--select-stream k``: the S3 cell again, as the selection cell on its k-th independent draw of
    held-out episodes, so the front and the refits are chosen on episodes other than those Δ is reported on."""
    return [{**S3_CELL, "role": "select", "stream": args.select_stream}] if args.select_stream else []


def bp_values(spec: DiscoverySpec, seed: int, args: argparse.Namespace) -> tuple[dict, list[float]]:
    """BP's θ0 tuned on the cell (cached per seed in ``--out``) and its per-episode accuracy on the search's
    scoring episodes."""
    schedule = "" if args.lr_schedule == "constant" else f"_{args.lr_schedule}"
    path = args.out / f"single_bp_t{args.tune_episodes}{schedule}_h{args.heldout_fraction}_seed{seed}.json"
    cell = Cell.model_validate(S3_CELL)
    if path.exists():
        theta = json.loads(path.read_text())["theta"]
    else:
        protocol = TransferProtocol(tune_episodes=args.tune_episodes, heldout_fraction=args.heldout_fraction,
                                    tune_lr_schedule=args.lr_schedule)
        theta = tune_theta0(cell, "bp", protocol, seed)
        path.write_text(json.dumps({"theta": theta, "tune_episodes": args.tune_episodes}))
    bp_spec = cell_spec(spec, cell.model_copy(update={"feedback": "bp"}),
                        rule={"terms": ["F0"], "theta_init": theta}, meta={"episodes": 1})
    values, _ = heldout_outcome(cell_trainer(bp_spec, 0, "shared", None), args.eval_episodes)
    return theta, values.tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--max-terms", type=int, default=4)
    ap.add_argument("--eval-episodes", type=int, default=200)
    ap.add_argument("--coefficients", default="shared", choices=["shared", "per-layer"])
    ap.add_argument("--tune-episodes", type=int, default=600)
    ap.add_argument("--meta-batch", type=int, default=1, help="episodes averaged per meta-step (1: the S3 protocol)")
    ap.add_argument("--heldout-fraction", type=float, default=0.2,
                    help="held-out share of the data (0.2: the S3 open-search protocol of docs/results.md)")
    ap.add_argument("--pool", default="library", help="term pool searched (library: 16 terms; library_gated: 43)")
    add_transfer_options(ap)
    ap.add_argument("--select-stream", type=int, default=0,
                    help="k > 0: select on the cell's k-th independent draw of held-out episodes (0: on the "
                         "reported episodes, as in session 10)")
    add_fit_options(ap)   # BP's θ0 is tuned with the same --lr-schedule
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path("results/transfer"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        spec = DiscoverySpec.model_validate(search_spec(seed, args))
        result = discover(spec, progress=printer(f"seed {seed}", every=100))
        wall = time.perf_counter() - t0
        theta_bp, bp = bp_values(spec, seed, args)
        bp_mean = sum(bp) / len(bp)
        points = result.search["transfer"]["points"]
        rows = []
        for p, pt in zip(result.front, points, strict=True):
            d = paired_difference(pt["cells"][0]["per_episode"], bp)
            rows.append({"stage": p.stage, "selected": p.selected, "terms": p.terms, "n_params": pt["n_params"],
                         "theta": p.theta, "accuracy": pt["cells"][0]["score"], "failed": pt["cells"][0]["failed"],
                         "delta": d.delta, "ci95": list(d.ci95)})
            print(f"  {p.stage}{' (selected)' if p.selected else ''}: {len(p.terms)} terms, {pt['n_params']} params,"
                  f" {pt['cells'][0]['score']:.3f} vs BP {bp_mean:.3f}: Δ {100 * d.delta:+.1f} "
                  f"[{100 * d.ci95[0]:+.1f}, {100 * d.ci95[1]:+.1f}]", flush=True)
        chosen = next(r for r in rows if r["selected"])
        backtracks = dict(Counter(h.phase for h in result.history if h.backtracked))
        if backtracks:
            print(f"  backtracked meta-steps per fit (skips or meta.rollback): {backtracks}", flush=True)
        print(f"seed {seed} ({args.coefficients}): selected {chosen['stage']} Δ {100 * chosen['delta']:+.1f} "
              f"[{100 * chosen['ci95'][0]:+.1f}, {100 * chosen['ci95'][1]:+.1f}]; {wall:.0f} s", flush=True)
        out = {"seed": seed, "args": vars(args) | {"out": str(args.out)}, "search_wall_time_s": wall,
               "bp_theta": theta_bp, "bp_accuracy": bp_mean, "selected": chosen, "front": rows, "backtracks": backtracks,
               "search": result.search}
        (args.out / f"single{args.tag}_seed{seed}.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
