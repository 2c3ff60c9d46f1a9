"""Kernel A/B on one fixed episode: CPU time per episode of fused C kernel variants, alternated in one process,
and a hash of the adapted W and Ẇ per variant (equal hashes: the same float32 bits).

    OMP_NUM_THREADS=1 python -m experiments.kernel_ab --pools library \
        --variant old=/tmp/old_kernel.c: --variant new=discovery/feedforward/kernels/fused_kernel.c:-DRBLK=2

A variant is NAME=SOURCE:EXTRA_CFLAGS (an empty SOURCE is the shipped kernel). Same shapes as `plasticity bench`
(784-170-130-100-70-47, 250 online steps, fa feedback), θ a fixed small nonzero draw (±2e-4) so every term is active. The
variants run in turn, `--reps` times each; on a shared machine process CPU time is the fairer clock (wall time is
printed beside it).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from discovery.benchmarks.speed import WAYS, WIDTHS
from discovery.feedforward.kernels import ckernel, fused
from discovery.feedforward.network import init_feedback, init_weights
from rules.compiler import compile_terms
from rules.terms import POOLS, term


def load_variant(source: str, flags: str, dtype: type = np.float32):
    """The `fused_episode` of `source` compiled with the kernel's flags plus `flags` (cached like the shipped one)."""
    old_src, old_flags = ckernel.SOURCE, list(ckernel.FLAGS)
    try:
        ckernel.SOURCE = Path(source) if source else old_src
        ckernel.FLAGS = [*old_flags, *flags.split()]
        ckernel.load.cache_clear()
        return ckernel.load(dtype)
    finally:
        ckernel.SOURCE, ckernel.FLAGS = old_src, old_flags
        ckernel.load.cache_clear()


def episode(pool: str, feedback: str, shots: int = 50, seed: int = 0, dtype=torch.float32):
    ids = POOLS[pool]
    rule = compile_terms([term(t).expr for t in ids], ids)
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(WIDTHS, 1, g, 1.0, "cpu", dtype)
    Bs = init_feedback(WIDTHS, feedback, 1, g, "cpu", dtype)
    x = torch.rand(1, WAYS * shots, WIDTHS[0], generator=g, dtype=dtype)
    y = torch.randint(0, WAYS, (1, WAYS * shots), generator=g)
    theta = ((torch.rand(len(ids), generator=g) - 0.5) * 4e-4).to(dtype)
    return rule, theta, Ws, Bs, x, y


def call(kernel, ep, feedback: str) -> tuple[float, float, str]:
    """One episode on `kernel`: wall s, CPU s, sha256[:16] of W and Ẇ."""
    orig = ckernel.load
    ckernel.load = lambda dtype: kernel                # fused._run_packed asks ckernel.load for the kernel
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        W, D = fused.run_online_forward_fused(*ep[:4], ep[4], ep[5], feedback, 10.0)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        ckernel.load = orig
    h = hashlib.sha256()
    for t in [*W, *D]:
        h.update(t.contiguous().numpy().tobytes())
    finite = all(bool(torch.isfinite(t).all()) for t in [*W, *D])
    return wall, cpu, h.hexdigest()[:16] + ("" if finite else " (not finite)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", nargs="*", default=["paper3", "bio10", "library", "library_gated"])
    ap.add_argument("--variant", action="append", default=[], help="NAME=SOURCE:EXTRA_CFLAGS")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--feedback", default="fa")
    args = ap.parse_args()
    variants = {}
    for v in args.variant or ["shipped=:"]:
        name, rest = v.split("=", 1)
        src, _, flags = rest.partition(":")
        variants[name] = load_variant(src, flags)
    for pool in args.pools:
        ep = episode(pool, args.feedback)
        res: dict[str, list[tuple[float, float, str]]] = {n: [] for n in variants}
        for _ in range(args.reps):
            for name, k in variants.items():
                res[name].append(call(k, ep, args.feedback))
        for name, rs in res.items():
            cpus = [r[1] for r in rs]
            print(f"{pool:<14}{name:<10} cpu best {min(cpus):.3f} med {sorted(cpus)[len(cpus) // 2]:.3f} s  "
                  f"wall {' '.join(f'{r[0]:.3f}' for r in rs)}  sha {' '.join(sorted({r[2] for r in rs}))}",
                  flush=True)


if __name__ == "__main__":
    main()
