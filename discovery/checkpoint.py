"""Atomic checkpoint save / spec-checked resume shared by the meta-trainers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class Checkpointed:
    """save / try_resume for a trainer with `spec`, `state_dict()`, `load_state_dict()` and `checkpoint_name`."""

    checkpoint_name: str
    spec: Any
    resumed_from: int | None = None   # the episode a checkpoint restored (None: a fresh run)

    def save(self, folder: Path) -> None:
        save_checkpoint(folder, self.state_dict(), self.checkpoint_name)  # type: ignore[attr-defined]

    def try_resume(self, folder: Path) -> bool:
        """Load the checkpoint in `folder` when it was saved for this very spec; False otherwise."""
        state = load_checkpoint(folder, self.spec.model_dump(), self.checkpoint_name)
        if state is None:
            return False
        self.load_state_dict(state)  # type: ignore[attr-defined]
        return True

    def run(self, progress: Callable[[Any], None] | None, folder: Path | None,
            should_stop: Callable[[], bool] | None) -> bool:
        """Resume from `folder` if possible, then `step()` until spec.meta.episodes, reporting each event and
        checkpointing every spec.meta.checkpoint_every steps and at the end; True when `should_stop` cut it short."""
        meta = self.spec.meta
        if folder is not None and self.try_resume(folder):
            self.resumed_from = self.episode  # type: ignore[attr-defined]
        stopped = False
        while self.episode < meta.episodes:  # type: ignore[attr-defined]
            if should_stop is not None and should_stop():
                stopped = True
                break
            event = self.step()  # type: ignore[attr-defined]
            if progress is not None:
                progress(event)
            if folder is not None and self.episode % meta.checkpoint_every == 0:  # type: ignore[attr-defined]
                self.save(folder)
        if folder is not None:
            self.save(folder)
        return stopped
