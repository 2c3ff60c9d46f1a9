"""Reproduce the unsupervised family's acceptance: forward search over the generated 17-term Hebbian library on
centred digits (k = 4, no hint), seeds 0, 1, 2, objectives reconstruction and subspace; raw JSON per run under
results/unsupervised/ and a summary table on stdout.

    python -m experiments.unsupervised_search --objective reconstruction --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from discovery.results import jsonable
from discovery.unsupervised.data import load_pca_data
from discovery.unsupervised.search import SearchConfig, UnsupervisedSearch, oja_ratio
from discovery.unsupervised.terms import POOL
from discovery.unsupervised.trainer import InnerConfig, UnsupervisedTrainer
from rules.unsupervised import UNSUPERVISED_TERMS

OUT = Path("results/unsupervised")


def run(objective: str, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    data = load_pca_data(args.dataset)
    inner = InnerConfig(k=args.k, unroll=args.unroll, init_norm=1.0, objective=objective)
    cfg = SearchConfig(max_terms=args.max_terms, fit_evals=args.fit_evals, trial_evals=args.trial_evals,
                       fit_episodes=args.fit_episodes, final_evals=args.final_evals,
                       final_episodes=args.final_episodes, final_unroll=args.final_unroll,
                       eval_episodes=args.eval_episodes, passes=args.passes, seed=seed)
    t0 = time.perf_counter()
    trainer = UnsupervisedTrainer(data, POOL, inner, seed=seed)
    outcome = UnsupervisedSearch(trainer, cfg).run()
    result = {"args": {"objective": objective, "seed": seed, **vars(args)}, "wall_time_s": time.perf_counter() - t0,
              "best_reconstruction": data.best_reconstruction(args.k), "episodes": outcome.episodes,
              "front": [p.model_dump() for p in outcome.front], "evaluations": outcome.evaluations,
              "screening": outcome.screens, "search_point": outcome.extra.get("search_point"),
              "fits": [{"terms": f.terms, "theta": f.theta, "evals": f.steps, **f.extra,
                        "phase": f.history[-1]["phase"] if f.history else None} for f in outcome.fits]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.dataset}_{objective}_seed{seed}.json").write_text(json.dumps(jsonable(result), indent=1))
    return jsonable(result)


def summary(result: dict) -> str:
    lines = []
    for p in result["front"]:
        m = p["rule"]["metrics"]
        names = {UNSUPERVISED_TERMS[t].name: round(v, 5) for t, v in p["theta"].items()}
        ratio = oja_ratio(p["theta"])
        lines.append(f"  {'*' if p['selected'] else ' '} {p['n_terms']} terms {names} score {p['heldout_accuracy']:.4f}"
                     f" ± {p['heldout_ci95'] or 0:.4f} ratio {ratio if ratio is None else round(ratio, 3)} "
                     f"recon {m['heldout_reconstruction']:.4f} subspace@T {m['subspace_error']:.4f} "
                     f"subspace/pass {[round(v, 4) for v in m['subspace_error_passes']]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objective", choices=["reconstruction", "subspace"], default="reconstruction")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--unroll", type=int, default=1000, help="the search's horizon T")
    ap.add_argument("--final-unroll", type=int, default=2000, help="the selected support's refit horizon")
    ap.add_argument("--max-terms", type=int, default=3)
    ap.add_argument("--fit-evals", type=int, default=15)
    ap.add_argument("--trial-evals", type=int, default=5)
    ap.add_argument("--fit-episodes", type=int, default=8)
    ap.add_argument("--final-evals", type=int, default=30)
    ap.add_argument("--final-episodes", type=int, default=16)
    ap.add_argument("--eval-episodes", type=int, default=16)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds:
        res = run(args.objective, seed, args)
        print(f"{args.objective} seed {seed}: {res['wall_time_s']:.0f} s, best reconstruction "
              f"{res['best_reconstruction']:.4f}\n{summary(res)}", flush=True)


if __name__ == "__main__":
    main()
