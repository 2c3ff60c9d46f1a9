"""SQLAlchemy 2 typed ORM models: jobs, their events and trials, rules, benchmark runs and their scores.

Portable across SQLite and PostgreSQL: JSON columns are ``sqlalchemy.JSON`` (JSON text on SQLite, ``json`` on
PostgreSQL; SQL NULL for Python ``None``), timestamps are timezone-aware UTC. The schema itself is created by the
Alembic migrations in ``migrations/versions`` (``service.db.migrate.upgrade``), never by ``create_all`` at runtime;
``tests/test_db*.py`` check that the migrations and these models agree.

Rules are stored once per content hash (``rules.hash`` is unique): the sha256 of the rule's canonical string
(``rules.Rule.hash``), so re-discovering or re-posting the same ΔW = Σ θ_r F_r returns the existing row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Job and benchmark statuses. Active = queued or running.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES: tuple[str, ...] = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATUSES: tuple[str, ...] = (QUEUED, RUNNING)
FINAL_STATUSES: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)

#: Where a rule came from.
ORIGIN_DISCOVERED, ORIGIN_USER, ORIGIN_INFERRED = "discovered", "user", "inferred"
#: Leaderboard entries that are not stored rules.
ORIGIN_BASELINE = "baseline"


def public_provenance(provenance: dict[str, Any] | None, *, job_id: int | None, seed: int | None,
                      code_version: str, created_at: dt.datetime, canonical: str, srepr: str) -> dict[str, Any]:
    """Where a rule came from as the API shows it: its stored provenance with the job, seed, code version, time and
    forms (``Rule.public_provenance``, and the stored answers of ``service.db.read_fields``)."""
    stamp = created_at if created_at.tzinfo else created_at.replace(tzinfo=dt.timezone.utc)
    return {**(provenance or {}), "job_id": job_id, "seed": seed, "code_version": code_version,
            "created_at": stamp.isoformat(), "canonical": canonical, "srepr": srepr}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that always returns aware UTC datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


def JSONColumn() -> JSON:
    """A portable JSON column type that stores Python ``None`` as SQL NULL."""
    return JSON(none_as_null=True)


#: Constraint and index names, identical in the models and the migrations (so autogenerate diffs stay empty).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TrackedRun:
    """The columns every tracked run shares (a job, a benchmark run): its times and its status, which only
    ``service.runs.states.set_status`` changes."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)


class StoredFile:
    """The columns every uploaded, content-addressed file shares (a data set, a recording; migrations 0005 and
    0007): its unique name, its owner, the sha256 that names its stored file, the format and original file name it
    came with and its size in bytes. ``sort_order=-1`` keeps them first in the table, as the migrations create them."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, sort_order=-1)
    name: Mapped[str] = mapped_column(String(64), unique=True, sort_order=-1)
    owner: Mapped[str] = mapped_column(String(64), index=True, sort_order=-1)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, sort_order=-1)
    format: Mapped[str] = mapped_column(String(8), sort_order=-1)
    filename: Mapped[str | None] = mapped_column(String(255), sort_order=-1)
    upload_bytes: Mapped[int] = mapped_column(Integer, sort_order=-1)


class Job(TrackedRun, Base):
    """A discovery job: the resolved spec, its status and live progress, its result summary."""

    __tablename__ = "jobs"

    name: Mapped[str | None] = mapped_column(String(200))
    goal: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONColumn())
    owner: Mapped[str] = mapped_column(String(64), default="", index=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: a succeeded job's plots for rule pages, drawn once (migration 0006, service.db.read_fields.job_plots)
    read_plots: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn(), deferred=True)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobEvent.id"
    )
    trials: Mapped[list[Trial]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="Trial.index"
    )
    rule_links: Mapped[list[JobRule]] = relationship(cascade="all, delete-orphan", order_by="JobRule.rule_id")
    front: Mapped[list[FrontPointRow]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="FrontPointRow.position"
    )

    @property
    def rule_ids(self) -> list[int]:
        """Ids of the rules this job produced (the best trial's rule first)."""
        return [link.rule_id for link in self.rule_links]

    def _summary(self, key: str) -> Any:
        return (self.result or {}).get(key)

    @property
    def heldout_accuracy(self) -> float | None:
        """The job's rule's held-out accuracy on its task (from its result summary)."""
        return self._summary("heldout_accuracy")

    @property
    def heldout_ci95(self) -> float | None:
        """Half-width of the 95 % t-interval of :attr:`heldout_accuracy`."""
        return self._summary("heldout_ci95")

    @property
    def resumed_from_episode(self) -> int | None:
        """The episode the finished run resumed from (None: it ran from the start)."""
        return self._summary("resumed_from_episode")

    @property
    def understood(self) -> list[str] | None:
        """How the job's goal was read (the data of its first event), None for a job from a spec."""
        if not self.goal or not self.events:
            return None
        return (self.events[0].data or {}).get("understood")


class JobEvent(Base):
    """One thing that happened to a job or a benchmark run: submitted, started, progress, resubmitted, ..."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    benchmark_id: Mapped[int | None] = mapped_column(
        ForeignKey("benchmark_runs.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())

    job: Mapped[Job | None] = relationship(back_populates="events")

    #: event data keys that only the server log may show (rows written by earlier versions carried them)
    PRIVATE_KEYS = frozenset({"traceback", "detail"})

    @property
    def public_message(self) -> str:
        """The message without a traceback (rows written by earlier versions may carry one)."""
        return self.message.split("\nTraceback (most recent call last)", 1)[0]

    @property
    def public_data(self) -> dict[str, Any] | None:
        """The data without the keys only the server log may show."""
        data = self.data
        if isinstance(data, dict) and self.PRIVATE_KEYS & set(data):
            data = {k: v for k, v in data.items() if k not in self.PRIVATE_KEYS} or None
        return data


class Trial(Base):
    """One meta-training run of a job (a job without a sweep has exactly one trial)."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_trials_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=SUCCEEDED)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    heldout_accuracy: Mapped[float | None] = mapped_column(Float)
    heldout_ci95: Mapped[float | None] = mapped_column(Float)
    rule: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="trials")


class Rule(Base):
    """A plasticity rule ΔW = Σ θ_r F_r, with its sympy forms, its provenance and a unique content hash."""

    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    name: Mapped[str] = mapped_column(String(200))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    canonical: Mapped[str] = mapped_column(Text)
    srepr: Mapped[str] = mapped_column(Text)
    expression: Mapped[str] = mapped_column(Text)
    latex: Mapped[str] = mapped_column(Text)
    coefficients: Mapped[dict[str, float]] = mapped_column(JSONColumn())
    terms: Mapped[list[str]] = mapped_column(JSONColumn())
    #: "feedforward" or "recurrent" (rules.base.CoefficientRule.FAMILY); migration 0002 added it
    family: Mapped[str] = mapped_column(String(16), index=True, default="feedforward", server_default="feedforward")
    origin: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    seed: Mapped[int | None] = mapped_column(Integer)
    code_version: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    feedback: Mapped[str | None] = mapped_column(String(16), index=True)
    depth: Mapped[int | None] = mapped_column(Integer, index=True)
    dataset: Mapped[str | None] = mapped_column(String(32), index=True)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    #: read fields (migration 0006, service.db.read_fields): computed at write time so reads do no per-row work
    display_latex: Mapped[str | None] = mapped_column(Text)
    formula_svg: Mapped[str | None] = mapped_column(Text, deferred=True)   # large: pages undefer it
    read_scores: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONColumn())
    read_json: Mapped[str | None] = mapped_column(Text, deferred=True)        # RuleOut as JSON
    read_updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)

    term_links: Mapped[list[RuleTerm]] = relationship(cascade="all, delete-orphan")
    scores: Mapped[list[BenchmarkScore]] = relationship(back_populates="rule", order_by="BenchmarkScore.id")

    @property
    def public_provenance(self) -> dict[str, Any]:
        """Where the rule came from: its stored provenance with the job, seed, code version, time and forms."""
        return public_provenance(self.provenance, job_id=self.job_id, seed=self.seed, code_version=self.code_version,
                                 created_at=self.created_at, canonical=self.canonical, srepr=self.srepr)

    @property
    def succeeded_scores(self) -> list[BenchmarkScore]:
        """The rule's scores in benchmark runs that succeeded."""
        return [s for s in self.scores if s.run is not None and s.run.status == SUCCEEDED]


class ReadVersion(Base):
    """One row counting the changes of what reads show (migration 0006, ``service.db.read_fields.bump_version``)."""

    __tablename__ = "read_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class RuleTerm(Base):
    """Which library (or custom) term ids a rule uses: the index behind ``GET /api/rules?term=``."""

    __tablename__ = "rule_terms"

    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"), primary_key=True)
    term: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class JobRule(Base):
    """The rules a job produced (a rule already stored by an earlier job or user is linked, not duplicated)."""

    __tablename__ = "job_rules"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"), primary_key=True)


class FrontPointRow(Base):
    """One rule of an open search's Pareto front (``discovery.results.FrontPoint``): its support size, complexity
    and its own held-out score on the job's task (migration 0004 moved fronts here out of the JSON columns)."""

    __tablename__ = "front_points"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_front_points_job_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("rules.id", ondelete="SET NULL"), index=True)
    n_terms: Mapped[int] = mapped_column(Integer)
    complexity: Mapped[int] = mapped_column(Integer)
    heldout_accuracy: Mapped[float | None] = mapped_column(Float)
    heldout_ci95: Mapped[float | None] = mapped_column(Float)
    heldout_episodes: Mapped[int] = mapped_column(Integer, default=0)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    stage: Mapped[str] = mapped_column(String(64), default="")
    terms: Mapped[list[str]] = mapped_column(JSONColumn())
    theta: Mapped[dict[str, float]] = mapped_column(JSONColumn())

    job: Mapped[Job] = relationship(back_populates="front")
    rule: Mapped[Rule | None] = relationship()

    @property
    def expression(self) -> str | None:
        """The stored rule's expression (None when the rule was deleted)."""
        return self.rule.expression if self.rule is not None else None

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The family's own metrics of the rule, kept in its provenance (the unsupervised family's subspace error)."""
        return (self.rule.provenance or {}).get("metrics") if self.rule is not None else None


class BenchmarkRun(TrackedRun, Base):
    """A request to run one named suite, for a stored rule (or baselines only)."""

    __tablename__ = "benchmark_runs"

    suite: Mapped[str] = mapped_column(String(100), index=True)
    suite_version: Mapped[str | None] = mapped_column(String(32))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("rules.id", ondelete="SET NULL"), index=True)
    expression: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(64), default="", index=True)
    tiny: Mapped[bool] = mapped_column(Boolean, default=False)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: tune the baselines again instead of using the suite's cached ones (migration 0003)
    retune: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    scores: Mapped[list[BenchmarkScore]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="BenchmarkScore.id"
    )

    @property
    def diagnostics(self) -> dict[str, Any] | None:
        """The suite's report without its entries (protocol, notes, baselines, timings); while it runs, its
        progress."""
        if self.result:
            return {k: v for k, v in self.result.items() if k != "entries"}
        if self.progress and self.status not in FINAL_STATUSES:
            return {"progress": self.progress}
        return None

    @property
    def baselines(self) -> str | None:
        """"cached" or "tuned": where the run's baselines came from."""
        return (self.result or {}).get("baselines")

    @property
    def vs(self) -> dict[str, Any] | None:
        """The rule minus each baseline on the same episodes (from the result)."""
        return (self.result or {}).get("vs") or None


class BenchmarkScore(Base):
    """One learner's score in one benchmark run: the rule under test, or a baseline (BP, FA, PC, ...)."""

    __tablename__ = "benchmark_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    run_id: Mapped[int] = mapped_column(ForeignKey("benchmark_runs.id", ondelete="CASCADE"), index=True)
    suite: Mapped[str] = mapped_column(String(100), index=True)
    learner: Mapped[str] = mapped_column(String(200))
    origin: Mapped[str] = mapped_column(String(16))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    ci95: Mapped[float | None] = mapped_column(Float)
    locality: Mapped[str | None] = mapped_column(String(32))
    cost_per_sample_ms: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONColumn())

    run: Mapped[BenchmarkRun] = relationship(back_populates="scores")
    rule: Mapped[Rule | None] = relationship(back_populates="scores")

    @property
    def benchmark_id(self) -> int:
        """The run this score belongs to (the API's name for ``run_id``)."""
        return self.run_id


class BaselineSetRow(Base):
    """A suite's cached baselines for one (suite, suite version, seed, size): the tuned and scored baseline entries
    with their per-episode values (``discovery.benchmarks.cache.BaselineSet`` as JSON in ``data``), reused by every
    later rule benchmark on that key (service.db.repositories.baselines)."""

    __tablename__ = "baseline_sets"
    __table_args__ = (UniqueConstraint("suite", "suite_version", "seed", "tiny", name="uq_baseline_sets_suite"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    suite: Mapped[str] = mapped_column(String(100))
    suite_version: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    tiny: Mapped[bool] = mapped_column(Boolean)
    metric: Mapped[str] = mapped_column(String(64))
    higher_is_better: Mapped[bool] = mapped_column(Boolean)
    tuned_with: Mapped[str] = mapped_column(String(16))
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("benchmark_runs.id", ondelete="SET NULL"), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONColumn())


class DatasetRow(StoredFile, Base):
    """A labelled data set uploaded by a user (``POST /api/datasets``; migration 0005): its metadata, owner and the
    checksum that names its content-addressed file ``<dataset dir>/<sha256>.npz`` (discovery.data.uploads). A job
    names it ``task.dataset = "upload:<id>"``."""

    __tablename__ = "datasets"

    n: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    side: Mapped[int | None] = mapped_column(Integer)
    n_classes: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[int]] = mapped_column(JSONColumn())
    class_counts: Mapped[list[int]] = mapped_column(JSONColumn())

    @property
    def ref(self) -> str:
        """How a job spec names it."""
        return f"upload:{self.id}"


class RecordingRow(StoredFile, Base):
    """A recording of a circuit learning, uploaded by a user (``POST /api/recordings``; migration 0007): its
    metadata, owner and the checksum that names its canonical file ``<dataset dir>/recordings/<sha256>.npz``
    (discovery.inference.job). An inference job names it by id and keeps its name and checksum in its spec."""

    __tablename__ = "recordings"

    kind: Mapped[str] = mapped_column(String(16))
    widths: Mapped[list[int]] = mapped_column(JSONColumn())
    n_steps: Mapped[int] = mapped_column(Integer)
    n_trials: Mapped[int] = mapped_column(Integer)
    dt: Mapped[float] = mapped_column(Float)
    weights_observed: Mapped[bool] = mapped_column(Boolean)
    errors_observed: Mapped[bool] = mapped_column(Boolean)
