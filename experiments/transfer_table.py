"""The transfer table of issue 26 (docs/results.md, "Rules that transfer"): each stored selected rule's θ fixed on
a grid of cells, beside BP with its own θ0 meta-tuned on each cell with the rule's seed; Δ = rule − BP paired per
cell with its 95 % t-interval. A CLI over the ``transfer`` suite (discovery.benchmarks.transfer).

    nice -n 10 python -m experiments.transfer_table --seeds 0 1 2 --out results/transfer

Every (seed, cell) is one suite run written to ``--out/table_seed<s>_<cell>.json`` (kept: a rerun skips it), so
the table fills in cell by cell; ``--cells`` picks cells of the grid by index (default all, depth 7 first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from discovery.benchmarks.cache import compare_cells
from discovery.benchmarks.registry import run_suite
from discovery.benchmarks.transfer import TRANSFER_CELLS
from discovery.transfer.cells import Cell
from rules.rule import Rule

ORDER = [3, 1, 2, 0]   # mnist5k depth 7 first (the cell that fails), then depth 3, 5 and digits28


def slug(cell: Cell) -> str:
    return cell.label.replace(", ", "_").replace(" ", "")


def run_cell(seed: int, cell: dict, rule: Rule, baselines: list[str], out: Path, overrides: dict) -> dict:
    """One (seed, cell): the suite with that cell only; the rule's per-cell Δ vs each baseline added."""
    path = out / f"table_seed{seed}_{slug(Cell.model_validate(cell))}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    report = run_suite("transfer", rule, seed=seed, threads=1,
                       overrides={"network": {"cells": [cell]}, "baselines": baselines, **overrides})
    rule_entry = next(e for e in report["entries"] if e["kind"] == "rule")
    compare_cells(rule_entry, [e for e in report["entries"] if e["kind"] == "baseline"])
    report["wall_time_s"] = time.perf_counter() - t0
    path.write_text(json.dumps(report, indent=1))
    return report


def markdown(out: Path, seeds: list[int], cells: list[int]) -> str:
    """The table (cells × seeds: Δ vs BP [95 % CI] in points, rule / BP accuracy) of the runs found in ``out``."""
    lines = ["| cell | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for i in sorted(cells):
        cell = Cell.model_validate(TRANSFER_CELLS[i])
        row = []
        for seed in seeds:
            path = out / f"table_seed{seed}_{slug(cell)}.json"
            if not path.exists():
                row.append("not run")
                continue
            rep = json.loads(path.read_text())
            c = next(e for e in rep["entries"] if e["kind"] == "rule")["metrics"]["cells"][0]
            bp = next(e for e in rep["entries"] if e["learner"] == "BP")["metrics"]["cells"][0]
            v = c["vs"]["BP"]
            row.append(f"{100 * v['delta']:+.1f} [{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}] "
                       f"({c['score']:.3f} vs {bp['score']:.3f}; {rep['wall_time_s']:.0f} s)")
        lines.append(f"| {cell.label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rules", default="results/open_search/library_forward_seed{seed}.json")
    ap.add_argument("--cells", type=int, nargs="+", default=ORDER, help="indices into the grid")
    ap.add_argument("--baselines", nargs="+", default=["BP"])
    ap.add_argument("--eval-episodes", type=int, default=None)
    ap.add_argument("--tune-episodes", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/transfer"))
    ap.add_argument("--markdown", action="store_true", help="print the table of the results already in --out")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(args.out, args.seeds, args.cells))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    protocol = {k: v for k, v in {"eval_episodes": args.eval_episodes, "tune_episodes": args.tune_episodes}.items()
                if v is not None}
    overrides = {"protocol": protocol} if protocol else {}
    for i in args.cells:
        cell = TRANSFER_CELLS[i]
        for seed in args.seeds:
            stored = json.loads(Path(args.rules.format(seed=seed)).read_text())["selected"]
            rule = Rule(stored["theta"], name=f"selected seed {seed}")
            rep = run_cell(seed, cell, rule, args.baselines, args.out, overrides)
            r = next(e for e in rep["entries"] if e["kind"] == "rule")
            c = r["metrics"]["cells"][0]
            parts = [f"rule {c['score']:.3f}"]
            for b in args.baselines:
                be = next(e for e in rep["entries"] if e["learner"] == b)["metrics"]["cells"][0]
                v = c["vs"][b]
                parts.append(f"{b} {be['score']:.3f} (θ0 {be['theta']['F0']:.4f}) Δ {100 * v['delta']:+.1f} "
                             f"[{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}]")
            print(f"{c['cell']} | seed {seed} | " + " | ".join(parts) + f" | diverged {c['diverged']} | "
                  f"{rep['wall_time_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
