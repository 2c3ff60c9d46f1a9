"""The typed results that cross from the engine to the workers and the service: the progress event of a meta-step,
one point of an open search's front, a finished discovery run; and :func:`jsonable`, the one serializer of the
project (non-finite numbers become ``None`` here and nowhere else)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from discovery.spec import DiscoverySpec

_MAX_DEPTH = 12


def jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` as strict-JSON plain data: NaN/±∞ become ``None``; tensors and numpy arrays (nested) lists,
    numpy/torch scalars Python numbers, pydantic models and dataclasses dicts, tuples and sets lists, paths
    strings, mapping keys strings; anything else unknown its ``str``."""
    if _depth > _MAX_DEPTH:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"), _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), _depth + 1)
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor without importing torch
        return jsonable(value.detach().cpu().tolist(), _depth + 1)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return jsonable(value.tolist(), _depth + 1)
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(Exception):  # not a scalar after all: fall through to str
            return jsonable(value.item(), _depth + 1)
    return str(value)


class ProgressEvent(BaseModel):
    """What the progress callback receives after every meta-step (a value that was not finite reads ``None``
    once the event went through :func:`jsonable`). ``subspace_orth_error`` is the per-layer orthonormality error of
    W_ℓ on its activity subspace (discovery.analysis.diagnostics.subspace_orthonormality_error)."""

    episode: int
    total: int
    meta_loss: float | None
    meta_accuracy: float | None
    theta: dict[str, float | None]
    alignment_deg: list[float | None] = Field(default_factory=list)
    subspace_orth_error: list[float | None] = Field(default_factory=list)
    skipped: bool = False
    dropped_episodes: int = 0
    backtracked: bool = False
    lr: float | None = None
    phase: str | None = None          # the search stage this step belongs to (open discovery), e.g. "fit 3 terms"
    spectral_abscissa: float | None = None   # recurrent family: max Re λ(W_T), mean over the meta-batch
    train_loss: float | None = None          # recurrent family: the last inner step's training CE


class RuleData(BaseModel):
    """A rule as the engine hands it on (``rules.base.CoefficientRule.to_dict``): ΔW = Σ_r θ_r F_r as text, LaTeX,
    its coefficients {r: θ_r} and term ids, the content hash of its canonical form and sympy's ``srepr``.
    ``coefficients_raw``: θ before pruning and rounding; ``canonical`` and ``kind`` travel with recurrent rules.
    The optional fields are left out of the JSON when unset, so the stored form is the rule's own dict; a family's
    further fields (e.g. the recurrent ``setting``) travel along."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    expression: str
    latex: str = ""
    coefficients: dict[str, float]
    terms: list[str] = Field(default_factory=list)
    hash: str | None = None
    srepr: str | None = None
    coefficients_raw: dict[str, float] | None = None
    canonical: str | None = None
    kind: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_optionals(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data = handler(self)
        for key in ("coefficients_raw", "canonical", "kind"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class FrontPoint(BaseModel):
    """One rule of an open search's front: its support, refit θ, complexity and held-out score."""

    terms: list[str]
    theta: dict[str, float]
    rule: RuleData
    n_terms: int
    complexity: int
    heldout_accuracy: float | None
    heldout_ci95: float | None
    heldout_episodes: int
    stage: str
    selected: bool = False
    rule_id: int | None = None      # filled in by the service once the rule is stored


class DiscoveryResult(BaseModel):
    """A finished (or stopped) discovery run: the rule, its θ trajectory, curves and held-out evaluation."""

    rule: RuleData
    theta: dict[str, float]
    history: list[ProgressEvent]
    theta_history: list[dict[str, float]]
    heldout_accuracy: float | None
    heldout_ci95: float | None
    heldout_episodes: int
    diverged_episodes: int
    skipped_steps: int
    stopped: bool = False
    resumed_from_episode: int | None = None   # the checkpointed episode this run resumed from (None: fresh)
    wall_time_s: float
    device: str
    spec: DiscoverySpec
    front: list[FrontPoint] = Field(default_factory=list)   # open discovery (spec.search): every support found
    search: dict | None = None                              # open discovery: method, pool, stages, screening
