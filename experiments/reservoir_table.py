"""The S5 reservoir results table: each configuration run over several seeds (batched), one JSON per configuration.

One configuration per call, all its seeds in one batch (docs/science.md S5; `discovery.reservoir.model.run_reservoir`):

    OMP_NUM_THREADS=1 python -m experiments.reservoir_table --task 2 --learner supertrex --protocol shortened

writes results/reservoir/<protocol>/task2_supertrex_published.json with the per-seed test-phase deviations, their
mean and 95% t-interval over seeds, the number satisfactory (< 0.5), the wall time and the protocol, beside the
published 11-seed numbers. `--all` runs the table's configurations one after another in this process;
`--table` prints the markdown table from the saved JSONs. Always one torch thread unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from discovery.analysis.stats import t_interval
from discovery.reservoir.model import PROTOCOLS, SATISFACTORY, run_reservoir

# (task, learner, setting) of the table, in order.
CONFIGS: tuple[tuple[int, str, str], ...] = (
    (1, "force", "published"), (1, "rmhl", "published"), (1, "supertrex", "published"),
    (2, "rmhl", "published"), (2, "supertrex", "published"),
    (3, "supertrex", "published"), (3, "supertrex", "fixed"))

# docs/science.md S5: replication (Sankar et al. 2021), 11 seeds, test-phase mean ± spread, satisfactory count.
PUBLISHED: dict[tuple[int, str, str], dict] = {
    (1, "force", "published"): {"mean": 0.003, "pm": 0.002, "satisfactory": None},
    (1, "rmhl", "published"): {"mean": 0.168, "pm": 0.038, "satisfactory": None},
    (1, "supertrex", "published"): {"mean": 0.006, "pm": 0.003, "satisfactory": None},
    (2, "rmhl", "published"): {"mean": 0.759, "pm": 0.284, "satisfactory": "0/11"},
    (2, "supertrex", "published"): {"mean": 0.011, "pm": 0.003, "satisfactory": "11/11"},
    (3, "rmhl", "published"): {"mean": 0.850, "pm": 0.313, "satisfactory": "1/11"},
    (3, "supertrex", "published"): {"mean": 0.881, "pm": 0.224, "satisfactory": "5/11"},
    (3, "supertrex", "fixed"): {"mean": 0.140, "pm": 0.071, "satisfactory": "10/11"},
}


def _name(task: int, learner: str, setting: str) -> str:
    return f"task{task}_{learner}_{setting}"


def command(task: int, learner: str, setting: str, seeds: Sequence[int], protocol: str, N: int) -> str:
    return (f"OMP_NUM_THREADS=1 python -m experiments.reservoir_table --task {task} --learner {learner} "
            f"--setting {setting} --seeds {' '.join(map(str, seeds))} --protocol {protocol} --N {N}")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_config(task: int, learner: str, setting: str, seeds: Sequence[int], protocol: str, N: int,
               out_dir: Path, curve_points: int = 200) -> dict:
    """Run one configuration (all seeds batched) and write <out_dir>/<protocol>/<name>.json; returns the record."""
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 60 or done == total:
            last[0] = now
            print(f"  {_name(task, learner, setting)}: {done}/{total} steps, {now - t0:.0f}s", flush=True)

    res = run_reservoir(task, learner, list(seeds), setting=setting, N=N, protocol=protocol,  # type: ignore[arg-type]
                        curve_points=curve_points, progress=progress)
    wall = time.perf_counter() - t0
    dev = res["deviation"]
    mean, lo, hi = t_interval(dev)
    rec = {
        "config": _name(task, learner, setting), "task": task, "learner": learner, "setting": setting, "N": N,
        "seeds": list(seeds), "n_seeds": len(seeds),
        "protocol": {"name": protocol, "periods_train": res["periods_train"], "periods_test": res["periods_test"],
                     "period_steps": res["period_steps"],
                     "total_steps": (res["periods_train"] + res["periods_test"]) * res["period_steps"],
                     "test_feedback": "teacher"},
        "metric": "test-phase mean of sqrt(low-passed squared error), tau_e = period/10; lower is better",
        "deviation_per_seed": dev, "mean": mean, "ci95": [lo, hi], "ci95_halfwidth": (hi - lo) / 2,
        "std_population": res["std"], "n_satisfactory": res["n_satisfactory"],
        "satisfactory_threshold": SATISFACTORY, "all_finite": all(math.isfinite(v) for v in dev),
        "gate_per_period": res["gate_per_period"], "curves": res["curves"], "curve_stride": res["curve_stride"],
        "wall_s": wall, "simulate_wall_s": res["wall_s"], "steps_per_s": res["steps_per_s"],
        "published": PUBLISHED.get((task, learner, setting)),
        "command": command(task, learner, setting, seeds, protocol, N),
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                "machine": platform.machine(), "git_commit": _git_commit()},
    }
    path = out_dir / protocol / f"{rec['config']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{rec['config']}: mean {mean:.4f} [{lo:.4f}, {hi:.4f}], satisfactory {rec['n_satisfactory']}/"
          f"{len(seeds)}, per seed {' '.join(f'{v:.4f}' for v in dev)}, wall {wall:.0f}s -> {path}", flush=True)
    if not rec["all_finite"]:
        raise SystemExit(f"non-finite deviation in {rec['config']}: {dev}")
    return rec


def markdown_table(out_dir: Path, protocol: str) -> str:
    """The README table from the saved JSONs of one protocol."""
    rows = [("| task | learner | ours: mean ± 95% CI (n seeds) | ours: satisfactory | per-seed deviations | "
             "published (11 seeds) | wall |"),
            "|---|---|---|---|---|---|---|"]
    for task, learner, setting in CONFIGS:
        path = out_dir / protocol / f"{_name(task, learner, setting)}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        pub = r["published"] or {}
        pub_s = f"{pub.get('mean', float('nan')):.3f} ± {pub.get('pm', float('nan')):.3f}"
        if pub.get("satisfactory"):
            pub_s += f" ({pub['satisfactory']})"
        label = learner.upper() if learner != "supertrex" else "SUPERTREX"
        if setting != "published":
            label += f" ({setting})"
        rows.append(f"| {task} | {label} | {r['mean']:.3f} ± {r['ci95_halfwidth']:.3f} ({r['n_seeds']}) | "
                    f"{r['n_satisfactory']}/{r['n_seeds']} | "
                    f"{', '.join(f'{v:.3f}' for v in r['deviation_per_seed'])} | {pub_s} | {r['wall_s']:.0f} s |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=int, choices=[1, 2, 3])
    parser.add_argument("--learner", choices=["force", "rmhl", "supertrex"])
    parser.add_argument("--setting", default="published", choices=["published", "fixed"])
    parser.add_argument("--all", action="store_true", help="run every configuration of the table, one at a time")
    parser.add_argument("--table", action="store_true", help="print the markdown table from the saved JSONs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--protocol", default="shortened", choices=list(PROTOCOLS))
    parser.add_argument("--N", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/reservoir"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.table:
        print(markdown_table(args.out, args.protocol))
        return
    if args.all:
        configs = list(CONFIGS)
    elif args.task is not None and args.learner is not None:
        configs = [(args.task, args.learner, args.setting)]
    else:
        parser.error("give --task and --learner, or --all, or --table")
    for task, learner, setting in configs:
        run_config(task, learner, setting, args.seeds, args.protocol, args.N, args.out)


if __name__ == "__main__":
    main()
