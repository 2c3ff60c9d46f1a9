"""Request and response models of the REST API (they are the OpenAPI schema at ``/docs``).

Requests forbid unknown fields, so a typo is a 422 naming the field instead of being silently ignored.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from discovery.benchmarks.cache import PairedVerdict
from discovery.benchmarks.progress import BenchmarkProgress
from discovery.spec import DiscoverySpec, RuleFamily
from workers.progress import JobProgress

#: The five statuses of a job or a benchmark run (``service.runs.states``).
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: ``origin`` of a stored rule.
RuleOrigin = Literal["discovered", "user", "inferred"]
#: The rule families (``discovery.spec.RuleFamily``, the one constant: a new family is added there).
RuleFamilyName = RuleFamily
#: What the rule languages are written in (``rules.parser``, ``rules.recurrent``): names, numbers, operators,
#: parentheses, whitespace, and the ``recurrent/v1:`` prefix of canonical recurrent text.
EXPRESSION_PATTERN = r"^[A-Za-z0-9_.+\-*@()/: \t\n]+$"


class _Request(BaseModel):
    """Unknown fields are refused, and JSON types are taken as they are (no 0 for false, no "1" for 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class GoalRequest(_Request):
    """A plain-language goal, resolved into a spec by ``discovery.goal`` (see ``GET /api/goal/vocabulary``)."""

    goal: str = Field(
        ...,
        min_length=1,
        max_length=2000,
        pattern=r"^[^\x00-\x08\x0b-\x1f]*$",
        examples=[
            (
                "find a plasticity rule for depth-5 online learning under feedback alignment "
                "with oja on mnist for 600 episodes"
            )
        ],
    )


def _job_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "goal" if "goal" in value else "spec"
    return "goal" if isinstance(value, GoalRequest) else "spec"


#: Body of ``POST /api/jobs``: a full spec, or ``{"goal": "..."}``.
JobCreate = Annotated[
    Annotated[GoalRequest, Tag("goal")] | Annotated[DiscoverySpec, Tag("spec")],
    Discriminator(_job_kind),
]


#: ``GET /api/rules/{id}/export?format=``: the export formats (``rules.export.FORMATS``).
ExportFormatName = Literal["torch", "numpy", "jax", "latex", "sympy", "json"]


class RuleCreate(_Request):
    """A rule written by hand, e.g. ``-0.012*e*x.T + 0.065*e*e_pre.T + 0.008*(y*x.T - y*(y.T*W))``."""

    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[^\x00-\x08\x0b-\x1f]*$")
    expression: str = Field(..., min_length=1, max_length=2000, pattern=EXPRESSION_PATTERN,
                            description="docs/http-api.md, 'Rule expressions'; its grammar and shapes are checked "
                                        "by the parser (422 naming the position and the token)")


class _BenchmarkBase(_Request):
    suite: str = Field(..., min_length=1, max_length=100, description="a suite of GET /api/suites")
    tiny: bool = Field(False, description="run the suite's smoke-test size")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    retune: bool = Field(False, description="tune the baselines again instead of using the suite's cached ones")


class BenchmarkOfRule(_BenchmarkBase):
    """Benchmark a stored rule."""

    rule_id: int = Field(..., ge=1, le=2**31 - 1)


class BenchmarkOfExpression(_BenchmarkBase):
    """Benchmark an expression (stored as a user rule first)."""

    expression: str = Field(..., min_length=1, max_length=2000, pattern=EXPRESSION_PATTERN)


class BenchmarkOfBaselines(_BenchmarkBase):
    """Run the suite's baselines only."""


def _benchmark_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return {BenchmarkOfRule: "rule", BenchmarkOfExpression: "expression"}.get(type(value), "baselines")
    if not isinstance(value, dict):
        return "baselines"
    has_rule, has_expression = "rule_id" in value, "expression" in value
    if has_rule and has_expression:
        return None
    return "rule" if has_rule else "expression" if has_expression else "baselines"


#: Body of ``POST /api/benchmarks``: exactly one of a stored rule (``rule_id``), an expression, or neither (the
#: suite's baselines only).
BenchmarkCreate = Annotated[
    Annotated[BenchmarkOfRule, Tag("rule")]
    | Annotated[BenchmarkOfExpression, Tag("expression")]
    | Annotated[BenchmarkOfBaselines, Tag("baselines")],
    Discriminator(_benchmark_kind, custom_error_type="rule_choice",
                  custom_error_message="give either rule_id or expression, not both"),
]


class _FromRow(BaseModel):
    """A response read from an ORM row by attribute (``model_validate(row)``); the database layer owns the rows."""

    model_config = ConfigDict(from_attributes=True)


class EventOut(_FromRow):
    id: int
    created_at: dt.datetime
    kind: str
    message: str = Field(validation_alias=AliasChoices("public_message", "message"))
    data: dict[str, Any] | None = Field(None, validation_alias=AliasChoices("public_data", "data"))


class FrontEntry(_FromRow):
    """One stored rule of an open search's front (number of terms / complexity × held-out accuracy)."""

    rule_id: int | None = None
    n_terms: int
    complexity: int
    heldout_accuracy: float | None = None
    heldout_ci95: float | None = None
    selected: bool = False
    terms: list[str] = Field(default_factory=list)
    expression: str | None = None
    metrics: dict[str, Any] | None = Field(None, description="the family's own metrics of the rule (unsupervised: "
                                           "subspace_error, heldout_reconstruction, per pass)")


class JobOut(_FromRow):
    """A discovery job."""

    id: int
    status: JobStatus
    name: str | None = None
    goal: str | None = None
    progress: JobProgress | None = None
    error: str | None = None
    rule_ids: list[int] = Field(default_factory=list)
    spec: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    attempts: int = 0
    heldout_accuracy: float | None = None
    heldout_ci95: float | None = None
    resumed_from_episode: int | None = Field(None, description="the checkpointed episode the finished run resumed from")
    trials: int = 0
    events: list[EventOut] | None = Field(None, description="the job's history (GET with events=true)")
    understood: list[str] | None = Field(None, description="how a goal was read (a job from a goal)")
    front: list[FrontEntry] = Field(default_factory=list, description="open discovery: the rules of the front")

    @field_validator("trials", mode="before")
    @classmethod
    def _count_trials(cls, value: object) -> object:
        return len(value) if isinstance(value, list) else value

    @field_validator("progress", mode="after")
    @classmethod
    def _theta_present(cls, value: BaseModel | None) -> BaseModel | None:
        if value is not None and getattr(value, "theta", None) is None:
            return value.model_copy(update={"theta": {}})
        return value

    @classmethod
    def of(cls, job: Any, *, events: bool = False) -> JobOut:
        """The job as the API shows it; ``events`` keeps its history in the answer."""
        out = cls.model_validate(job)
        return out if events else out.model_copy(update={"events": None})


class ScoreOut(_FromRow):
    """A rule's score on one suite (``discovery``: held-out accuracy on its own discovery task)."""

    suite: str
    score: float | None = None
    ci95: float | None = None
    benchmark_id: int | None = None
    job_id: int | None = None
    locality: str | None = None
    cost_per_sample_ms: float | None = None
    created_at: dt.datetime | None = None


class RuleOut(_FromRow):
    """A stored rule ΔW = Σ θ_r F_r."""

    id: int
    name: str
    expression: str
    latex: str
    coefficients: dict[str, float | None]
    terms: list[str]
    origin: str
    hash: str
    spec: dict[str, Any] | None = None
    provenance: dict[str, Any] = Field(validation_alias=AliasChoices("public_provenance", "provenance"))
    scores: list[ScoreOut] = Field(default_factory=list, validation_alias=AliasChoices("read_scores", "scores"),
                                   description="discovery scores first, then succeeded benchmark scores")
    feedback: str | None = None
    depth: int | None = None
    dataset: str | None = None
    family: RuleFamilyName = Field("feedforward", description="the rule family")
    created_at: dt.datetime
    created: bool | None = Field(None, validation_alias=AliasChoices("created_now", "created"),
                                 description="POST only: false when the rule was already stored")

    @field_validator("scores", mode="before")
    @classmethod
    def _no_scores(cls, value: object) -> object:
        return [] if value is None else value

    @classmethod
    def of(cls, rule: Any, *, created: bool | None = None) -> RuleOut:
        """The rule as the API shows it, from its row alone: its scores are the row's precomputed read field
        (``service.db.read_fields``), so no further query runs."""
        out = cls.model_validate(rule)
        return out if created is None else out.model_copy(update={"created": created})


class LearnerScoreOut(_FromRow):
    learner: str
    origin: str
    rule_id: int | None = None
    score: float | None = None
    ci95: float | None = None
    locality: str | None = None
    cost_per_sample_ms: float | None = None
    metrics: dict[str, Any] | None = None


class BenchmarkOut(_FromRow):
    """A benchmark run."""

    id: int
    status: JobStatus
    suite: str
    suite_version: str | None = None
    rule_id: int | None = None
    expression: str | None = None
    tiny: bool = False
    seed: int = 0
    error: str | None = None
    scores: list[LearnerScoreOut] = Field(default_factory=list)
    diagnostics: dict[str, Any] | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    retune: bool = False
    progress: BenchmarkProgress | None = Field(None, description="phase, learner i of n, episode j of J, "
                                               "elapsed and remaining seconds, while it runs (the last at the end)")
    baselines: Literal["cached", "tuned"] | None = Field(None, description="whether the baselines came from the "
                                                         "suite's cache or were tuned by this run")
    vs: dict[str, PairedVerdict] | None = Field(None, description="the rule minus each baseline on the same "
                                                "episodes: delta, 95 % t-interval, verdict")

    @field_validator("progress", mode="wrap")
    @classmethod
    def _progress_or_none(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        """A progress of another shape (written by an older worker) reads as none."""
        try:
            return handler(value)
        except ValidationError:
            return None


class FrontMark(BaseModel):
    """Where a leaderboard rule sits on the Pareto front of the open search(es) that stored it."""

    n_terms: int | None = None
    heldout_accuracy: float | None = None
    heldout_ci95: float | None = None
    selected: bool = False


class LeaderboardEntry(BaseModel):
    rank: int
    name: str
    origin: str
    rule_id: int | None = None
    score: float | None = None
    ci: float | None = None
    locality: str | None = None
    cost: float | None = Field(None, description="cost per sample in ms")
    feedback: str | None = None
    family: str | None = Field(None, description="the rule's family (feedforward, recurrent, unsupervised); null "
                               "for a baseline")
    latex: str | None = None
    expression: str | None = None
    benchmark_id: int | None = None
    job_id: int | None = None
    front: FrontMark | None = Field(None, description="its place on a stored Pareto front; null off any front")
    vs: dict[str, PairedVerdict] | None = Field(None, description="a rule's paired differences to the baselines "
                                                "in its benchmark run")


class LeaderboardOut(BaseModel):
    suite: str
    higher_is_better: bool = Field(True, description="the suite's score direction; False: the lowest is ranked first")
    suites: list[str]
    description: str
    only_front: bool = False
    family: str | None = Field(None, description="the family filter applied (rules of that family only)")
    entries: list[LeaderboardEntry]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: dict[str, Any]
    ray: dict[str, Any]
    dispatcher: dict[str, Any]


class DatasetOut(_FromRow):
    """An uploaded labelled data set (``POST /api/datasets``); a job names it ``task.dataset = "upload:<id>"``."""

    id: int
    ref: str = Field(description="how a spec names it: 'upload:<id>'", examples=["upload:1"])
    name: str = Field(description="how a goal names it: '... on my dataset <name>'")
    owner: str = Field(description="fingerprint of the token that uploaded it (only it may delete it)")
    sha256: str = Field(description="checksum of the content (X float32, y int64), the name of the stored file")
    format: Literal["npz", "nwb"]
    filename: str | None = None
    upload_bytes: int
    n: int = Field(description="samples N")
    dim: int = Field(description="features D (the network's input width)")
    side: int | None = Field(None, description="image side when D is a square (or the upload was N × H × W)")
    n_classes: int
    classes: list[int] = Field(description="the label values, ascending (label i of the engine is classes[i])")
    class_counts: list[int] = Field(description="samples per class, in the order of classes")
    created_at: dt.datetime
