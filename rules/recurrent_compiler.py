"""From the sympy form of a recurrent rule (rules.recurrent) to torch: ``evaluate`` is the reference evaluation of
one sample's expression."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy as sp
from sympy import Identity, MatAdd, MatMul, MatrixSymbol, Transpose, ZeroMatrix


def evaluate(expr: sp.Basic, values: Mapping[str, Any]) -> Any:
    """Reference evaluation of a recurrent expression for one sample, with torch tensors: ``values`` maps
    "W", "G" (N×N), "r", "delta", "u" (N×1) to tensors; supports MatAdd, MatMul (numeric scalars), Transpose,
    Inverse, Identity and numbers. Slow-path checking tool (the engine evaluates batched closed forms)."""
    import torch

    if isinstance(expr, MatrixSymbol):
        return values[expr.name]
    if isinstance(expr, Identity):
        n = values["W"].shape[0]
        return torch.eye(n, dtype=values["W"].dtype, device=values["W"].device)
    if isinstance(expr, ZeroMatrix):
        return torch.zeros_like(values["W"])
    if isinstance(expr, sp.Number):
        return float(expr)
    if isinstance(expr, Transpose):
        return evaluate(expr.arg, values).T
    if isinstance(expr, sp.Inverse):
        return torch.linalg.inv(evaluate(expr.arg, values))
    if isinstance(expr, MatAdd):
        parts = [evaluate(a, values) for a in expr.args]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out
    if isinstance(expr, MatMul):
        out = None
        scalar = 1.0
        for a in expr.args:
            v = evaluate(a, values)
            if isinstance(v, float):
                scalar *= v
            else:
                out = v if out is None else out @ v
        return scalar if out is None else scalar * out
    raise TypeError(f"cannot evaluate {type(expr).__name__}: {expr}")
