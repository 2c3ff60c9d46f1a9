"""Batched array printers: subclasses of sympy's ``NumPyPrinter``, ``TorchPrinter`` and ``JaxPrinter`` that print a
matrix expression as batched ``@`` chains over a leading dimension, evaluated vector-first (as ``rules.compiler``
runs it); a transpose swaps the last two axes and a 1×1 ``Trace`` is a per-sample scalar (used by rules.export)."""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp
from sympy import Identity, Inverse, MatAdd, MatMul, MatrixExpr, MatrixSymbol, Trace, Transpose, ZeroMatrix
from sympy.printing.numpy import JaxPrinter, NumPyPrinter
from sympy.printing.pytorch import TorchPrinter


class ExportError(ValueError):
    """The rule cannot be exported in the requested form (an unknown format or an unsupported expression)."""


class _BatchedMatrices:
    """Mixin for sympy's array printers: matrix expressions over arrays batched on a leading axis (B, rows, cols).

    Backends set ``_inv`` (the batched matrix inverse) and print ``Transpose`` as a swap of the last two axes."""

    _inv: str = "inv"

    def _print_MatrixSymbol(self, expr: MatrixSymbol) -> str:
        return str(expr.name)

    def _print_Identity(self, expr: Identity) -> str:
        return "I"  # the generated function defines I (the identity, broadcast over the batch)

    def _print_ZeroMatrix(self, expr: ZeroMatrix) -> str:
        return "(0.0 * W)"

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_Inverse(self, expr: Inverse) -> str:
        return f"{self._module_format(self._inv)}({self._print(expr.arg)})"

    def _print_Trace(self, expr: Trace) -> str:
        if tuple(expr.arg.shape) != (1, 1):
            raise ExportError(f"only traces of 1×1 products can be exported, got {expr}")
        return self._operand(expr.arg)  # a (B, 1, 1) array: a per-sample scalar that broadcasts

    def _print_MatAdd(self, expr: MatAdd) -> str:
        out = ""
        for i, term in enumerate(expr.args):
            text = self._print(term)
            if isinstance(term, MatAdd):
                text = f"({text})"
            if text.startswith("-"):
                out += ("-" if i == 0 else " - ") + text[1:]
            else:
                out += ("" if i == 0 else " + ") + text
        return out

    def _print_MatMul(self, expr: MatMul) -> str:
        coeff, mats = expr.as_coeff_matrices()
        chain = self._chain(list(mats)) if mats else "1.0"
        if coeff == 1:
            return chain
        if coeff == -1:
            return "-" + chain
        scalar = self._print(coeff)
        if isinstance(coeff, sp.Add):
            scalar = f"({scalar})"
        return f"{scalar} * {chain}"

    # --- evaluation order -------------------------------------------------------------------------------------
    def _operand(self, expr: sp.Basic) -> str:
        """A factor as an operand of ``@``: parenthesized unless it is a symbol or a transposed symbol."""
        text = self._print(expr)
        simple = isinstance(expr, (MatrixSymbol, Identity)) or (
            isinstance(expr, Transpose) and isinstance(expr.arg, MatrixSymbol))
        return text if simple else f"({text})"

    def _fold(self, mats: Sequence[MatrixExpr], right_to_left: bool) -> str:
        """Π mats as nested binary products: right to left (matrix @ vector) or left to right (vector @ matrix)."""
        ops = [self._operand(m) for m in mats]
        if right_to_left:
            acc = ops[-1]
            for op in reversed(ops[:-1]):
                acc = f"({op} @ {acc})"
        else:
            acc = ops[0]
            for op in ops[1:]:
                acc = f"({acc} @ {op})"
        return acc

    def _chain(self, mats: list[MatrixExpr]) -> str:
        """Π mats vector-first: split at the first column (…×1) | row (1×…) cut into u @ vᵀ, u right to left,
        vᵀ left to right; without a cut, right to left when the product is a column, else left to right."""
        if len(mats) == 1:
            return self._operand(mats[0])
        for j in range(1, len(mats)):
            if mats[j - 1].shape[1] == 1:
                left, right = mats[:j], mats[j:]
                return f"({self._fold(left, True)} @ {self._fold(right, False)})"
        return self._fold(mats, right_to_left=mats[-1].shape[1] == 1)


class BatchedNumPyPrinter(_BatchedMatrices, NumPyPrinter):
    """NumPyPrinter over batched matrices."""

    _inv = "numpy.linalg.inv"

    def _print_Transpose(self, expr: Transpose) -> str:
        return f"{self._module_format('numpy.swapaxes')}({self._print(expr.arg)}, -1, -2)"


class BatchedJaxPrinter(_BatchedMatrices, JaxPrinter):
    """JaxPrinter over batched matrices."""

    _inv = "jax.numpy.linalg.inv"

    def _print_Transpose(self, expr: Transpose) -> str:
        return f"{self._module_format('jax.numpy.swapaxes')}({self._print(expr.arg)}, -1, -2)"


class BatchedTorchPrinter(_BatchedMatrices, TorchPrinter):
    """sympy's TorchPrinter over batched matrices."""

    _inv = "torch.linalg.inv"

    def _print_Transpose(self, expr: Transpose) -> str:
        return f"{self._operand(expr.arg)}.transpose(-1, -2)"


PRINTERS: dict[str, type[_BatchedMatrices]] = {
    "numpy": BatchedNumPyPrinter, "jax": BatchedJaxPrinter, "torch": BatchedTorchPrinter}


def print_batched(expr: sp.Basic, backend: str) -> str:
    """The batched array code of a sympy matrix expression for ``backend`` (numpy, jax or torch)."""
    printer = PRINTERS[backend]({"fully_qualified_modules": True, "strict": True})
    return printer.doprint(expr)
