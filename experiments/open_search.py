"""Open discovery under the S3 protocol (README, "Open discovery"): search the library, compare with meta-tuned BP.

For each seed: meta-tuned BP (θ0 only, bp feedback) and each search method on the same budget of one-episode
meta-steps; every rule scored on the same 200 held-out episodes (paired), the paired difference rule − BP with a
95 % t-interval. Writes one JSON per (seed, method) under --out and prints the table.

    python -m experiments.open_search --out results/open_search --seeds 0 1 2 --methods forward
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import torch

from discovery.analysis.stats import paired_difference
from discovery.feedforward.trainer import MetaTrainer
from discovery.results import ProgressEvent
from discovery.router import discover
from discovery.spec import DiscoverySpec, MetaSpec
from rules.terms import term


def base_spec(seed: int, episodes: int, feedback: str, rule: dict, search: dict | None = None) -> dict:
    """The S3 protocol on mnist5k: 784-170-130-100-70-10, 5-way 50-shot, 10 queries, lr 1e-3, θ0 = 1e-3."""
    return {"network": {"widths": [784, 170, 130, 100, 70, 10], "feedback": feedback},
            "task": {"dataset": "mnist5k", "ways": 5, "shots": 50, "queries": 10},
            "rule": rule, "search": search or {"method": "none"},
            "meta": {"episodes": episodes, "meta_batch": 1, "lr": 1e-3, "seed": seed, "eval_episodes": 200,
                     "term_scale": "norm"}}


def heldout(spec: dict, theta: dict[str, float], episodes: int = 200) -> torch.Tensor:
    """Per-episode held-out accuracy of θ (the episodes depend on the seed alone)."""
    data = json.loads(json.dumps(spec))
    data["rule"] = {"terms": list(theta), "theta_init": theta}
    data["search"] = {"method": "none"}
    return MetaTrainer(DiscoverySpec.model_validate(data)).heldout_values(episodes)


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of a − b with its 95 % t-interval (discovery.analysis.stats)."""
    d = paired_difference(a.double(), b.double())
    return {"delta": d.delta, "ci95": d.ci95}


def add_fit_options(ap: argparse.ArgumentParser) -> None:
    """--lr-schedule, --keep and --rollback: how each fit of a search runs (meta.lr_schedule, meta.keep,
    meta.rollback; choices from MetaSpec)."""
    fields = MetaSpec.model_fields
    ap.add_argument("--lr-schedule", default=fields["lr_schedule"].default,
                    choices=get_args(fields["lr_schedule"].annotation),
                    help="Adam's lr over each fit: cosine decays it to lr·lr_final")
    ap.add_argument("--keep", default=fields["keep"].default, choices=get_args(fields["keep"].annotation),
                    help="the θ each fit returns: after its last step, or at its lowest meta-train loss average")
    ap.add_argument("--rollback", type=float, default=fields["rollback"].default,
                    help="cliff guard ρ: back to the lowest loss average's θ, lr halved, when the average exceeds "
                         "(1 + ρ)× it (0: off)")


def fit_options(args: argparse.Namespace) -> dict:
    """The meta fields that --lr-schedule, --keep and --rollback set."""
    return {"lr_schedule": args.lr_schedule, "keep": args.keep, "rollback": args.rollback}


def printer(tag: str, every: int = 50) -> Callable[[ProgressEvent], None]:
    """A progress callback: one line per `every` episodes and at each new phase (mean meta-accuracy since the last)."""
    t0, last_phase, acc = time.perf_counter(), [None], []

    def report(event: ProgressEvent) -> None:
        if event.meta_accuracy is not None and math.isfinite(event.meta_accuracy):
            acc.append(event.meta_accuracy)
        if event.phase != last_phase[0] or event.episode % every == 0:
            mean = f"{sum(acc) / len(acc):.3f}" if acc else "-"
            print(f"  [{tag}] episode {event.episode}/{event.total} {event.phase or ''}: meta-accuracy {mean}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            last_phase[0] = event.phase
            acc.clear()
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("results/open_search"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=["forward"])
    ap.add_argument("--pool", default="library")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--max-terms", type=int, default=5)
    ap.add_argument("--n-lambda", type=int, default=5, help="λ values on the path (method path)")
    ap.add_argument("--tag", default="", help="suffix of the result file name (keeps earlier variants)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        bp_file = args.out / f"bp_seed{seed}.json"
        if bp_file.exists():
            bp = json.loads(bp_file.read_text())
        else:
            t0 = time.perf_counter()
            spec = base_spec(seed, args.episodes, "bp", {"terms": ["F0"]})
            res = discover(spec)
            bp = {"theta": res.theta, "heldout_accuracy": res.heldout_accuracy, "heldout_ci95": res.heldout_ci95,
                  "wall_time_s": time.perf_counter() - t0, "spec": spec}
            bp_file.write_text(json.dumps(bp, indent=1))
        bp_values = heldout(bp["spec"], bp["theta"])
        for method in args.methods:
            t0 = time.perf_counter()
            spec = base_spec(seed, args.episodes, "fa", {"pool": args.pool},
                             {"method": method, "max_terms": args.max_terms, "n_lambda": args.n_lambda})
            res = discover(spec, progress=printer(f"seed {seed} {method}"))
            wall = time.perf_counter() - t0
            chosen = next(p for p in res.front if p.selected)
            vs_bp = paired(heldout(spec, chosen.theta), bp_values)
            out = {"seed": seed, "method": method, "pool": args.pool, "wall_time_s": wall,
                   "selected": chosen.model_dump(), "vs_bp": vs_bp, "bp": bp,
                   "front": [p.model_dump() for p in res.front], "search": res.search}
            (args.out / f"{args.pool}_{method}{args.tag}_seed{seed}.json").write_text(json.dumps(out, indent=1))
            terms = ", ".join(f"{term(t).name} {v:+.4f}" for t, v in chosen.theta.items())
            print(f"seed {seed} {method}: selected {chosen.n_terms} terms [{terms}] "
                  f"{chosen.heldout_accuracy:.3f} ± {chosen.heldout_ci95:.3f}; BP {bp['heldout_accuracy']:.3f} ± "
                  f"{bp['heldout_ci95']:.3f}; paired Δ {vs_bp['delta']:+.3f} [{vs_bp['ci95'][0]:+.3f}, "
                  f"{vs_bp['ci95'][1]:+.3f}]; {wall:.0f} s", flush=True)
            for p in res.front:
                print(f"    front {p.n_terms} terms {p.heldout_accuracy:.3f} ± {p.heldout_ci95:.3f}"
                      f"{' (selected)' if p.selected else ''}: {p.rule.get('expression')}", flush=True)


if __name__ == "__main__":
    main()
