"""Primitive symbols of the rule language (docs/science.md S3, column-vector form, one layer ℓ).

``n = n_ℓ`` (post width) and ``m = n_{ℓ−1}`` (pre width) are positive integer symbols. The matrix symbols are

    x = y_{ℓ−1} (m×1),  y = y_ℓ (n×1),  e = e_ℓ (n×1),  e_pre = e_{ℓ−1} (m×1),  W = W_ℓ (n×m),  one = 1 (n×1),
    one_pre = 1 (m×1, the pre-synaptic ones vector: u·one_pre.T is u repeated over every input column),

and a weight update ΔW_ℓ is an n×m expression in them (e.g. the outer product e xᵀ is ``e*x.T``).
"""

from __future__ import annotations

import sympy as sp
from sympy import MatrixSymbol

n, m = sp.symbols("n m", integer=True, positive=True)

x = MatrixSymbol("x", m, 1)
y = MatrixSymbol("y", n, 1)
e = MatrixSymbol("e", n, 1)
e_pre = MatrixSymbol("e_pre", m, 1)
W = MatrixSymbol("W", n, m)
one = MatrixSymbol("one", n, 1)
one_pre = MatrixSymbol("one_pre", m, 1)

PRIMITIVES: dict[str, MatrixSymbol] = {"x": x, "y": y, "e": e, "e_pre": e_pre, "W": W, "one": one,
                                      "one_pre": one_pre}
"""Name (as written in rule expressions) → sympy MatrixSymbol."""

DIMS: dict[str, tuple[str, str]] = {
    name: (str(sym.shape[0]), str(sym.shape[1])) for name, sym in PRIMITIVES.items()
}
"""Name → symbolic shape as strings ("n", "m" or "1"); used for fast conformability checks."""

LATEX_NAMES: dict[MatrixSymbol, str] = {e_pre: r"e_{\mathrm{pre}}", one: r"\mathbf{1}",
                                        one_pre: r"\mathbf{1}_{\mathrm{pre}}"}
"""``symbol_names`` for sympy's LaTeX printer."""

__all__ = ["DIMS", "LATEX_NAMES", "PRIMITIVES", "W", "e", "e_pre", "m", "n", "one", "one_pre", "x", "y"]
