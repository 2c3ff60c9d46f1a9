"""The ``transfer`` part of a discovery spec (docs/transfer.md): a task distribution of cells with roles, the
meta-objective over the training cells, the coefficient layout and the full-budget refit.

* Cells: ``train`` cells give the meta-training episodes; ``select`` cells (never trained on) score the front and
  choose the selected support; ``test`` cells are only reported.
* Objective over the K training cells with per-cell mean query losses L_k: ``mean`` minimizes (1/K) Σ_k L_k;
  ``quantile`` (level q) minimizes the mean of the cells whose loss is at or above the q-quantile of the L_k
  (q = 0: the mean; q = 1: the worst cell), i.e. the conditional tail of the distribution of cells.
* Coefficients: ``shared`` (θ_r for every layer), ``profile`` (θ_{r,ℓ} = a_r + b_r u_ℓ, u_ℓ = 2ℓ/(L−1) − 1 ∈
  [−1, 1]: a linear depth profile, defined for any depth) or ``per-layer`` (θ_{r,ℓ} free; one depth only).
* ``screen``: the score test of a search's screens over episodes drawn across the training cells (``mean``), or
  over the episodes of the objective's tail cells (``objective``: n from every cell, the q-quantile's cells kept).
* ``trials``: each forward step fits the screen's top-k candidates and keeps the best on the selection cells (the
  score test at θ_r = 0 misses a term whose benefit needs a large θ_r, such as the error-Hebbian term at depth).
* ``refit``: the selected support is refit alone with the full episode budget, warm-started and from scratch
  (``refit_restarts`` of each, on distinct episode streams), and the best on the selection cells is kept.
* A cell's ``stream`` picks an independent draw of its held-out episodes, so the one cell of a single-cell study
  can be its own selection cell (stream 1) while it is reported on stream 0.

This module imports nothing of discovery.spec (which imports it): the feedback modes and data set names are
checked against discovery.spec's at import time by tests/test_transfer_multitask.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CellRole = Literal["train", "select", "test"]
CellFeedback = Literal["bp", "fa", "dfa", "sign"]                     # = discovery.spec.FeedbackMode
CellDataset = Literal["mnist5k", "digits", "digits28", "emnist-balanced", "synthetic"]   # = DatasetName
Coefficients = Literal["shared", "profile", "per-layer"]
EVAL_STREAM = 1_000_000   # a cell's stream k scores on the held-out draws of seed + k·EVAL_STREAM


class Cell(BaseModel):
    """One task of a distribution. ``depth`` (weight layers L) or ``widths``; ways/shots/queries/feedback left
    None take the base spec's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: CellDataset = "mnist5k"
    depth: int | None = Field(None, ge=1, le=32)
    widths: tuple[int, ...] | None = Field(None, min_length=2, max_length=33)
    ways: int | None = Field(None, ge=2, le=47)
    shots: int | None = Field(None, ge=1, le=1000)
    queries: int | None = Field(None, ge=1, le=1000)
    feedback: CellFeedback | None = None
    role: CellRole = "train"
    stream: int = Field(0, ge=0, le=1000, description=(
        "which draw of the cell's held-out episodes (and fresh W, B) scores it: 0 = the run's evaluation episodes; "
        "k > 0 = an independent draw, so one cell can be both a selection cell (stream 1) and a reported cell "
        "(stream 0) without selecting on the episodes it is reported on"))

    @model_validator(mode="after")
    def _depth_or_widths(self) -> Cell:
        if self.widths is not None and self.depth is not None and self.depth != len(self.widths) - 1:
            raise ValueError(f"depth {self.depth} does not match widths {list(self.widths)}")
        if self.widths is not None and any(w < 1 for w in self.widths):
            raise ValueError("every width must be >= 1")
        return self

    def eval_seed(self, seed: int) -> int:
        """The seed of this cell's held-out draw: ``seed`` on stream 0, an independent one (seed + k·10⁶, kept
        below 2³¹) on stream k."""
        return (seed + EVAL_STREAM * self.stream) % 2**31

    @property
    def label(self) -> str:
        """Short name, e.g. 'mnist5k, depth 7' (the widths when given)."""
        shape = f"depth {self.depth}" if self.widths is None else "-".join(map(str, self.widths))
        extra = "".join([f", {self.ways}-way" if self.ways else "", f" {self.shots}-shot" if self.shots else "",
                         f", {self.feedback}" if self.feedback else ""])
        draw = f", episodes #{self.stream}" if self.stream else ""
        return f"{self.dataset}, {shape}{extra}{draw}"


class TransferSpec(BaseModel):
    """A task distribution with cell roles, the objective over the training cells, the coefficient layout."""

    model_config = ConfigDict(extra="forbid")

    cells: list[Cell] = Field(..., min_length=1, max_length=32)
    objective: Literal["mean", "quantile"] = "mean"
    quantile: float = Field(0.5, ge=0, le=1, description="level q of the 'quantile' objective (1: the worst cell)")
    screen: Literal["mean", "objective"] = Field("mean", description=(
        "what a search's screens score candidates on: 'mean' = n episodes drawn across the training cells; "
        "'objective' = n from every cell, scored on the objective's tail cells only (same as 'mean' under the "
        "mean objective)"))
    coefficients: Coefficients = "shared"
    refit: bool = Field(False, description="refit the selected support alone with the full budget, warm-started "
                                           "and from scratch; keep the better on the selection cells")
    trials: int = Field(1, ge=1, le=16, description=(
        "forward selection: the top-k candidates of each screen are each fitted (warm, the per-fit budget) and the "
        "one best on the selection cells joins; 1 = the largest score test joins, unfitted"))
    refit_restarts: int = Field(1, ge=1, le=8, description=(
        "refits of each kind (warm, scratch), each on its own episode stream; the best on the selection cells is "
        "kept (a long fit's outcome depends on its stream: docs/transfer.md)"))

    @field_validator("cells")
    @classmethod
    def _distinct(cls, v: list[Cell]) -> list[Cell]:
        labels = [(c.label, c.role) for c in v]
        if len(set(labels)) != len(labels):
            raise ValueError("cells must be distinct")
        if not any(c.role == "train" for c in v):
            raise ValueError("a task distribution needs at least one training cell (role 'train')")
        return v

    def role(self, role: CellRole) -> list[Cell]:
        """The cells of one role, in order."""
        return [c for c in self.cells if c.role == role]


def depth_distribution(lo: int, hi: int, dataset: str = "mnist5k") -> dict:
    """The task distribution of "a rule that works across depths lo to hi": training cells at lo, lo+2, …, hi
    (hi always included), selection cells at the depths between them (never trained on), e.g. 3–7 → train 3, 5, 7;
    select 4, 6."""
    train = sorted({*range(lo, hi + 1, 2), hi})
    cells = [{"dataset": dataset, "depth": k, "role": "train" if k in train else "select"}
             for k in range(lo, hi + 1)]
    return {"cells": cells}
