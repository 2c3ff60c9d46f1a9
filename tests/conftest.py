"""Shared pytest fixtures (generic; no test logic here).

- ``pg_base_url`` / ``pg_schema_url``: the real PostgreSQL at 127.0.0.1:5432 (database ``test``, trust auth, user
  ``root`` or ``postgres``; override with ``PLASTICITY_TEST_PG_URL``), isolated in a fresh schema per test session
  (dropped at the end). Tests that need it skip with a reason when the server is unreachable.
- ``db_url``: parametrized over ``sqlite`` (a new file per test) and ``postgresql`` (the session schema, migrated
  once, tables truncated before each test).
- ``settings``, ``app``, ``client``, ``auth``: the service on that database with the dispatcher off and the bearer
  token ``test-token``.
- ``FakeWorkers``: an in-process stand-in for ``workers.ray_jobs`` that follows a script of states.
- ``LiveServer`` / ``live_server``: the real server (``python -m service.cli.main serve``) in a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
TEST_TOKEN = "test-token"
_PG_CANDIDATES = (
    "postgresql+psycopg://root@127.0.0.1:5432/test",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
TABLES = (
    "job_events",
    "benchmark_scores",
    "benchmark_runs",
    "trials",
    "job_rules",
    "rule_terms",
    "rules",
    "jobs",
    "datasets",
)


# --- PostgreSQL -------------------------------------------------------------------------------------------------
def _pg_reachable(url: str) -> str | None:
    """None when ``url`` accepts connections, else the reason."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    """A reachable PostgreSQL URL, or skip."""
    candidates = (
        [os.environ["PLASTICITY_TEST_PG_URL"]]
        if os.environ.get("PLASTICITY_TEST_PG_URL")
        else list(_PG_CANDIDATES)
    )
    reasons = []
    for url in candidates:
        reason = _pg_reachable(url)
        if reason is None:
            return url
        reasons.append(reason)
    pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({'; '.join(reasons)})")


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def pg_schema_factory(pg_base_url: str) -> Iterator[Callable[[], str]]:
    """Make fresh schemas (URLs pointing at them); all are dropped at the end of the session."""
    from sqlalchemy import create_engine, text

    admin = create_engine(pg_base_url)
    made: list[str] = []

    def make() -> str:
        schema = f"t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        return with_search_path(pg_base_url, schema)

    yield make
    with admin.begin() as conn:
        for schema in made:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_schema_url(pg_schema_factory: Callable[[], str]) -> str:
    """One migrated schema for the whole session."""
    from service.db.migrate import upgrade
    from service.db.session import make_engine

    url = pg_schema_factory()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def truncate_all(url: str) -> None:
    """Empty every service table and reset ids (PostgreSQL)."""
    from sqlalchemy import text

    from service.db.session import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite file or PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url = request.getfixturevalue("pg_schema_url")
    truncate_all(url)
    return url


# --- the app -----------------------------------------------------------------------------------------------------
@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Any:
    """Settings on ``db_url`` with a temp data folder, the token ``test-token`` and the dispatcher off."""
    from service.settings import Settings

    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        api_tokens=(TEST_TOKEN,),
        dispatcher_enabled=False,
        poll_seconds=0.05,
    )


@pytest.fixture
def app(settings: Any) -> Any:
    from service.app import create_app

    application = create_app(settings, dispatcher=False)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TOKEN}"}


# --- a fake workers.ray_jobs --------------------------------------------------------------------------------------
def FakeState(
    status: str,
    progress: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    detail: str | None = None,
) -> Any:
    """A ``workers.contract.JobState`` from plain data, as the Ray workers would report it: a progress with a
    benchmark ``phase`` is a BenchmarkProgress (else a job's JobProgress), a result with ``entries`` a
    BenchmarkReport (else a JobResult)."""
    from discovery.benchmarks.progress import BenchmarkProgress
    from discovery.benchmarks.report import BenchmarkReport
    from workers.contract import JobState
    from workers.progress import JobProgress, JobResult

    typed_progress = None
    if progress is not None:
        typed_progress = (BenchmarkProgress.model_validate(progress) if progress.get("phase") in ("tune", "score")
                          else JobProgress.model_validate(progress))
    typed_result = None
    if result is not None:
        typed_result = (BenchmarkReport.model_validate(result) if "entries" in result
                        else JobResult.model_validate(result))
    return JobState(status=status, progress=typed_progress, result=typed_result, error=error, detail=detail)


@dataclass
class FakeHandle:
    kind: str
    id: int
    args: dict[str, Any]
    states: list[Any] = field(default_factory=list)
    cancelled: bool = False


def fake_discovery_result(
    coefficients: dict[str, float] | None = None, episodes: int = 3, accuracy: float = 0.6
) -> dict[str, Any]:
    """A DiscoveryResult-shaped dict with a real ``rules.Rule`` and a short history."""
    from rules.rule import Rule

    coefficients = coefficients or {"F0": 0.01, "F9": 0.002}
    rule = Rule(coefficients).to_dict()
    history = [
        {
            "episode": i + 1,
            "total": episodes,
            "meta_loss": 1.5 - 0.1 * i,
            "meta_accuracy": min(0.95, 0.3 + 0.6 * i / max(1, episodes - 1)),
            "theta": {k: v * (i + 1) / episodes for k, v in coefficients.items()},
        }
        for i in range(episodes)
    ]
    return {
        "rule": rule,
        "theta": coefficients,
        "history": history,
        "theta_history": [h["theta"] for h in history],
        "heldout_accuracy": accuracy,
        "heldout_ci95": 0.05,
        "heldout_episodes": 10,
        "diverged_episodes": 0,
        "skipped_steps": 0,
        "stopped": False,
        "wall_time_s": 1.0,
        "device": "cpu",
        "spec": {},
    }


def default_job_script(handle: FakeHandle) -> list[Any]:
    """running (episode 1, 2) then succeeded with :func:`fake_discovery_result`."""
    return [
        FakeState("running", {"episode": 1, "total": 2, "meta_accuracy": 0.4, "theta": {"F0": 0.005}}),
        FakeState(
            "running", {"episode": 2, "total": 2, "meta_accuracy": float("nan"), "theta": {"F0": 0.01}}
        ),
        FakeState("succeeded", {"episode": 2, "total": 2}, fake_discovery_result()),
    ]


def default_benchmark_script(handle: FakeHandle) -> list[Any]:
    """running then succeeded with a baseline and (when an expression is given) the rule."""
    entries = [
        {
            "learner": "backprop",
            "kind": "baseline",
            "score": 0.8,
            "ci95": [0.75, 0.85],
            "ci95_halfwidth": 0.05,
            "locality": "weight transport",
            "cost_per_sample_ms": 0.1,
            "metrics": {},
        },
        {
            "learner": "fa",
            "kind": "baseline",
            "score": 0.3,
            "ci95": [0.25, 0.35],
            "ci95_halfwidth": 0.05,
            "locality": "local",
            "cost_per_sample_ms": 0.1,
            "metrics": {},
        },
    ]
    if handle.args.get("expression"):
        entries.append(
            {
                "learner": "rule",
                "kind": "rule",
                "score": 0.7,
                "ci95": [0.6, 0.8],
                "ci95_halfwidth": 0.1,
                "locality": "local",
                "cost_per_sample_ms": 0.2,
                "metrics": {"e1": [1.0, float("inf")]},
            }
        )
    return [
        FakeState("running", {"phase": "score", "learner": "rule", "fraction": 0.5}),
        FakeState("succeeded", None, {"suite": handle.args["suite"], "version": "1.0", "entries": entries}),
    ]


class FakeWorkers:
    """In-process stand-in for ``workers.ray_jobs`` (it implements ``workers.contract.Workers``): every handle walks
    through a scripted list of states."""

    def __init__(
        self,
        job_script: Callable[[FakeHandle], list[Any]] = default_job_script,
        benchmark_script: Callable[[FakeHandle], list[Any]] = default_benchmark_script,
    ) -> None:
        self.job_script = job_script
        self.benchmark_script = benchmark_script
        self.handles: list[FakeHandle] = []
        self.ray_calls = 0

    def ensure_ray(self) -> str:
        self.ray_calls += 1
        return "fake://ray"

    def submit_discovery(self, job_id: Any, spec: Any, checkpoint_dir: Any = None, *,
                         max_retries: int = 0) -> FakeHandle:
        handle = FakeHandle("discovery", int(job_id), {"spec": spec, "checkpoint_dir": checkpoint_dir,
                                                       "max_retries": max_retries})
        handle.states = self.job_script(handle)
        self.handles.append(handle)
        return handle

    def submit_benchmark(
        self, bench_id: Any, suite: str, expression: str | None, *, tiny: bool = False, seed: int = 0,
        max_retries: int = 0, baselines: Any = None, layered: Any = None,
    ) -> FakeHandle:
        handle = FakeHandle(
            "benchmark", int(bench_id), {"suite": suite, "expression": expression, "tiny": tiny, "seed": seed,
                                         "max_retries": max_retries, "baselines": baselines, "layered": layered}
        )
        handle.states = self.benchmark_script(handle)
        self.handles.append(handle)
        return handle

    def poll(self, handle: FakeHandle) -> Any:
        if handle.cancelled:
            return FakeState("cancelled")
        if len(handle.states) > 1:
            return handle.states.pop(0)
        return handle.states[0]

    def cancel(self, handle: FakeHandle) -> None:
        handle.cancelled = True


@pytest.fixture
def fake_workers() -> FakeWorkers:
    return FakeWorkers()


# --- a live server -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``python -m service.cli.main serve`` in its own process group, with its log in the data folder."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PLASTICITY_DATA_DIR": str(data_dir),
            "PLASTICITY_POLL_SECONDS": "0.5",
            "PLASTICITY_RAY_NUM_CPUS": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if "RAY_ADDRESS" not in (env or {}):
            self.env.pop("RAY_ADDRESS", None)  # a local Ray of its own
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    def start(self, timeout: float = 120.0) -> LiveServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli.main",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal the server's process group (the server and the local Ray it started); SIGKILL after timeout."""
        if self.proc is None or self.proc.poll() is not None:
            self._kill_group(signal.SIGKILL)
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(signal.SIGKILL)
            self.proc.wait(10)
        if sig != signal.SIGKILL:
            time.sleep(1.0)
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    @property
    def token(self) -> str:
        return (self.data_dir / "api_token").read_text().strip()


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers on demand; all are stopped at the end of the test."""
    started: list[LiveServer] = []

    def start(
        data_dir: Path | None = None, env: dict[str, str] | None = None, port: int | None = None
    ) -> LiveServer:
        server = LiveServer(data_dir or tmp_path / "data", env, port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        # the test is over and its data folder is thrown away: no graceful Ray shutdown (10-20 s each); Ray's own
        # workers run in their own sessions and exit within seconds once their raylet is gone
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch limited to one thread for a test module (tiny tensors: avoids oversubscribing the shared cores).

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- waiting on live work ---------------------------------------------------------------------------------------
FINAL = ("succeeded", "failed", "cancelled")


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str,
             server: Any = None, interval: float = 0.2) -> Any:
    """Poll ``fetch`` until ``done`` holds (a failed HTTP call counts as not yet); fail with the last value and
    ``server``'s log (a LiveServer, or any callable giving text) after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = fetch()
        except httpx.HTTPError:
            value = None
        if value is not None and done(value):
            return value
        time.sleep(interval)
    log = server() if callable(server) else (server.log() if server is not None else "")
    pytest.fail(f"timed out ({timeout:.0f} s) waiting for {what}: {value}\n{log}")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray with 2 CPUs for the module (a cluster from RAY_ADDRESS is not used by the tests)."""
    from workers import ensure_ray, shutdown_ray

    saved = os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved



def wait_final(http: Any, path: str, timeout: float, server: Any = None) -> Any:
    """GET ``path`` until its ``status`` is final (succeeded, failed or cancelled); the last answer."""
    return wait_for(lambda: http.get(path).json(), lambda d: d["status"] in FINAL, timeout, path, server)
