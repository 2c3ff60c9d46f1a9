"""Plain-data conversion of what the engine emits, for the trip through Ray and into the service's database.

The engine's progress callback receives one event per meta-training episode t (docs/science.md symbols):
``episode`` t, ``total`` T, ``meta_loss`` L_meta(θ_t) = CE on the query set + λ‖θ_t‖₁, ``meta_accuracy``
(query accuracy of the episode), ``theta`` {r: θ_r} (coefficients of the rule terms F^r), ``alignment_deg``
∠(W_ℓ^T, B_ℓ) per layer, ``subspace_orth_error`` per-layer orthonormality error on the activity subspace, ``skipped`` (divergence guard fired).
Nothing here computes any of these; the functions only turn events, results and exceptions into JSON-able
dicts (finite floats; NaN/±∞ become ``None``), because the service stores them in JSON columns.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from discovery.results import DiscoveryResult, ProgressEvent


class SweepProgress(BaseModel):
    """What a sweep adds to the progress of its job (workers.tune_monitor): trial counts and the best so far."""

    kind: str | None = None
    trials_total: int | None = None
    trials_done: int | None = None
    trials_running: int | None = None
    trials_failed: int | None = None
    latest_trial: int | None = None
    best_trial: int | None = None
    best_heldout_accuracy: float | None = None
    best_config: dict[str, Any] | None = None


class WorkerNote(BaseModel):
    """What the workers add to any progress: a Ray retry of a lost worker, a pending cancel, and where the running
    attempt resumed (the engine's one "resumed stage …" event, kept on every later progress so that a poll sees it)."""

    retry: int | None = None
    previous_error: str | None = None
    cancel_requested: bool | None = None
    resumed: str | None = None
    resumed_from_episode: int | None = None


def _optional_fields(*models: type[BaseModel]) -> dict[str, Any]:
    """Every field of ``models`` as optional (default None): a job's progress may carry any part of them."""
    return {name: (f.annotation | None, None) for m in models for name, f in m.model_fields.items()}


#: The progress of a job as the workers report it and the service stores it (``jobs.progress``): the engine's
#: :class:`~discovery.results.ProgressEvent`, a sweep's counts and the workers' notes, every key optional.
#: Unknown keys are dropped; dump with ``exclude_unset=True`` to keep only what was reported.
JobProgress: type[BaseModel] = create_model(
    "JobProgress", __doc__="The latest progress of a job (see workers.progress).",
    **_optional_fields(ProgressEvent, SweepProgress, WorkerNote),
)


class TrialRecord(BaseModel):
    """One trial of a sweep as the job's result lists it (workers.sweep); further keys are its metrics."""

    model_config = ConfigDict(extra="allow")

    index: int | None = None
    config: dict[str, Any] | None = None
    status: str = "succeeded"
    heldout_accuracy: float | None = None
    heldout_ci95: float | None = None
    rule: dict[str, Any] | None = None

    def metrics(self) -> dict[str, object]:
        """Everything else the trial reported (error, wall time, node, retries, ...)."""
        return dict(self.model_extra or {})


class JobResult(DiscoveryResult):
    """A finished job's result as the workers hand it to the service: the engine's DiscoveryResult and, for a
    sweep, the trials, the index of the best one and the sweep's description."""

    model_config = ConfigDict(extra="allow")

    trials: list[TrialRecord] = Field(default_factory=list)
    best_trial: int | None = None
    sweep: dict[str, Any] | None = None

    def best_seed(self) -> int | None:
        """The seed of the best trial (None without trials)."""
        if self.best_trial is None or not 0 <= self.best_trial < len(self.trials):
            return None
        return (self.trials[self.best_trial].config or {}).get("seed")

ERROR_MAX_CHARS = 500
DETAIL_MAX_LINES = 25
DETAIL_MAX_CHARS = 4000


def job_progress(event: object, **extra: object) -> JobProgress:
    """The engine's :class:`~discovery.results.ProgressEvent` (or a sweep's snapshot, a stand-in engine's event:
    anything with those attributes) as the job's :class:`JobProgress`; ``extra`` sets further fields (kind, a
    retry note). Only the fields the event has count as set, so ``model_dump(exclude_unset=True)`` keeps them."""
    progress = JobProgress.model_validate(event, from_attributes=True)
    return progress.model_copy(update=extra) if extra else progress


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
