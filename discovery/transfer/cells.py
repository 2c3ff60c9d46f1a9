"""Cells: one few-shot task each (depth or widths, data set, ways, shots, feedback) and its role in a transfer
study (docs/transfer.md): ``train`` (meta-training episodes), ``select`` (never trained on; the front and the
selected support are chosen there) or ``test`` (only reported).

A cell's network is the paper's net stretched to its depth (discovery.goal_phrases.network_widths: the hidden
widths interpolated along 170-130-100-70, so depth 5 is 784-170-130-100-70-10 and depth 3 is 784-170-70-10)
unless it names its widths. :func:`cell_spec` is the job spec of one cell: the base spec with the cell's network
and task, so every cell is run by the ordinary meta-trainer (discovery.feedforward.trainer.MetaTrainer).
"""

from __future__ import annotations

from typing import Any

from discovery.spec import DiscoverySpec
from discovery.transfer.spec import Cell, CellRole

__all__ = ["INPUT_DIM", "Cell", "CellRole", "cell_spec", "network_widths"]

#: input width of each built-in data set (synthetic takes the base spec's)
INPUT_DIM: dict[str, int] = {"mnist5k": 784, "digits28": 784, "emnist-balanced": 784, "digits": 64}


def network_widths(cell: Cell, base: list[int]) -> list[int]:
    """[n_0, …, n_L] of a cell, given the base spec's widths (their output width is kept)."""
    from discovery.goal_phrases import network_widths as stretched

    if cell.widths is not None:
        return list(cell.widths)
    n_in = INPUT_DIM.get(cell.dataset, base[0])
    depth = cell.depth if cell.depth is not None else len(base) - 1
    if cell.depth is None and n_in == base[0]:
        return list(base)
    return stretched(depth, n_in, base[-1])


def cell_spec(base: DiscoverySpec, cell: Cell, **rule_and_meta: Any) -> DiscoverySpec:
    """The base spec with the cell's network and task; ``rule=...`` / ``meta={...}`` replace or update those
    parts (a plain fit: no search, no sweep, no task distribution)."""
    data = base.model_dump()
    data["network"]["widths"] = network_widths(cell, base.network.widths)
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
