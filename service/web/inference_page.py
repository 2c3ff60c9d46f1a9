"""The inferred rule's evidence on its page (docs/inference.md): recorded against simulated trajectories as an
SVG (matplotlib, the pages' one style), the coefficients with their bootstrap intervals, the held-out explained
variance, the recording and its checksum, and the warnings."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from service.db.models import ORIGIN_INFERRED, Rule
from service.web.render import _LOCK, _finish, _finite

__all__ = ["inference_context", "trajectory_plot_svg"]


def trajectory_plot_svg(traj: dict[str, Any] | None) -> str | None:
    """One colour per series: the recording solid, the inferred rule's simulation dashed; None without data."""
    if not traj or not traj.get("series"):
        return None
    from matplotlib.figure import Figure

    t = _finite(traj.get("t") or [])
    with _LOCK:
        fig = Figure(figsize=(6.4, 3.4), dpi=96, layout="constrained")
        ax = fig.add_subplot()
        for i, s in enumerate(traj["series"]):
            colour = f"C{i % 10}"
            ax.plot(t, _finite(s.get("recorded") or []), color=colour, lw=1.2, label=f"{s.get('label')} recorded")
            ax.plot(t, _finite(s.get("simulated") or []), color=colour, lw=1.2, ls="--", label="simulated")
        return _finish(fig, ax, "time", str(traj.get("quantity", "")),
                       f"trial {traj.get('trial')}: recorded (solid) vs inferred rule (dashed)", loc="best", ncols=2)


def inference_context(rule: Rule) -> dict[str, Any]:
    """What ``rule.html`` shows for an inferred rule (empty for other rules)."""
    if rule.origin != ORIGIN_INFERRED:
        return {}
    prov = rule.provenance or {}
    svg = trajectory_plot_svg(prov.get("trajectories"))
    return {"inference": {"recording": prov.get("recording") or {}, "coefficients": prov.get("coefficients") or {},
                          "ev": prov.get("heldout_explained_variance"), "ci95": prov.get("heldout_ci95"),
                          "warnings": prov.get("warnings") or [], "method": prov.get("method"),
                          "trajectory_svg": Markup(svg) if svg else None}}
