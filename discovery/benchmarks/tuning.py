"""Fair tuning of a baseline as a plan: which hyperparameter points to evaluate next, given what was measured.

The same plan drives the serial tuning in a suite runner and the parallel fan-out in ``workers.baseline_tasks``
(every point of a round is one Ray task), so both choose the same point from the same measurements.

* Rounds 0 … S−1 are the baseline's stages (``BaselineSpec.stages``): stage 0 lists full points, stage k > 0
  partial points merged onto the best point so far (coordinate search; 9 points in all for every baseline).
* Then the **grid extension**: while the best point's value v of an extendable hyperparameter h is the largest
  (smallest) value of h evaluated, evaluate one more point with h = v · r (v / r), r = max(v_max / v_next, 1.5),
  the ratio of the last two grid values on that side — at most ``max_extensions`` points per (h, direction),
  never past ``EXTEND_BOUNDS[h]`` (a step that would cross the bound evaluates the bound itself). The extension stops in a direction as soon as a new point is not better
  (the best is then inside the grid) or the bound is reached. The report lists how far each grid went.
* Score of a point: mean meta-train accuracy over the same tuning episodes; the best is the highest mean, the
  first in evaluation order on ties (measurements are recorded in plan order, whatever order tasks end in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

#: Hyperparameters the extension may move, with the range it never leaves (lr: online SGD; gamma: Oja's
#: weight; eta: the PC relaxation step, which diverges at η ≥ 0.5 for Strict on the paper's CNN, so ≤ 0.9).
EXTEND_BOUNDS: dict[str, tuple[float, float]] = {"lr": (1e-4, 3.0), "gamma": (1e-5, 0.3), "eta": (0.01, 0.9)}
#: Extra points per (hyperparameter, direction).
MAX_EXTENSIONS = 3
#: Smallest step factor of the extension.
MIN_RATIO = 1.5


class PointScore(BaseModel):
    """One evaluated point: its round (stage index; ``"extend"`` for extension points), its hyperparameters, its
    mean meta-train accuracy and how many of its episodes diverged."""

    stage: int | str
    hyperparameters: dict[str, Any]
    accuracy: float
    diverged: int = 0


class Extension(BaseModel):
    """How far one hyperparameter's grid went beyond the plan: the values added, in order, and why it stopped."""

    hyperparameter: str
    direction: str  # "up" | "down"
    values: list[float] = Field(default_factory=list)
    stopped: str = ""  # "interior" (the last point was not better) | "bound" | "max_extensions"


class TuningPlan:
    """The tuning state machine of one baseline (see the module docstring).

    ``next_points()`` gives the points of the current round (empty when done); ``record(scores)`` takes their
    measurements in the same order and advances."""

    def __init__(self, stages: Sequence[Sequence[Mapping[str, Any]]], *, extend: bool = True,
                 max_extensions: int = MAX_EXTENSIONS, bounds: Mapping[str, tuple[float, float]] | None = None):
        self.stages = [[dict(p) for p in st] for st in stages]
        self.extend = bool(extend)
        self.max_extensions = int(max_extensions)
        self.bounds = dict(EXTEND_BOUNDS if bounds is None else bounds)
        self.table: list[PointScore] = []
        self.best: dict[str, Any] = {}
        self.best_acc = -1.0
        self.round = 0
        self.extensions: dict[tuple[str, str], Extension] = {}
        self._pending: list[tuple[str, str]] = []  # the (h, direction) each pending extension point explores

    @property
    def planned_points(self) -> int:
        """Points of the stages (the fixed budget, before any extension)."""
        return sum(len(s) for s in self.stages)

    @property
    def done(self) -> bool:
        return not self.next_points()

    def next_points(self) -> list[dict[str, Any]]:
        """The hyperparameter points to evaluate in this round (all independent of each other)."""
        if self.round < len(self.stages):
            base = dict(self.best)
            return [{**base, **delta} for delta in self.stages[self.round]]
        if not self.extend:
            return []
        points, self._pending = [], []
        for h, direction, value in self._edge_moves():
            points.append({**self.best, h: value})
            self._pending.append((h, direction))
        return points

    def record(self, scores: Sequence[tuple[float, int]]) -> None:
        """Measurements (mean accuracy, diverged episodes) of ``next_points()``, in that order."""
        points = self.next_points()
        if len(points) != len(scores):
            raise ValueError(f"expected {len(points)} measurements, got {len(scores)}")
        stage: int | str = self.round if self.round < len(self.stages) else "extend"
        pending = list(self._pending)
        for i, (hp, (acc, div)) in enumerate(zip(points, scores)):
            self.table.append(PointScore(stage=stage, hyperparameters=hp, accuracy=float(acc), diverged=int(div)))
            better = float(acc) > self.best_acc
            if better:
                self.best, self.best_acc = dict(hp), float(acc)
            if stage == "extend":
                h, direction = pending[i]
                ext = self.extensions.setdefault((h, direction), Extension(hyperparameter=h, direction=direction))
                ext.values.append(float(hp[h]))
                if not better:
                    ext.stopped = "interior"
        self.round += 1

    def _edge_moves(self) -> list[tuple[str, str, float]]:
        """(h, direction, next value) for every extendable hyperparameter whose best value is on the grid edge."""
        moves = []
        for h, v in self.best.items():
            if h not in self.bounds or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            vals = sorted({float(p.hyperparameters[h]) for p in self.table if h in p.hyperparameters})
            if len(vals) < 2 or v not in (vals[0], vals[-1]):
                continue
            direction = "up" if v == vals[-1] else "down"
            ext = self.extensions.get((h, direction))
            if ext is not None and ext.stopped:
                continue
            if ext is not None and len(ext.values) >= self.max_extensions:
                ext.stopped = "max_extensions"
                continue
            lo, hi = self.bounds[h]
            if direction == "up":
                nxt = v * max(vals[-1] / vals[-2], MIN_RATIO)
            else:
                nxt = v / max(vals[1] / vals[0], MIN_RATIO)
            nxt = min(max(float(f"{nxt:.3g}"), lo), hi)  # a step past the bound evaluates the bound itself
            if nxt == v or not lo <= nxt <= hi:
                self.extensions.setdefault((h, direction), Extension(hyperparameter=h, direction=direction)
                                           ).stopped = "bound"
                continue
            moves.append((h, direction, nxt))
        return moves

    def result(self) -> dict[str, Any]:
        """The tuning report: ``{split, episodes, grid_points, planned_points, best, best_on_grid_edge, grid,
        extensions}`` (``episodes`` and ``split`` are filled in by the caller)."""
        edge = []
        for h, v in self.best.items():
            vals = {p.hyperparameters.get(h) for p in self.table} - {None}
            if len(vals) > 1 and isinstance(v, (int, float)) and v in (min(vals), max(vals)):
                edge.append(h)
        return {
            "grid_points": len(self.table),
            "planned_points": self.planned_points,
            "best": dict(self.best),
            "best_on_grid_edge": edge,
            "grid": [p.model_dump() for p in self.table],
            "extensions": [e.model_dump() for e in self.extensions.values()],
        }
