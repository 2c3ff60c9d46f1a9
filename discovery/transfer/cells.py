"""Cells: one few-shot task each (depth or widths, data set, ways, shots, feedback) and its role in a transfer
study (docs/transfer.md): ``train`` (meta-training episodes), ``select`` (never trained on; the front and the
selected support are chosen there) or ``test`` (only reported).

A cell's network is the paper's net stretched to its depth (discovery.goal_phrases.network_widths: the hidden
widths interpolated along 170-130-100-70, so depth 5 is 784-170-130-100-70-10 and depth 3 is 784-170-70-10)
unless it names its widths. :func:`cell_spec` is the job spec of one cell: the base spec with the cell's network
and task, so every cell is run by the ordinary meta-trainer (discovery.feedforward.trainer.MetaTrainer).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from discovery.spec import DatasetName, DiscoverySpec, FeedbackMode

CellRole = Literal["train", "select", "test"]
#: input width of each built-in data set (synthetic takes the base spec's)
INPUT_DIM: dict[str, int] = {"mnist5k": 784, "digits28": 784, "emnist-balanced": 784, "digits": 64}


class Cell(BaseModel):
    """One task of a distribution. ``depth`` (weight layers L) or ``widths``; ways/shots/queries/feedback left
    None take the base spec's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetName = "mnist5k"
    depth: int | None = Field(None, ge=1, le=32)
    widths: tuple[int, ...] | None = Field(None, min_length=2, max_length=33)
    ways: int | None = Field(None, ge=2, le=47)
    shots: int | None = Field(None, ge=1, le=1000)
    queries: int | None = Field(None, ge=1, le=1000)
    feedback: FeedbackMode | None = None
    role: CellRole = "train"

    @model_validator(mode="after")
    def _depth_or_widths(self) -> Cell:
        if self.widths is not None and self.depth is not None and self.depth != len(self.widths) - 1:
            raise ValueError(f"depth {self.depth} does not match widths {list(self.widths)}")
        if self.widths is not None and any(w < 1 for w in self.widths):
            raise ValueError("every width must be >= 1")
        return self

    @property
    def label(self) -> str:
        """Short name, e.g. 'mnist5k, depth 7' (the widths when given)."""
        shape = f"depth {self.depth}" if self.widths is None else "-".join(map(str, self.widths))
        extra = "".join([f", {self.ways}-way" if self.ways else "", f" {self.shots}-shot" if self.shots else "",
                         f", {self.feedback}" if self.feedback else ""])
        return f"{self.dataset}, {shape}{extra}"

    def network_widths(self, base: list[int]) -> list[int]:
        """[n_0, …, n_L] of this cell, given the base spec's widths (their output width is kept)."""
        from discovery.goal_phrases import network_widths

        if self.widths is not None:
            return list(self.widths)
        n_in = INPUT_DIM.get(self.dataset, base[0])
        depth = self.depth if self.depth is not None else len(base) - 1
        if self.depth is None and n_in == base[0]:
            return list(base)
        return network_widths(depth, n_in, base[-1])


def cell_spec(base: DiscoverySpec, cell: Cell, **rule_and_meta: Any) -> DiscoverySpec:
    """The base spec with the cell's network and task; ``rule=...`` / ``meta={...}`` replace or update those
    parts (a plain fit: no search, no sweep, no task distribution)."""
    data = base.model_dump()
    data["network"]["widths"] = cell.network_widths(base.network.widths)
    if cell.feedback is not None:
        data["network"]["feedback"] = cell.feedback
    task = data["task"]
    task["dataset"] = cell.dataset
    for k in ("ways", "shots", "queries"):
        if getattr(cell, k) is not None:
            task[k] = getattr(cell, k)
    if "rule" in rule_and_meta:
        data["rule"] = rule_and_meta["rule"]
    data["meta"].update(rule_and_meta.get("meta", {}))
    data["search"] = {"method": "none"}
    data["sweep"] = {}
    data.pop("transfer", None)
    return DiscoverySpec.model_validate(data)
