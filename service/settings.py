"""Settings of the service, read from the environment (names in docs/operations.md, "Configuration").

| variable | meaning | default |
|---|---|---|
| ``PLASTICITY_DATA_DIR`` | SQLite file, generated token, checkpoints, artifacts | ``./data`` |
| ``PLASTICITY_DATABASE_URL`` | SQLAlchemy URL | ``sqlite:///<data dir>/plasticity.db`` |
| ``PLASTICITY_API_TOKENS`` | comma-separated bearer tokens for writes | generated into ``<data dir>/api_token`` |
| ``PLASTICITY_MAX_EPISODES`` | cap on ``meta.episodes`` (and ``meta.eval_episodes``) | 20000 |
| ``PLASTICITY_MAX_WIDTH`` | cap on every layer width | 4096 |
| ``PLASTICITY_MAX_DEPTH`` | cap on the number of weight layers L | 32 |
| ``PLASTICITY_MAX_META_BATCH`` | cap on ``meta.meta_batch`` | 64 |
| ``PLASTICITY_MAX_TRIALS`` | cap on the number of sweep trials | 64 |
| ``PLASTICITY_MAX_CONCURRENT_JOBS`` | active (queued or running) jobs per token; same cap for benchmarks | 4 |
| ``PLASTICITY_MAX_BODY_BYTES`` | largest request body | 1048576 |
| ``PLASTICITY_MAX_RUNNING`` | jobs + benchmarks the dispatcher keeps submitted to Ray at once | 4 |
| ``PLASTICITY_POLL_SECONDS`` | dispatcher polling period | 1.0 |
| ``PLASTICITY_DISPATCHER`` | ``0`` disables the dispatcher thread (read-only replicas, tests) | ``1`` |
| ``PLASTICITY_AUTO_BENCHMARK`` | comma-separated suites every newly discovered rule is benchmarked on | empty |
| ``PLASTICITY_BENCHMARK_TINY`` | ``1``: run suites in their tiny (smoke-test) size | ``0`` |
| ``PLASTICITY_MAX_ATTEMPTS`` | runs of a job or benchmark per submission when its Ray worker dies (Ray restarts
  it on a live node; it resumes from its checkpoint); 1 turns retries off | 3 |
| ``PLASTICITY_CHECKPOINT_DIR`` | root of the per-job checkpoint folders; on a cluster, a folder every Ray node
  mounts at the same path (NFS, a ReadWriteMany volume) | ``<data dir>/checkpoints`` |
| ``PLASTICITY_MAX_UPLOAD_BYTES`` | largest data set upload (``POST /api/datasets``; 413 above it) | 67108864 |
| ``PLASTICITY_DATASET_DIR`` | folder of the uploaded data sets (``<sha256>.npz``); on a cluster, mounted at the
  same path on every Ray node | ``<data dir>/datasets`` |
| ``PLASTICITY_DATASET_IMPORT_DIR`` | folder whose files administrators may register as data sets by server path
  (``POST /api/datasets`` with ``path``); unset: no server paths | unset |
| ``PLASTICITY_MAX_INFLIGHT`` | requests admitted at once (running or queued for a worker slot); above it the answer
  is 503 with ``Retry-After`` (``/api/health`` and static files are exempt) | 256 |
| ``PLASTICITY_MAX_ACTIVE`` | requests whose handlers run at once (the others queue; a queued request whose client
  has gone is dropped unrun) | 16 |
| ``PLASTICITY_QUEUE_SECONDS`` | longest wait in that queue before the answer is 503 with ``Retry-After`` | 10 |
| ``PLASTICITY_DB_POOL_SIZE`` | database connections kept open per server process | ``MAX_ACTIVE`` + 4 |
| ``PLASTICITY_DB_POOL_OVERFLOW`` | extra connections opened on demand | 8 |
| ``RAY_ADDRESS`` | Ray cluster to join (read by ``workers.ray_jobs``) | local Ray |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw not in ("0", "false", "no", "off")


def _env_path(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (HTTP 413 / 422 / 429 when exceeded)."""

    max_episodes: int = 20_000
    max_width: int = 4096
    max_depth: int = 32
    max_meta_batch: int = 64
    max_trials: int = 64
    max_concurrent_jobs: int = 4
    max_body_bytes: int = 1_048_576
    max_upload_bytes: int = 64 * 1_048_576


@dataclass(frozen=True)
class PoolSize:
    """A database connection pool: ``size`` kept open, ``overflow`` more on demand, ``timeout_s`` to wait for one."""

    size: int = 5
    overflow: int = 10
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Serving:
    """How many requests one server process admits and runs at once (docs/operations.md, "Reads at scale")."""

    max_inflight: int = 256
    max_active: int = 16
    queue_seconds: float = 10.0
    pool_size: int | None = None
    pool_overflow: int = 8

    @property
    def pool(self) -> PoolSize:
        """The database pool: one connection per running handler, plus the dispatcher's and the health check's."""
        return PoolSize(size=self.pool_size or self.max_active + 4, overflow=self.pool_overflow, timeout_s=10.0)


@dataclass(frozen=True)
class Settings:
    """Everything the app, the dispatcher and the CLI need to know about their environment."""

    data_dir: Path
    database_url: str
    api_tokens: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    dispatcher_enabled: bool = True
    poll_seconds: float = 1.0
    max_running: int = 4
    auto_benchmark_suites: tuple[str, ...] = ()
    benchmark_tiny: bool = False
    max_attempts: int = 3
    checkpoint_root: Path | None = None
    dataset_root: Path | None = None
    dataset_import_dir: Path | None = None
    serving: Serving = field(default_factory=Serving)

    @property
    def datasets_dir(self) -> Path:
        """Folder of the uploaded data sets (``PLASTICITY_DATASET_DIR``, else in the data folder); every Ray node
        must read it at this same path."""
        return self.dataset_root if self.dataset_root is not None else self.data_dir / "datasets"

    @property
    def checkpoints_dir(self) -> Path:
        """Root of the per-job checkpoint folders ``job-<id>`` (``PLASTICITY_CHECKPOINT_DIR``, else in the data
        folder); every Ray node must read and write it at this same path."""
        return self.checkpoint_root if self.checkpoint_root is not None else self.data_dir / "checkpoints"

    def checkpoint_dir(self, job_id: int) -> Path:
        """Where job ``job_id`` checkpoints, so that a resubmitted job resumes."""
        return self.checkpoints_dir / f"job-{job_id}"

    @property
    def token_file(self) -> Path:
        """The generated API token, used when ``PLASTICITY_API_TOKENS`` is unset."""
        return self.data_dir / "api_token"

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql`` (the SQLAlchemy dialect name)."""
        return self.database_url.split(":", 1)[0].split("+", 1)[0]

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, CLI options)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def default_database_url(data_dir: Path) -> str:
    """SQLite file ``plasticity.db`` inside the data folder."""
    return f"sqlite:///{(data_dir / 'plasticity.db').resolve()}"


def load_settings() -> Settings:
    """Read :class:`Settings` from the environment; raises ``ValueError`` with the variable's name when bad."""
    data_dir = Path(os.environ.get("PLASTICITY_DATA_DIR", "").strip() or "./data").expanduser().resolve()
    url = os.environ.get("PLASTICITY_DATABASE_URL", "").strip() or default_database_url(data_dir)
    limits = Limits(
        max_episodes=_env_int("PLASTICITY_MAX_EPISODES", Limits.max_episodes),
        max_width=_env_int("PLASTICITY_MAX_WIDTH", Limits.max_width),
        max_depth=_env_int("PLASTICITY_MAX_DEPTH", Limits.max_depth),
        max_meta_batch=_env_int("PLASTICITY_MAX_META_BATCH", Limits.max_meta_batch),
        max_trials=_env_int("PLASTICITY_MAX_TRIALS", Limits.max_trials),
        max_concurrent_jobs=_env_int("PLASTICITY_MAX_CONCURRENT_JOBS", Limits.max_concurrent_jobs),
        max_body_bytes=_env_int("PLASTICITY_MAX_BODY_BYTES", Limits.max_body_bytes),
        max_upload_bytes=_env_int("PLASTICITY_MAX_UPLOAD_BYTES", Limits.max_upload_bytes),
    )
    return Settings(
        data_dir=data_dir,
        database_url=url,
        api_tokens=tuple(_env_list("PLASTICITY_API_TOKENS")),
        limits=limits,
        dispatcher_enabled=_env_bool("PLASTICITY_DISPATCHER", True),
        poll_seconds=_env_float("PLASTICITY_POLL_SECONDS", 1.0),
        max_running=_env_int("PLASTICITY_MAX_RUNNING", 4),
        auto_benchmark_suites=tuple(_env_list("PLASTICITY_AUTO_BENCHMARK")),
        benchmark_tiny=_env_bool("PLASTICITY_BENCHMARK_TINY", False),
        max_attempts=_env_int("PLASTICITY_MAX_ATTEMPTS", 3),
        checkpoint_root=_env_path("PLASTICITY_CHECKPOINT_DIR"),
        dataset_root=_env_path("PLASTICITY_DATASET_DIR"),
        dataset_import_dir=_env_path("PLASTICITY_DATASET_IMPORT_DIR"),
        serving=Serving(
            max_inflight=_env_int("PLASTICITY_MAX_INFLIGHT", Serving.max_inflight),
            max_active=_env_int("PLASTICITY_MAX_ACTIVE", Serving.max_active),
            queue_seconds=_env_float("PLASTICITY_QUEUE_SECONDS", Serving.queue_seconds),
            pool_size=_env_int("PLASTICITY_DB_POOL_SIZE", 0) or None,
            pool_overflow=_env_int("PLASTICITY_DB_POOL_OVERFLOW", Serving.pool_overflow),
        ),
    )
