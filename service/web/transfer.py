"""The rule page's transfer heat table: the latest ``transfer`` benchmark of a rule, one row per cell, one column
per baseline with the paired Δ = rule − baseline (points) and its 95 % CI, colored by sign and size
(docs/transfer.md). The numbers were computed by the engine (discovery.benchmarks.cache.compare_cells) and stored
with the score; this module only reads and colors them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import BenchmarkRun, BenchmarkScore

SUITE = "transfer"
#: |Δ| (points) at which a cell's color is at full strength
FULL_SCALE = 10.0


class TransferCell(BaseModel):
    """One baseline's column of one cell: Δ and its CI in points, the verdict and the cell's background color."""

    delta: float | None
    lo: float | None
    hi: float | None
    verdict: str
    color: str


class TransferRow(BaseModel):
    """One cell of the grid: its name and role, the rule's accuracy, diverged episodes, Δ per baseline."""

    cell: str
    role: str
    score: float | None
    diverged: int
    failed: bool
    vs: dict[str, TransferCell]


class TransferTable(BaseModel):
    """The heat table of one transfer benchmark run."""

    benchmark_id: int
    baselines: list[str]
    rows: list[TransferRow]


def color(delta: float | None, lo: float | None, hi: float | None) -> str:
    """Green when the CI lies above 0, red when below, grey when it holds 0; stronger with |Δ| (CSS rgba)."""
    if delta is None or lo is None or hi is None:
        return "transparent"
    alpha = 0.15 + 0.6 * min(abs(delta) / FULL_SCALE, 1.0)
    if lo > 0:
        return f"rgba(40, 160, 70, {alpha:.2f})"
    if hi < 0:
        return f"rgba(210, 50, 40, {alpha:.2f})"
    return "rgba(150, 150, 150, 0.15)"


def _points(v: Any) -> float | None:
    return None if v is None else 100.0 * float(v)


def transfer_table(session: Session, rule_id: int) -> TransferTable | None:
    """The heat table of the rule's latest succeeded transfer benchmark (None when it has none)."""
    score = session.scalars(
        select(BenchmarkScore).join(BenchmarkRun, BenchmarkScore.run_id == BenchmarkRun.id)
        .where(BenchmarkScore.rule_id == rule_id, BenchmarkScore.suite == SUITE, BenchmarkRun.status == "succeeded")
        .order_by(BenchmarkScore.id.desc()).limit(1)).first()
    cells = ((score.metrics or {}).get("cells") if score is not None else None) or []
    if score is None or not cells:
        return None
    baselines: list[str] = []
    rows = []
    for c in cells:
        vs = {}
        for name, v in (c.get("vs") or {}).items():
            if name not in baselines:
                baselines.append(name)
            lo, hi = (v.get("ci95") or [None, None])[:2]
            d, lo, hi = _points(v.get("delta")), _points(lo), _points(hi)
            vs[name] = TransferCell(delta=d, lo=lo, hi=hi, verdict=str(v.get("verdict", "")), color=color(d, lo, hi))
        rows.append(TransferRow(cell=str(c.get("cell")), role=str(c.get("role", "")), score=c.get("score"),
                                diverged=int(c.get("diverged") or 0), failed=bool(c.get("failed")), vs=vs))
    return TransferTable(benchmark_id=score.run_id, baselines=baselines, rows=rows)
