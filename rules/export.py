"""Export a rule as self-contained source: torch, numpy, jax, sympy, LaTeX or JSON (``GET /api/rules/{id}/export``).

The array formats define ``delta_w(x, y, e, e_pre, W)`` (feedforward) or ``delta_w(r, delta, G, W, u=None)``
(recurrent, docs/science.md S2), batched over a leading dimension, in the column-vector convention of
``rules.primitives`` / ``rules.recurrent``. The body is printed from the rule's **sympy expression** by subclasses
of sympy's own code printers (rules.printers) (``NumPyPrinter``, ``TorchPrinter``, ``JaxPrinter``): a matrix product becomes a chain
of batched ``@`` evaluated vector-first (as ``rules.compiler`` runs it: Oja's y (yᵀW) is ``y @ (yᵀ @ W)``, never
``(y @ yᵀ) @ W``), a transpose swaps the last two axes, and a 1×1 ``Trace`` is a per-sample scalar of shape (B, 1, 1).
Nothing is templated over display text; the generated files import only their array library (sympy for the
sympy format) and never this project.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import sympy as sp
from sympy import MatAdd, MatrixSymbol

from rules.base import CoefficientRule
from rules.primitives import LATEX_NAMES
from rules.printers import PRINTERS, ExportError, print_batched

ExportFormat = Literal["torch", "numpy", "jax", "latex", "sympy", "json"]
FORMATS: tuple[str, ...] = ("torch", "numpy", "jax", "latex", "sympy", "json")
"""Every export format, in the order the API documents them."""

MEDIA_TYPES: dict[str, str] = {
    "torch": "text/x-python", "numpy": "text/x-python", "jax": "text/x-python", "sympy": "text/x-python",
    "latex": "application/x-latex", "json": "application/json",
}
EXTENSIONS: dict[str, str] = {"torch": "py", "numpy": "py", "jax": "py", "sympy": "py", "latex": "tex", "json": "json"}


@dataclass(frozen=True)
class Provenance:
    """Where a rule came from, written into every export's docstring / header."""

    rule_id: int | None = None
    name: str | None = None
    hash: str | None = None
    origin: str | None = None
    job_id: int | None = None
    seed: int | None = None
    spec_summary: str | None = None
    code_version: str | None = None
    created_at: str | None = None

    def lines(self) -> list[str]:
        """'key: value' lines for the fields that are set."""
        items = [("rule", self.rule_id), ("name", self.name), ("hash", self.hash), ("origin", self.origin),
                 ("job", self.job_id), ("seed", self.seed), ("spec", self.spec_summary),
                 ("code version", self.code_version), ("stored", self.created_at)]
        return [f"{k}: {v}" for k, v in items if v is not None and v != ""]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Export:
    """One exported file: its text, media type and a suggested file name."""

    format: str
    text: str
    media_type: str
    filename: str = field(default="rule")


def spec_summary(spec: Mapping[str, Any] | None) -> str | None:
    """One line about a job spec: network widths and feedback, task, rule pool, meta-training size and seed."""
    if not spec:
        return None
    net, task = spec.get("network") or {}, spec.get("task") or {}
    rule, meta = spec.get("rule") or {}, spec.get("meta") or {}
    parts = []
    if net.get("widths"):
        parts.append("network " + "-".join(str(w) for w in net["widths"]) + f", {net.get('feedback', '?')} feedback")
    if task:
        parts.append(f"task {task.get('kind', 'fewshot')} on {task.get('dataset', '?')}"
                     + (f" ({task.get('ways')}-way {task.get('shots')}-shot)" if task.get("ways") else ""))
    pool = rule.get("terms") or rule.get("pool")
    if pool:
        parts.append("terms " + (", ".join(pool) if isinstance(pool, list) else str(pool)))
    if meta:
        parts.append(f"{meta.get('episodes', '?')} episodes, lr {meta.get('lr', '?')}, seed {meta.get('seed', 0)}")
    return "; ".join(parts) or None


# ------------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """What differs between the feedforward and the recurrent language in an export."""

    name: str
    signature: str
    convention: str
    vectors: tuple[str, ...]
    matrices: tuple[str, ...]


FEEDFORWARD = Family(
    "feedforward",
    "x, y, e, e_pre, W",
    """Column-vector convention, one layer ℓ of an MLP, one sample:
    x     = y_{ℓ-1} (m×1)  pre-synaptic activity        y = y_ℓ     (n×1)  post-synaptic activity
    e     = e_ℓ     (n×1)  error at the layer's output  e_pre = e_{ℓ-1} (m×1)  pre-synaptic error
    W     = W_ℓ     (n×m)  weights (as nn.Linear.weight: out × in)      one = 1 (n×1)
so e*x.T is the outer product e xᵀ, and the update is W ← W + ΔW. Batched over a leading dimension B:
x, e_pre are (B, m); y, e are (B, n); W is (B, n, m); ΔW is (B, n, m).""",
    ("x", "y", "e", "e_pre"),
    ("W",),
)

RECURRENT = Family(
    "recurrent",
    "r, delta, G, W, u=None",
    """Recurrent fixed-point network r = f(W r + X), column-vector convention, one sample (docs/science.md S2):
    r     (N×1)  rates at the fixed point          delta = ∂L/∂r (N×1)
    G     (N×N)  diag(f'(W r + X)); give the N diagonal entries (B, N) or the full (B, N, N) matrix
    W     (N×N)  recurrent weights                  I = identity (N×N)
    u     (N×1)  adjoint fixed point u = delta + Wᵀ G u (solved here when not given and the rule needs it)
The update is W ← W + ΔW (the engine averages ΔW over a minibatch). Batched over a leading dimension B:
r, delta, u are (B, N); G is (B, N) or (B, N, N); W is (B, N, N); ΔW is (B, N, N).""",
    ("r", "delta", "u"),
    ("W",),
)


def family_of(rule: CoefficientRule) -> Family:
    from rules.recurrent import RecurrentRule

    return RECURRENT if isinstance(rule, RecurrentRule) else FEEDFORWARD


def _uses(expr: sp.Basic, name: str) -> bool:
    return any(str(s.name) == name for s in expr.atoms(MatrixSymbol))


def _prelude(family: Family, expr: sp.Basic, backend: str) -> list[str]:
    """Statements that turn the arguments into batched columns / matrices (the body of delta_w before return)."""
    lib = {"numpy": "numpy", "jax": "jax.numpy", "torch": "torch"}[backend]
    conv = "torch.as_tensor" if backend == "torch" else f"{lib}.asarray"
    lines = []
    if family is RECURRENT and _uses(expr, "u"):
        lines.append("if u is None:  # the adjoint fixed point u = delta + Wᵀ G u, i.e. (I - Wᵀ G) u = delta")
        lines.append(f"    u = {lib}.linalg.solve(I - {_swap(backend, 'W')} @ G, delta)")
        lines.append("else:")
        lines.append(f"    u = {conv}(u)[..., :, None]")
    head = [f"W = {conv}(W)"]
    for v in family.vectors:
        if v == "u":
            continue
        head.append(f"{v} = {conv}({v})[..., :, None]")
    if family is RECURRENT:
        head.append(f"G = {conv}(G)")
        diag = "torch.diag_embed(G)" if backend == "torch" else f"G[..., :, None] * {lib}.eye(G.shape[-1], dtype=G.dtype)"
        head.append("if G.ndim == W.ndim - 1:  # the diagonal of G, (B, N)")
        head.append(f"    G = {diag}")
        head.append(f"I = {lib}.eye(W.shape[-1], dtype=W.dtype)")
    else:
        head.append(f"one = {lib}.ones_like(y)")
    return head + lines


def _swap(backend: str, name: str) -> str:
    if backend == "torch":
        return f"{name}.transpose(-1, -2)"
    lib = "numpy" if backend == "numpy" else "jax.numpy"
    return f"{lib}.swapaxes({name}, -1, -2)"


def _docstring(rule: CoefficientRule, family: Family, prov: Provenance, fmt: str, printer: str) -> str:
    title = f"{prov.name or rule.name or 'rule'}: a plasticity rule exported from the plasticity-rule discovery service"
    lines = [f"{title} ({fmt}).", "", f"ΔW = {rule.to_text()}", "", family.convention, "", "Provenance:"]
    lines += [f"    {line}" for line in prov.lines()] or ["    (none recorded)"]
    generated = f"Generated from the rule's sympy expression by sympy {sp.__version__}'s {printer}"
    lines += ["", f"{generated}; runs without the plasticity project installed."]
    return "\n".join(lines)


def _header(rule: CoefficientRule, prov: Provenance) -> list[str]:
    return [
        f"RULE_HASH = {prov.hash or rule.hash()!r}",
        f"EXPRESSION = {rule.to_text()!r}",
        f"COEFFICIENTS = {json.dumps(rule.coefficients)}",
    ]


def _return_lines(expr: sp.Basic, backend: str) -> str:
    """The printed expression; a sum is split one summand per line inside parentheses."""
    if not isinstance(expr, MatAdd):
        return print_batched(expr, backend)
    lines = []
    for i, term in enumerate(expr.args):
        text = print_batched(term, backend)
        if text.startswith("-"):
            text = ("- " if i else "-") + text[1:]
        elif i:
            text = "+ " + text
        lines.append(f"        {text}")
    return "(\n" + "\n".join(lines) + "\n    )"


def _array_source(rule: CoefficientRule, prov: Provenance, backend: str) -> str:
    """numpy / jax / torch source defining delta_w (and, for torch, the PlasticityRule module)."""
    family = family_of(rule)
    expr = rule.expression
    printer = PRINTERS[backend]
    body = _return_lines(expr, backend)
    imports = {"numpy": ["import numpy"], "jax": ["import jax", "import jax.numpy"], "torch": ["import torch"]}[backend]
    doc = _docstring(rule, family, prov, backend, printer.__mro__[2].__name__)
    prelude = "\n".join(_prelude(family, expr, backend))
    returns = "(B, N, N)" if family is RECURRENT else "(B, n, m)"
    func = (
        f"def delta_w({family.signature}):\n"
        f'    """ΔW of the rule for a batch of samples (leading dimension B); returns {returns}. See the module '
        'docstring."""\n'
        + textwrap.indent(prelude, "    ") + "\n"
        + f"    return {body}\n"
    )
    parts = [f'"""{doc}\n"""', "", "\n".join(imports), "", "\n".join(_header(rule, prov)), "", "", func]
    if backend == "torch":
        parts += ["", _TORCH_MODULE[family.name]]
    return "\n".join(parts)


_TORCH_MODULE = {
    "feedforward": '''
class PlasticityRule(torch.nn.Module):
    """Applies delta_w online to a list of layers, all from the same pre-update state, as the engine does.

    ``layers``: nn.Linear modules (their ``weight``, n_ℓ × m_ℓ, is updated in place) or weight tensors, either
    (n_ℓ, m_ℓ) shared by the batch or (B, n_ℓ, m_ℓ), one network per batch row.
    ``forward(activations, errors)``: activations = [y_0 (the input), y_1, ..., y_L] and errors = [e_0, e_1, ...,
    e_L] (e_0 the error fed back to the input; zeros when there is none), each (B, width) or (width,) for one
    sample. Layer ℓ sees x = y_{ℓ-1}, y = y_ℓ, e = e_ℓ, e_pre = e_{ℓ-1}. Shared weights receive the batch mean of
    ΔW (online learning: B = 1); ``scale`` multiplies every update. Returns the list of applied ΔW.
    """

    def __init__(self, layers, scale=1.0):
        super().__init__()
        self.layers = list(layers)
        self.scale = float(scale)

    def weights(self):
        return [layer.weight if hasattr(layer, "weight") else layer for layer in self.layers]

    @torch.no_grad()
    def forward(self, activations, errors):
        weights = self.weights()
        if len(activations) != len(weights) + 1 or len(errors) != len(weights) + 1:
            raise ValueError(f"{len(weights)} layers need {len(weights) + 1} activations and errors, got "
                             f"{len(activations)} and {len(errors)}")
        deltas = []
        for i, W in enumerate(weights):
            x, y, e, e_pre = (torch.as_tensor(t, dtype=W.dtype, device=W.device)
                              for t in (activations[i], activations[i + 1], errors[i + 1], errors[i]))
            if x.dim() == 1:
                x, y, e, e_pre = x[None], y[None], e[None], e_pre[None]
            Wb = W if W.dim() == 3 else W.expand(x.shape[0], *W.shape)
            d = delta_w(x, y, e, e_pre, Wb)
            deltas.append(self.scale * (d if W.dim() == 3 else d.mean(0)))
        for W, d in zip(weights, deltas):
            W.add_(d)
        return deltas
''',
    "recurrent": '''
class PlasticityRule(torch.nn.Module):
    """Applies delta_w to the recurrent weights ``W`` (an (N, N) tensor or a module with ``.weight``) in place.

    ``forward(r, delta, G, u=None)``: a minibatch (B, N) of fixed points; W receives the batch mean of ΔW (as the
    engine applies a recurrent rule), times ``scale``. Returns the applied ΔW.
    """

    def __init__(self, W, scale=1.0):
        super().__init__()
        self.layer = W
        self.scale = float(scale)

    @torch.no_grad()
    def forward(self, r, delta, G, u=None):
        W = self.layer.weight if hasattr(self.layer, "weight") else self.layer
        r = torch.as_tensor(r, dtype=W.dtype, device=W.device)
        if r.dim() == 1:
            r, delta, G = r[None], torch.as_tensor(delta)[None], torch.as_tensor(G)[None]
            u = None if u is None else torch.as_tensor(u)[None]
        d = self.scale * delta_w(r, delta, G, W.expand(r.shape[0], *W.shape), u).mean(0)
        W.add_(d)
        return d
''',
}


def _sympy_source(rule: CoefficientRule, prov: Provenance) -> str:
    """sympy source that rebuilds the expression (``srepr``) and evaluates it exactly, sample by sample."""
    family = family_of(rule)
    doc = _docstring(rule, family, prov, "sympy", "srepr printer")
    names = ("x", "y", "e", "e_pre", "W") if family is FEEDFORWARD else ("r", "delta", "G", "W", "u")
    return "\n".join([
        f'"""{doc}\n"""',
        "",
        "import sympy",
        "from sympy import *  # the names srepr writes: MatAdd, MatMul, MatrixSymbol, Symbol, Integer, Float, ...",
        "from sympy.core.symbol import Str",
        "",
        "\n".join(_header(rule, prov)),
        "",
        f"EXPR = {sp.srepr(rule.expression)}",
        '"""The rule\'s sympy matrix expression ΔW."""',
        "",
        "",
        f"def delta_w({', '.join(names)}):",
        '    """ΔW per sample, exactly: each argument is a batch (a list, or an array with a leading dimension) of',
        "    vectors (x, y, e, e_pre / r, delta, u) or matrices (W, G); returns a list of sympy Matrices. With the",
        '    column-vector convention of the module docstring."""',
        f"    args = {{{', '.join(f'{n!r}: {n}' for n in names)}}}",
        "    symbols = {s.name: s for s in EXPR.atoms(MatrixSymbol)}",
        "    batch = len(W)",
        "    out = []",
        "    for b in range(batch):",
        "        values = {}",
        "        for name, sym in symbols.items():",
        "            if name == 'one':",
        "                values[sym] = sympy.ones(len(args['y'][b]), 1)",
        "                continue",
        "            values[sym] = sympy.Matrix(args[name][b])  # a list of numbers is a column",
        "        sizes = {}",
        "        for sym, value in values.items():",
        "            for dim, size in zip(sym.shape, value.shape):",
        "                if isinstance(dim, Symbol):",
        "                    sizes[dim] = size",
        "        explicit = EXPR.subs(sizes).xreplace({s.subs(sizes): v for s, v in values.items()})",
        "        out.append(sympy.Matrix(explicit.doit().as_explicit()))",
        "    return out",
        "",
    ])


def _latex_source(rule: CoefficientRule, prov: Provenance) -> str:
    """A LaTeX snippet: ΔW = sympy's LaTeX of the expression, provenance as comments."""
    family = family_of(rule)
    title = f"{prov.name or rule.name or 'rule'}: a plasticity rule exported from the plasticity-rule discovery service"
    lines = [f"% {title}", f"% ΔW = {rule.to_text()}"]
    lines += [f"% {line}" for line in prov.lines()]
    lines += [f"% {line}" for line in family.convention.splitlines()]
    full = sp.latex(rule.expression, symbol_names=LATEX_NAMES) if family is FEEDFORWARD else rule.latex()
    lines += ["\\begin{equation}", f"  \\Delta W = {rule.latex()}", "\\end{equation}",
              "% the expanded sympy expression:", f"% \\Delta W = {full}", ""]
    return "\n".join(lines)


def _json_source(rule: CoefficientRule, prov: Provenance) -> str:
    family = family_of(rule)
    data = {
        "format": "plasticity-rule/v1",
        "family": family.name,
        "name": prov.name or rule.name,
        "expression": rule.to_text(),
        "canonical": rule.canonical(),
        "latex": rule.latex(),
        "coefficients": rule.coefficients,
        "terms": rule.terms,
        "hash": rule.hash(),
        "srepr": sp.srepr(rule.expression),
        "signature": f"delta_w({family.signature})",
        "convention": family.convention,
        "provenance": prov.to_dict(),
    }
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def export_rule(rule: CoefficientRule, fmt: str, provenance: Provenance | None = None) -> Export:
    """The rule as ``fmt`` (one of :data:`FORMATS`); ExportError for an unknown format or unprintable expression."""
    prov = provenance or Provenance(name=rule.name, hash=rule.hash())
    if fmt in PRINTERS:
        text = _array_source(rule, prov, fmt)
    elif fmt == "sympy":
        text = _sympy_source(rule, prov)
    elif fmt == "latex":
        text = _latex_source(rule, prov)
    elif fmt == "json":
        text = _json_source(rule, prov)
    else:
        raise ExportError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    stem = f"rule_{prov.rule_id}" if prov.rule_id is not None else f"rule_{(prov.hash or rule.hash())[:12]}"
    suffix = f"_{fmt}" if EXTENSIONS[fmt] == "py" else ""
    return Export(fmt, text, MEDIA_TYPES[fmt], f"{stem}{suffix}.{EXTENSIONS[fmt]}")


__all__ = ["EXTENSIONS", "FORMATS", "MEDIA_TYPES", "Export", "ExportError", "ExportFormat", "Provenance",
           "export_rule", "print_batched", "spec_summary"]
