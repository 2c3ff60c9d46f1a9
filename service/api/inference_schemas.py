"""Request and response models of ``/api/recordings`` and ``/api/inferences`` (docs/inference.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from service.api.schemas import EventOut, JobStatus


class RecordingOut(BaseModel):
    """An uploaded recording's metadata."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    owner: str
    sha256: str = Field(description="checksum of the recording's arrays, dt and trial starts")
    format: str = Field(description="nwb or npz (as uploaded)")
    filename: str | None = None
    upload_bytes: int
    kind: str = Field(description="'layer' (pre, post, optional weights) or 'layered' (y_ℓ, e_ℓ, W_ℓ)")
    widths: list[int]
    n_steps: int
    n_trials: int
    dt: float
    weights_observed: bool
    errors_observed: bool
    created_at: dt.datetime


class InferenceCreate(BaseModel):
    """Body of ``POST /api/inferences``: a recording id (with options) or a goal such as "infer the plasticity
    rule from recording 3"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    recording_id: int | None = Field(None, ge=1, le=2**31 - 1)
    goal: str | None = Field(None, min_length=1, max_length=500)
    max_terms: int = Field(6, ge=1, le=8)
    n_bootstrap: int = Field(200, ge=0, le=2000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> InferenceCreate:
        if (self.recording_id is None) == (self.goal is None):
            raise ValueError("give either recording_id or goal")
        return self


class CoefficientOut(BaseModel):
    estimate: float
    std: float
    ci_low: float
    ci_high: float


class InferenceOut(BaseModel):
    """An inference job (a ``jobs`` row of kind inference) and, once it succeeded, its inferred rule."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    status: JobStatus
    name: str | None = None
    goal: str | None = None
    recording: dict[str, Any] = Field(description="id, name and checksum of the recording")
    error: str | None = None
    rule_ids: list[int] = Field(default_factory=list, description="the selected rule first, then the front")
    rule_id: int | None = Field(None, description="the inferred (selected) rule")
    theta: dict[str, float] | None = None
    coefficients: dict[str, CoefficientOut] | None = Field(None, description="bootstrap estimate, std, 95 % CI")
    heldout_explained_variance: float | None = None
    heldout_ci95: float | None = None
    warnings: list[str] = Field(default_factory=list)
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    attempts: int = 0
    events: list[EventOut] | None = None

    @classmethod
    def of(cls, job: Any, *, events: bool = False) -> InferenceOut:
        result = job.result or {}
        return cls(
            id=job.id, status=job.status, name=job.name, goal=job.goal,
            recording={k: v for k, v in ((job.spec or {}).get("recording") or {}).items() if k != "dir"},
            error=job.error, rule_ids=job.rule_ids, rule_id=result.get("rule_id"), theta=result.get("theta"),
            coefficients=result.get("coefficients"),
            heldout_explained_variance=result.get("heldout_explained_variance"),
            heldout_ci95=result.get("heldout_ci95"), warnings=result.get("warnings") or [],
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            attempts=job.attempts,
            events=[EventOut.model_validate(e) for e in job.events] if events else None)


__all__ = ["AliasChoices", "CoefficientOut", "InferenceCreate", "InferenceOut", "RecordingOut"]
