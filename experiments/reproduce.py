"""Reproduce the S3 science table: meta-learned FA, BP, FA + eHebb + Oja, FA + bio10 + L1 on mnist5k.

`python -m experiments.reproduce --out results/s3 [--seeds 0 1 2] [--meta-steps 50] [--meta-batch 8] [--jobs 2]`
runs every (configuration, seed) from the example specs in its own process (1 torch thread each), writes one
RESULT.json per run, then prints the table: held-out accuracy mean ± 95% CI over the seeds' held-out episodes,
the learned θ, the mean alignment angle, and wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from discovery.analysis.stats import mean_halfwidth

CONFIGS = {
    "FA (θ0 only)": "examples/fa_only.json",
    "BP (θ0 only)": "examples/bp_only.json",
    "FA + eHebb + Oja": "examples/fa_ehebb_oja.json",
    "FA + bio10 + L1": "examples/fa_bio10_l1.json",
}


def _run(name: str, path: str, seed: int, meta_steps: int, meta_batch: int, lr: float, eval_episodes: int,
         out: str, theta0: float | None = None, term_scale: str = "none") -> None:
    import torch

    torch.set_num_threads(1)
    from discovery.router import discover
    from discovery.spec import DiscoverySpec

    spec = json.loads(Path(path).read_text())
    spec["meta"].update({"seed": seed, "episodes": meta_steps, "meta_batch": meta_batch, "lr": lr,
                         "eval_episodes": eval_episodes, "term_scale": term_scale})
    if theta0 is not None:  # the starting pseudo-gradient coefficient (the paper: 1e-3)
        spec["rule"].setdefault("theta_init", {})["F0"] = theta0
    spec = DiscoverySpec.model_validate(spec)
    target = Path(out) / f"{Path(path).stem}_seed{seed}.json"
    log = target.with_suffix(".log")

    def progress(ev) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"episode": ev.episode, "acc": ev.meta_accuracy, "theta": ev.theta}) + "\n")

    res = discover(spec, progress=progress)
    payload = res.model_dump()
    payload["config"] = name
    target.write_text(json.dumps(payload))


def summarize(out: Path) -> list[dict]:
    """One row per configuration: pooled held-out accuracy over seeds with the 95% t-interval of the seed means."""
    rows = []
    for name, path in CONFIGS.items():
        runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{Path(path).stem}_seed*.json"))]
        if not runs:
            continue
        accs = [r["heldout_accuracy"] for r in runs if r["heldout_accuracy"] is not None]
        mean, ci_seeds = mean_halfwidth(accs)
        ci_eps = sum(r["heldout_ci95"] or 0 for r in runs) / len(runs)
        theta = {k: sum(r["theta"][k] for r in runs) / len(runs) for k in runs[0]["theta"]}
        last = [h for r in runs for h in r["history"][-10:] if h["alignment_deg"]]
        angle = (sum(sum(h["alignment_deg"]) / len(h["alignment_deg"]) for h in last) / len(last)) if last else None
        rows.append({"config": name, "seeds": len(runs), "heldout_accuracy": mean, "ci95_seeds": ci_seeds,
                     "ci95_episodes": ci_eps, "episodes": runs[0]["heldout_episodes"], "theta": theta,
                     "alignment_deg": angle, "wall_time_s": sum(r["wall_time_s"] for r in runs) / len(runs)})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| configuration | seeds | held-out accuracy ± 95% CI (seeds) [± per-run CI] | mean θ | α (deg) | wall s/run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        theta = ", ".join(f"{k}={v:+.4f}" for k, v in r["theta"].items() if abs(v) > 1e-6)
        angle = f"{r['alignment_deg']:.0f}" if r["alignment_deg"] is not None else "–"
        print(f"| {r['config']} | {r['seeds']} | {r['heldout_accuracy']:.3f} ± {r['ci95_seeds']:.3f} "
              f"[± {r['ci95_episodes']:.3f}] | {theta} | {angle} | {r['wall_time_s']:.0f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/s3")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--meta-steps", type=int, default=50)
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-episodes", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--theta0", type=float, default=None, help="initial θ of F0 (default: the example spec's 0.01)")
    ap.add_argument("--term-scale", choices=["none", "norm"], default="none",
                    help="meta.term_scale: 'norm' scales each term's Adam step by min(1, ‖F0‖/‖F_r‖)")
    ap.add_argument("--only", nargs="*", default=None, help="configuration names to run (default all)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        tasks = [(n, p, s, args.meta_steps, args.meta_batch, args.lr, args.eval_episodes, str(out), args.theta0, args.term_scale)
                 for n, p in CONFIGS.items() if not args.only or n in args.only for s in args.seeds]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            pool.starmap(_run, tasks)
        print(f"all runs done in {time.perf_counter() - t0:.0f} s")
    print_table(summarize(out))


if __name__ == "__main__":
    main()
