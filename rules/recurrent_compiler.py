"""From the sympy form of a recurrent term (rules.recurrent) to the torch code the engine runs.

:func:`compile_recurrent` turns a term's expression F (N×N, built of W, G = diag(g), I and the column vectors r, δ,
u) into a function of batched rows — r, δ, u, g of shape (..., B, N), W (..., N, N) — that returns the
batch-averaged F, (..., N, N): every outer product a bᵀ becomes (1/B) Σ_b a_b b_bᵀ, and every chain of N×N factors
is applied to its vector from the vector's side (W G δ is ``(g * δ) @ Wᵀ``, never an N×N product), the cheap order
of rules.compiler. The expression *is* the code that runs. :func:`evaluate` is the slow reference evaluation of one
sample's expression, for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp
from sympy import Identity, MatAdd, MatMul, MatrixSymbol, Transpose, ZeroMatrix

VECTORS = ("r", "delta", "u")
"""The column-vector primitives; the environment holds them as rows (..., B, N)."""


class RecurrentCompileError(ValueError):
    """A recurrent expression outside what the compiler runs (products ending in a vector, outer products, W)."""


def _factors(expr: Any) -> tuple[Any, list[Any]]:
    """(scalar coefficient, matrix factors) of a product, nested products flattened."""
    if isinstance(expr, MatMul):
        coeff, mats = sp.Integer(1), []
        for a in expr.args:
            if a.is_Matrix:
                c, m = _factors(a)
                coeff, mats = coeff * c, mats + m
            else:
                coeff = coeff * a
        return coeff, mats
    return sp.Integer(1), [expr]


def _scale(coeff: Any, t: Any) -> Any:
    return t if coeff == 1 else float(coeff) * t


def _transposed(expr: Any) -> Any:
    """Push a transpose one level down: (A B)ᵀ = Bᵀ Aᵀ, (A + B)ᵀ = Aᵀ + Bᵀ, Gᵀ = G, Iᵀ = I, (Aᵀ)ᵀ = A."""
    if isinstance(expr, Transpose):
        return expr.arg
    if isinstance(expr, MatMul):
        coeff, mats = _factors(expr)
        return MatMul(coeff, *[Transpose(m) for m in reversed(mats)])
    if isinstance(expr, MatAdd):
        return MatAdd(*[Transpose(a) for a in expr.args])
    if isinstance(expr, Identity) or (isinstance(expr, MatrixSymbol) and expr.name == "G"):
        return expr
    return Transpose(expr)


def _apply(op: Any, v: Any, env: Mapping[str, Any]) -> Any:
    """op · v for an N×N expression ``op`` and column vectors held as rows v (..., B, N)."""
    if isinstance(op, Identity):
        return v
    if isinstance(op, MatrixSymbol) and op.name == "W":
        return v @ env["W"].transpose(-1, -2)
    if isinstance(op, MatrixSymbol) and op.name == "G":
        return env["g"] * v
    if isinstance(op, Transpose):
        inner = op.arg
        if isinstance(inner, MatrixSymbol) and inner.name == "W":
            return v @ env["W"]
        return _apply(_transposed(inner), v, env)
    if isinstance(op, MatAdd):
        parts = [_apply(a, v, env) for a in op.args]
        return sum(parts[1:], parts[0])
    if isinstance(op, MatMul):
        coeff, mats = _factors(op)
        for m in reversed(mats):
            v = _apply(m, v, env)
        return _scale(coeff, v)
    raise RecurrentCompileError(f"cannot apply {op} to a vector")


def _column(expr: Any, env: Mapping[str, Any]) -> Any:
    """A column-vector expression (N×1) as rows (..., B, N)."""
    if isinstance(expr, MatrixSymbol) and expr.name in VECTORS:
        return env[expr.name]
    if isinstance(expr, Transpose):
        return _column(_transposed(expr.arg), env)
    if isinstance(expr, MatAdd):
        parts = [_column(a, env) for a in expr.args]
        return sum(parts[1:], parts[0])
    if not isinstance(expr, MatMul):
        raise RecurrentCompileError(f"not a column vector: {expr}")
    coeff, mats = _factors(expr)
    v = _column(mats[-1], env)
    for m in reversed(mats[:-1]):
        v = _apply(m, v, env)
    return _scale(coeff, v)


def _matrix(expr: Any, env: Mapping[str, Any]) -> Any:
    """An N×N expression, batch-averaged over the rows: a sum of outer products a bᵀ, or W itself."""
    if isinstance(expr, MatrixSymbol) and expr.name == "W":
        return env["W"]
    if isinstance(expr, MatAdd):
        parts = [_matrix(a, env) for a in expr.args]
        return sum(parts[1:], parts[0])
    coeff, mats = _factors(expr)
    if len(mats) == 1 and mats[0] is not expr:
        return _scale(coeff, _matrix(mats[0], env))
    split = next((k for k, m in enumerate(mats[:-1]) if m.shape[1] == 1), None)
    if split is None:
        raise RecurrentCompileError(f"not a sum of outer products a bᵀ or W: {expr}")
    left = _column(MatMul(*mats[: split + 1]) if split else mats[0], env)
    right = _column(_transposed(MatMul(*mats[split + 1:]) if len(mats) > split + 2 else mats[split + 1]), env)
    return _scale(coeff, left.transpose(-1, -2) @ right / left.shape[-2])


@dataclass(frozen=True)
class CompiledRecurrentTerm:
    """A recurrent term as code: ``__call__(env)`` is its batch-averaged value; ``needs_adjoint`` says whether the
    environment must hold the adjoint u (an N×N solve per sample)."""

    expr: Any
    needs_adjoint: bool
    run: Callable[[Mapping[str, Any]], Any]

    def __call__(self, env: Mapping[str, Any]) -> Any:
        return self.run(env)


def compile_recurrent(expr: Any) -> CompiledRecurrentTerm:
    """The batched torch function of a recurrent term's sympy expression (see the module docstring)."""
    names = {s.name for s in expr.atoms(MatrixSymbol)}
    unknown = names - {"W", "G", *VECTORS}
    if unknown:
        raise RecurrentCompileError(f"unknown symbols {sorted(unknown)} in {expr}")
    return CompiledRecurrentTerm(expr, "u" in names, lambda env: _matrix(expr, env))


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
