"""Atomic checkpoint save / spec-checked resume shared by the meta-trainers."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(folder: Path, state: dict, name: str) -> None:
    """Write `state` to folder/name atomically (temp file + os.replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / name)


def load_checkpoint(folder: Path, spec_dump: dict, name: str) -> dict | None:
    """The state stored at folder/name, or None when absent or saved for a different spec."""
    path = folder / name
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if state.get("spec") != spec_dump:
        return None
    return state
