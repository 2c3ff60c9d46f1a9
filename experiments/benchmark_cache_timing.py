"""Time a benchmark with and without cached baselines (README "Benchmarks in minutes").

1. The first tuning of a suite's baselines, fanned out as Ray tasks (``workers.baseline_tasks.tune_fanout``), on a
   local Ray with ``--cpus`` CPUs; the BaselineSet is written to ``--out``.
   ``--serial`` instead times the tuning as it ran before the cache: every baseline and grid point one after the
   other in this process (``discovery.benchmarks.cache.tune_serial``, torch's default threads).
2. A rule benchmark against those cached baselines (``discovery.benchmarks.cache.score_with_baselines``, one torch
   thread as in the benchmark actor): only the rule is scored, on the same held-out episodes, with its paired
   differences to every baseline.

    python -m experiments.benchmark_cache_timing --suite fa5-online --out results/benchmark_cache
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from discovery.results import jsonable

RULE = "-0.010979*e*x.T + 0.046747*e*e_pre.T + 0.008264*(y*x.T - y*(y.T*W))"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suite", default="fa5-online")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rule", default=RULE)
    ap.add_argument("--out", type=Path, default=Path("results/benchmark_cache"))
    ap.add_argument("--baselines", type=Path, default=None, help="a cached BaselineSet JSON (skips step 1)")
    ap.add_argument("--serial", action="store_true",
                    help="only time the serial tuning in this process (torch's default threads), as before the cache")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.suite}_seed{args.seed}{'_tiny' if args.tiny else ''}"
    if args.serial:
        from discovery.benchmarks.cache import tune_serial

        t0 = time.perf_counter()
        serial = tune_serial(args.suite, tiny=args.tiny, seed=args.seed)
        wall = time.perf_counter() - t0
        (args.out / f"{tag}_serial_baselines.json").write_text(json.dumps(jsonable(serial.model_dump()), indent=1))
        print(json.dumps({"suite": args.suite, "serial_tuning_s": wall}), flush=True)
        return
    from discovery.benchmarks.cache import BaselineSet, score_with_baselines

    if args.baselines is None:
        os.environ.setdefault("PLASTICITY_RAY_NUM_CPUS", str(args.cpus))
        from workers.baseline_tasks import tune_fanout
        from workers.runtime import ensure_ray

        ensure_ray()
        t0 = time.perf_counter()
        last = {}

        def progress(event: dict) -> None:
            if event["fraction"] - last.get("fraction", 0.0) >= 0.05 or event["fraction"] == 1.0:
                last.update(event)
                print(f"[tune {time.perf_counter() - t0:7.1f}s] {event['phase']} {event['learner']} "
                      f"{event['fraction']:.0%} remaining≈{event['remaining'] or 0:.0f}s", flush=True)

        baselines = tune_fanout(args.suite, tiny=args.tiny, seed=args.seed, progress=progress)
        tune_s = time.perf_counter() - t0
        (args.out / f"{tag}_baselines.json").write_text(json.dumps(jsonable(baselines.model_dump()), indent=1))
        print(f"fan-out tuning: {tune_s:.1f} s", flush=True)
    else:
        baselines = BaselineSet.model_validate_json(args.baselines.read_text())
        tune_s = None
    t1 = time.perf_counter()
    report = score_with_baselines(args.suite, args.rule, baselines, cached=True, threads=1)
    rule_s = time.perf_counter() - t1
    summary = {"suite": args.suite, "seed": args.seed, "tiny": args.tiny, "cpus": args.cpus,
               "fanout_tuning_s": tune_s, "cached_rule_benchmark_s": rule_s,
               "entries": [{k: e.get(k) for k in ("learner", "kind", "score", "ci95", "hyperparameters")}
                           | {"grid_points": (e.get("tuning") or {}).get("grid_points"),
                              "extensions": (e.get("tuning") or {}).get("extensions")}
                           for e in report["entries"]],
               "vs": report["vs"]}
    (args.out / f"{tag}_rule_cached.json").write_text(json.dumps(jsonable(report), indent=1))
    (args.out / f"{tag}_timing.json").write_text(json.dumps(jsonable(summary), indent=1))
    print(json.dumps(jsonable(summary), indent=1))


if __name__ == "__main__":
    main()
