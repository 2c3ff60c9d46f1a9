"""Atomic checkpoint save / spec-checked resume shared by the meta-trainers.

A checkpoint holds **tensors and JSON only**, never pickled Python objects: the trainer's state is split into a
flat ``{name: Tensor}`` table and a JSON skeleton in which each tensor is a ``{"__tensor__": name}`` reference
(tuples and dicts with non-string keys have their own small JSON forms, so the state comes back exactly as it was
saved). Both go into one file written with ``torch.save`` and read with ``torch.load(weights_only=True)``, whose
unpickler accepts only tensors and plain containers: a checkpoint folder shared by every worker of a cluster
(``PLASTICITY_CHECKPOINT_DIR``) cannot be used to run code in the workers. A file that is not a valid checkpoint
(truncated, tampered, an unsafe pickle) is ignored with a warning and the run starts afresh.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: the format tag stored in every checkpoint file
FORMAT = "plasticity-checkpoint/v2"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointFormatError(ValueError):
    """The state holds something other than tensors and JSON values, or a file is not a valid checkpoint."""


def encode_state(state: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """Split ``state`` into (JSON text, ``{name: Tensor}``); raises :class:`CheckpointFormatError` for any other
    object (a model, a function, a numpy array: convert it to a tensor or plain data first)."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().cpu().contiguous()
            return {_TENSOR: name}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {_TUPLE: [enc(v) for v in value]}
        if isinstance(value, list):
            return [enc(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: enc(v) for k, v in value.items()}
            return {_ITEMS: [[enc(k), enc(v)] for k, v in value.items()]}
        raise CheckpointFormatError(
            f"a checkpoint stores tensors and JSON values only, not {type(value).__module__}.{type(value).__name__}"
        )

    skeleton = enc(state)
    return json.dumps(skeleton, allow_nan=True), tensors


def decode_state(text: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode_state`."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if isinstance(value, dict):
            if set(value) == {_TENSOR}:
                name = value[_TENSOR]
                if name not in tensors:
                    raise CheckpointFormatError(f"the checkpoint refers to a missing tensor {name!r}")
                return tensors[name]
            if set(value) == {_TUPLE}:
                return tuple(dec(v) for v in value[_TUPLE])
            if set(value) == {_ITEMS}:
                return {_hashable(dec(k)): dec(v) for k, v in value[_ITEMS]}
            return {k: dec(v) for k, v in value.items()}
        return value

    return dec(json.loads(text))


def _hashable(key: Any) -> Any:
    """A decoded dict key (a list can only come from a tuple key written by an older encoder)."""
    return tuple(key) if isinstance(key, list) else key


def save_checkpoint(folder: Path, state: dict, name: str) -> None:
    """Write ``state`` (tensors and JSON values) to folder/name atomically (temp file + os.replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    text, tensors = encode_state(state)
    tmp = folder / f"{name}.{os.getpid()}.tmp"
    torch.save({"format": FORMAT, "state": text, "tensors": tensors}, tmp)
    os.replace(tmp, folder / name)


def read_checkpoint(path: Path) -> dict:
    """The state stored in ``path``; raises :class:`CheckpointFormatError` when it is not a safe checkpoint.

    Only ``torch.load(weights_only=True)`` reads the file. A plain dict without the format tag (written by an
    earlier version, which pickled the same tensors and containers) is accepted when that safe loader reads it.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler refuses anything but tensors and containers
        raise CheckpointFormatError(f"{path} is not a safe checkpoint: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{path} holds a {type(raw).__name__}, not a checkpoint")
    if raw.get("format") != FORMAT:
        return raw  # an older checkpoint: plain containers of tensors, already read by the safe loader
    tensors = raw.get("tensors")
    text = raw.get("state")
    if not isinstance(tensors, dict) or not isinstance(text, str):
        raise CheckpointFormatError(f"{path} is not a {FORMAT} file")
    state = decode_state(text, tensors)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_checkpoint(folder: Path, spec_dump: dict, name: str) -> dict | None:
    """The state stored at folder/name, or None when absent, unreadable or saved for a different spec."""
    path = folder / name
    if not path.exists():
        return None
    try:
        state = read_checkpoint(path)
    except CheckpointFormatError as exc:
        log.warning("ignoring checkpoint %s (starting afresh): %s", path, exc)
        return None
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

    def resume(self, folder: Path | None) -> int | None:
        """Load `folder`'s checkpoint when it was saved for this spec; the episode it restored (None: none)."""
        if folder is not None and self.try_resume(folder):
            self.resumed_from = self.episode  # type: ignore[attr-defined]
        return self.resumed_from

    def run(self, progress: Callable[[Any], None] | None, folder: Path | None,
            should_stop: Callable[[], bool] | None, resume: bool = True) -> bool:
        """Resume from `folder` if possible (unless `resume` is False: the caller already did, see `resume()`),
        then `step()` until spec.meta.episodes, reporting each event and checkpointing every
        spec.meta.checkpoint_every steps and at the end; True when `should_stop` cut it short."""
        meta = self.spec.meta
        if resume:
            self.resume(folder)
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
        if not stopped:
            self.finish()
        if folder is not None:
            self.save(folder)
        return stopped

    def finish(self) -> None:
        """Called once the run has done all its episodes (a trainer may settle its final θ here)."""
