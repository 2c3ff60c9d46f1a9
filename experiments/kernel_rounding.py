"""How far the C kernel's build moves a fit (docs/operations.md, "The compiled kernel"; docs/results.md, session 15):
a short per-layer fit of F0, F2, y (yᵀW) on the S3 cell, on the adjoint kernel, printing θ to full precision. Run it
twice with the native build (equal bit for bit) and once with another instruction set (different low digits):

    OMP_NUM_THREADS=1 python -m experiments.kernel_rounding
    OMP_NUM_THREADS=1 PLASTICITY_KERNEL_CFLAGS=-march=x86-64-v2 python -m experiments.kernel_rounding
"""

from __future__ import annotations

import argparse
import json

import torch

from discovery.spec import DiscoverySpec
from discovery.transfer.search import TransferSearch

TERMS = ["F0", "F2", "T81627897"]
START = {"F0": 0.05, "F2": -0.2, "T81627897": -0.001}


def probe(steps: int, seed: int) -> dict[str, float]:
    """θ after ``steps`` 3-episode per-layer meta-steps from START (rollback 0.2, as the session-15 runs)."""
    spec = DiscoverySpec.model_validate({
        "network": {"widths": [784, 170, 130, 100, 70, 10], "feedback": "fa"},
        "task": {"dataset": "mnist5k", "ways": 5, "shots": 50, "queries": 10},
        "rule": {"terms": TERMS},
        "search": {"method": "forward", "max_terms": len(TERMS)},
        "meta": {"episodes": steps, "meta_batch": 3, "seed": seed, "lr": 1e-3, "term_scale": "norm",
                 "rollback": 0.2},
        "transfer": {"cells": [{"dataset": "mnist5k", "depth": 5}], "coefficients": "per-layer"}})
    return TransferSearch(spec).fit(TERMS, START, steps, "probe", "per-layer").theta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(probe(args.steps, args.seed)))


if __name__ == "__main__":
    main()
