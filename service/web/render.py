"""Server-side figures as inline SVG (no CDN, no JavaScript): formulas via matplotlib mathtext, and plots.

- :func:`latex_svg`: a rule's LaTeX (``rules.Rule.latex``) → SVG, glyphs as paths (no fonts needed by the
  browser). Sympy LaTeX that mathtext cannot typeset is simplified once; failing that the page shows the text.
- :func:`theta_plot_svg`: θ_r against meta-training episode, one line per term.
- :func:`accuracy_plot_svg`: query (meta) accuracy per episode, with a moving average.

matplotlib's object API is used (no pyplot, no global figure state) under one lock.
"""

from __future__ import annotations

import io
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import math_to_image

from service.api.schemas import FrontEntry

log = logging.getLogger("plasticity.render")
_LOCK = threading.Lock()
_XML_HEADER = re.compile(r"^.*?(?=<svg)", re.DOTALL)


def _strip_header(svg: str) -> str:
    return _XML_HEADER.sub("", svg, count=1).strip()


def simplify_latex(latex: str) -> str:
    """Rewrite constructs mathtext lacks (``\\operatorname``, ``\\mathbf``, ``\\left.``/``\\right.``, ...)."""
    out = re.sub(r"\\operatorname\{([^}]*)\}", r"\\mathrm{\1}", latex)
    out = re.sub(r"\\(?:mathbf|boldsymbol|bm)\{([^}]*)\}", r"\\mathbf{\1}", out)
    out = out.replace(r"\left.", "").replace(r"\right.", "")
    out = out.replace(r"\left", "").replace(r"\right", "")
    out = out.replace(r"\intercal", "T").replace(r"\top", "T")
    out = out.replace(r"\,", " ").replace(r"\!", "")
    return out


_SVGS: OrderedDict[tuple[str, int], str | None] = OrderedDict()
_SVGS_MAX = 1024
_MISSING = object()


def latex_svg(latex: str, fontsize: int = 15) -> str | None:
    """``latex`` typeset as an SVG string, or None when mathtext cannot read it. Kept (1,024 most recent): requests
    that need the same formula at once wait for one drawing instead of each drawing it under the lock."""
    if not latex or len(latex) > 5000:
        return None
    key = (latex, fontsize)
    found = _SVGS.get(key, _MISSING)
    if found is not _MISSING:
        return found  # type: ignore[return-value]
    with _LOCK:
        found = _SVGS.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        svg = _typeset(latex, fontsize)
        _SVGS[key] = svg
        while len(_SVGS) > _SVGS_MAX:
            _SVGS.popitem(last=False)
        return svg


def _typeset(latex: str, fontsize: int) -> str | None:
    """mathtext's SVG of ``latex`` (then of its simplified form); the caller holds ``_LOCK``."""
    for candidate in (latex, simplify_latex(latex)):
        buf = io.BytesIO()
        try:
            math_to_image(f"${candidate}$", buf, prop=FontProperties(size=fontsize), dpi=72, format="svg")
        except Exception as exc:  # noqa: BLE001 - mathtext raises ValueError and others on unsupported input
            log.debug("mathtext cannot typeset %r: %s", candidate, exc)
            continue
        return _strip_header(buf.getvalue().decode("utf-8"))
    return None


def _figure_svg(fig: Figure) -> str:
    buf = io.StringIO()
    FigureCanvasSVG(fig).print_svg(buf)
    return _strip_header(buf.getvalue())


def _finish(fig: Figure, ax: Any, xlabel: str, ylabel: str, title: str, loc: str = "lower right",
            ncols: int = 1) -> str:
    """Labels, title, grid and legend in the pages' one style, then the figure as SVG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=loc, ncols=ncols)
    return _figure_svg(fig)


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else math.nan)
    return out


def theta_plot_svg(theta_history: Sequence[dict[str, Any]], title: str = "θ trajectory") -> str | None:
    """θ_r per episode (one line per term); None when there is no history."""
    if not theta_history:
        return None
    terms = list(dict.fromkeys(k for row in theta_history if isinstance(row, dict) for k in row))
    if not terms:
        return None
    episodes = list(range(1, len(theta_history) + 1))
    with _LOCK:
        fig = Figure(figsize=(6.4, 3.2), dpi=96, layout="constrained")
        ax = fig.add_subplot()
        for term in terms:
            ax.plot(
                episodes,
                _finite([row.get(term) if isinstance(row, dict) else None for row in theta_history]),
                label=term,
                linewidth=1.6,
            )
        ax.axhline(0.0, color="#999", linewidth=0.8)
        return _finish(fig, ax, "meta-training episode", "θ", title, loc="best", ncols=min(5, len(terms)))


def accuracy_plot_svg(
    history: Sequence[dict[str, Any]], title: str = "meta-accuracy (query set)"
) -> str | None:
    """Query accuracy per episode and its moving average; None without data."""
    acc = _finite([row.get("meta_accuracy") if isinstance(row, dict) else None for row in history or []])
    if not acc or all(math.isnan(a) for a in acc):
        return None
    episodes = list(range(1, len(acc) + 1))
    window = max(1, len(acc) // 20)
    smooth = []
    for i in range(len(acc)):
        chunk = [a for a in acc[max(0, i - window + 1) : i + 1] if not math.isnan(a)]
        smooth.append(sum(chunk) / len(chunk) if chunk else math.nan)
    with _LOCK:
        fig = Figure(figsize=(6.4, 3.2), dpi=96, layout="constrained")
        ax = fig.add_subplot()
        ax.plot(episodes, acc, color="#9bb7d4", linewidth=0.8, label="per episode")
        ax.plot(episodes, smooth, color="#1f4e79", linewidth=1.8, label=f"moving average ({window})")
        ax.set_ylim(0.0, 1.0)
        return _finish(fig, ax, "meta-training episode", "query accuracy", title)


def front_plot_svg(front: Sequence[FrontEntry], highlight: int | None = None,
                   title: str = "Pareto front: terms × held-out accuracy", rings: bool = False) -> str | None:
    """Held-out accuracy ± 95 % CI against the number of terms of every front rule; the selected rule
    (the simplest within the CI of the best) filled, ``highlight`` (a rule id) ringed; None without points.
    ``rings``: every rule gets a ring in an SVG group ``ring-<rule id>``, for a page to show one of them with CSS
    (one drawing serves every rule page of the job: ``service.db.read_fields``)."""
    points = [p for p in front if p.heldout_accuracy is not None]
    if not points:
        return None
    with _LOCK:
        fig = Figure(figsize=(6.4, 3.2), dpi=96, layout="constrained")
        ax = fig.add_subplot()
        xs = [p.n_terms for p in points]
        ys = [float(p.heldout_accuracy or 0.0) for p in points]
        es = [float(p.heldout_ci95 or 0.0) for p in points]
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color="#1f4e79", ecolor="#9bb7d4", capsize=3, linewidth=1.2,
                    markerfacecolor="white", label="front rule ± 95 % CI")
        for x, y, p in zip(xs, ys, points, strict=True):
            if p.selected:
                ax.plot([x], [y], "o", color="#c55a11", markersize=8, label="selected")
            if (highlight is not None and p.rule_id == highlight) or (rings and p.rule_id is not None):
                ring = ax.plot([x], [y], "o", markersize=14, markerfacecolor="none", markeredgecolor="#2e7d32",
                               markeredgewidth=2, label="_ring" if rings else "this rule")[0]
                if rings:
                    ring.set_gid(f"ring-{p.rule_id}")
        best = max(range(len(ys)), key=ys.__getitem__)
        ax.axhspan(ys[best] - es[best], ys[best] + es[best], color="#c55a11", alpha=0.08, label="CI of the best")
        ax.set_xticks(sorted(set(xs)))
        return _finish(fig, ax, "number of terms", "held-out accuracy", title)


def vs_delta(delta: float | None, metric: str | None = None) -> str:
    """A paired difference in words: accuracy in percentage points ("+1.2 points"), other metrics signed in
    their own unit ("−0.031")."""
    if delta is None:
        return "—"
    if metric is None or "accuracy" in metric:
        return f"{delta * 100:+.1f} points"
    return f"{delta:+.3g}"


_SIZE_ATTR = re.compile(r'\b(width|height)="([0-9.]+)pt"')


_GLYPH = re.compile(r'<path id="([^"]+)" d="[^"]*"[^>]*/>')


def shared_glyphs(html: str) -> str:
    """``html`` with each glyph outline that mathtext wrote into its inline SVGs kept once: a glyph's ``<path
    id=…>`` is the same wherever its id appears, and ``<use>`` finds it anywhere in the document (a page of 100
    formulas: about half its size)."""
    seen: set[str] = set()

    def once(match: re.Match[str]) -> str:
        if match.group(1) in seen:
            return ""
        seen.add(match.group(1))
        return match.group(0)

    return _GLYPH.sub(once, html)


def scaled_svg(svg: str | None, factor: float) -> str | None:
    """A stored formula SVG (``service.db.read_fields``) drawn ``factor`` times larger: its ``width`` and
    ``height`` scale, its ``viewBox`` (and so its paths) stay."""
    if not svg or factor == 1.0:
        return svg
    head, sep, rest = svg.partition(">")
    head = _SIZE_ATTR.sub(lambda m: f'{m.group(1)}="{float(m.group(2)) * factor:.2f}pt"', head)
    return head + sep + rest
