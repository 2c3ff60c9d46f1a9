"""Plain-data conversion of what the engine emits, for the trip through Ray and into the service's database.

The engine's progress callback receives one event per meta-training episode t (SCIENCE.md symbols):
``episode`` t, ``total`` T, ``meta_loss`` L_meta(θ_t) = CE on the query set + λ‖θ_t‖₁, ``meta_accuracy``
(query accuracy of the episode), ``theta`` {r: θ_r} (coefficients of the rule terms F^r), ``alignment_deg``
∠(W_ℓ^T, B_ℓ) per layer, ``e1`` per-layer orthonormality error, ``skipped`` (divergence guard fired).
Nothing here computes any of these; the functions only turn events, results and exceptions into JSON-able
dicts (finite floats; NaN/±∞ become ``None``), because the service stores them in JSON columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import traceback
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

#: The attributes of an engine progress event (read with ``getattr`` so that any object shape works).
EVENT_FIELDS: tuple[str, ...] = (
    "episode",
    "total",
    "meta_loss",
    "meta_accuracy",
    "theta",
    "alignment_deg",
    "e1",
    "skipped",
)

_MAX_DEPTH = 12
ERROR_MAX_CHARS = 500
DETAIL_MAX_LINES = 25
DETAIL_MAX_CHARS = 4000


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` as JSON-able plain data.

    Tensors and numpy arrays become (nested) lists, numpy/torch scalars Python numbers, non-finite floats
    ``None``, pydantic models and dataclasses dicts, paths strings; anything else unknown its ``str``.
    """
    if _depth > _MAX_DEPTH:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, _depth + 1) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return to_jsonable(value.model_dump(mode="json"), _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), _depth + 1)
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor without importing torch
        return to_jsonable(value.detach().cpu().tolist(), _depth + 1)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return to_jsonable(value.tolist(), _depth + 1)
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(Exception):  # not a scalar after all: fall through to str
            return to_jsonable(value.item(), _depth + 1)
    return str(value)


def event_to_dict(event: Any) -> dict[str, Any]:
    """Turn one progress event of any shape (mapping, pydantic model, dataclass, plain object) into a dict.

    Private attributes (leading underscore) are dropped; the known :data:`EVENT_FIELDS` are read with
    ``getattr`` as well, so properties count too.
    """
    if event is None:
        return {}
    raw: dict[str, Any]
    if isinstance(event, Mapping):
        raw = dict(event)
    elif hasattr(event, "model_dump") and callable(event.model_dump):
        raw = dict(event.model_dump())
    elif dataclasses.is_dataclass(event) and not isinstance(event, type):
        raw = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    elif hasattr(event, "__dict__"):
        raw = {k: v for k, v in vars(event).items() if not k.startswith("_")}
    else:
        raw = {}
    for name in EVENT_FIELDS:
        if name not in raw and not isinstance(event, Mapping):
            with contextlib.suppress(Exception):  # a property that raises is simply absent
                if hasattr(event, name):
                    raw[name] = getattr(event, name)
    if not raw:
        raw = {"value": event}
    return to_jsonable(raw)


def result_to_dict(result: Any) -> dict[str, Any]:
    """Turn the engine's (or a suite's) result into a JSON-able dict (``model_dump`` when it is pydantic)."""
    if result is None:
        return {}
    if hasattr(result, "model_dump") and callable(result.model_dump):
        try:
            return to_jsonable(result.model_dump(mode="json"))
        except Exception:  # noqa: BLE001 - some models only dump in python mode
            return to_jsonable(result.model_dump())
    out = to_jsonable(result)
    return out if isinstance(out, dict) else {"value": out}


def short_error(exc: BaseException) -> str:
    """One short line: ``"ExceptionType: message"``, the message cut to :data:`ERROR_MAX_CHARS`."""
    message = str(exc).strip()
    first = message.splitlines()[0] if message else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if len(text) > ERROR_MAX_CHARS:
        text = text[: ERROR_MAX_CHARS - 1] + "…"
    return text


def traceback_tail(exc: BaseException, max_lines: int = DETAIL_MAX_LINES) -> str:
    """The last ``max_lines`` lines of the exception's formatted traceback (at most :data:`DETAIL_MAX_CHARS`),
    without the frames of Ray's own machinery."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f"{os.sep}ray{os.sep}" not in (f.filename or "")]
    )
    return tail_text("".join(te.format()), max_lines)


def tail_text(text: str, max_lines: int = DETAIL_MAX_LINES) -> str:
    """The last ``max_lines`` lines of ``text``, at most :data:`DETAIL_MAX_CHARS` characters."""
    lines = text.rstrip().splitlines()
    out = "\n".join(lines[-max_lines:])
    return out[-DETAIL_MAX_CHARS:]


def one_line(text: str, max_chars: int = ERROR_MAX_CHARS) -> str:
    """Collapse whitespace of ``text`` into one line, cut to ``max_chars``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "…"


def _is(exc: BaseException, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in type(exc).__mro__)


def describe_ray_error(exc: BaseException, subject: str = "the worker") -> tuple[str, str]:
    """(one-line reason, detail) for a Ray error: a dead actor (killed, node lost, out of memory) or a task error.

    Ray's text is a headline, ``key: value`` lines (class_name, actor_id, pid, ...) and then the cause; the
    reason keeps the cause, without Ray's list of common causes. A task error gives its original exception.
    """
    text = str(exc)
    detail = tail_text(text)
    cause_exc = getattr(exc, "cause", None)
    if _is(exc, "RayTaskError") and isinstance(cause_exc, BaseException):
        return short_error(cause_exc), detail
    text = text.split(" Some common causes include", 1)[0]  # Ray's generic list mentions OOM every time
    lowered = text.lower()
    if _is(exc, "OutOfMemoryError") or "out of memory" in lowered or "memory monitor" in lowered:
        reason = f"{subject} was killed because its node ran out of memory"
    elif _is(exc, "RayActorError"):
        reason = f"{subject} died"
        if "ray.kill" in lowered or "killed by" in lowered:
            reason += " (it was killed)"
        elif "node" in lowered and any(w in lowered for w in ("node died", "node is dead", "node was lost",
                                                               "node has died", "raylet")):
            reason += " (its node was lost)"
    else:
        reason = type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    prose = [ln for ln in lines if not re.fullmatch(r"[\w.]+: \S+", ln)]
    cause = one_line(prose[-1], 300) if prose else ""
    return (f"{reason}: {cause}" if cause else reason), detail
