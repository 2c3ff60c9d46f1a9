"""Load benchmark of the read path: a fresh database of N stored rules, the real server, closed-loop readers.

    python -m experiments.load_bench                                   # SQLite, 1,000 rules, 100 readers, 20 s each
    python -m experiments.load_bench --database-url postgresql+psycopg://user@127.0.0.1/db --workers 2
    python -m experiments.load_bench --overload                        # 400 readers for 30 s, then the recovery check

What it does (docs/operations.md, "Reads at scale"; figures in docs/results.md, issue 29):

1. seeds a fresh database through the service's own write path: ``--jobs`` succeeded open-search jobs whose
   fronts store ``--rules`` rules in all (each rule with its front point's held-out score, the job's θ and
   accuracy history), and ``--benchmarked`` of those rules scored in one succeeded benchmark run beside three
   baselines (so the default leaderboard is that suite's);
2. starts ``python -m service.cli serve --workers N`` on a free loopback port with its log in a file (with
   ``--dispatcher``: and waits until the active dispatcher has started Ray);
3. per endpoint: ``--readers`` concurrent clients in a closed loop (each sends its next request when the last
   answer arrived) for ``--warmup`` unmeasured then ``--duration`` measured seconds, with no conditional headers;
   prints requests/s, p50, p95, max and errors (any answer but 200, or no answer within ``--timeout``);
4. ``--overload``: ``--overload-readers`` clients over all the endpoints for ``--overload-seconds``; every answer
   must be 200, or 503 with ``Retry-After``; after ``--recovery-wait`` seconds ``/api/health`` and
   ``/api/rules/{id}`` must answer in < 100 ms;
5. counts the 5xx answers in the server's access log.

Results go to ``--out`` (JSON) as well. Loopback only: the server listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ENDPOINTS = ("/api/rules?limit=50", "/api/rules?limit=200", "/api/rules/{id}", "/api/leaderboard", "/",
             "/rules", "/rules/{id}")
TERMS = ("F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9")


# --- seeding -------------------------------------------------------------------------------------------------------
def seed(url: str, n_rules: int, n_jobs: int, n_benchmarked: int, seed_: int = 0) -> list[int]:
    """Fill a fresh database at ``url`` through the service's write path; the ids of the stored rules."""
    from discovery.spec import DiscoverySpec
    from rules.rule import Rule as RuleExpr
    from service.db.migrate import upgrade
    from service.db.models import SUCCEEDED, BenchmarkRun, BenchmarkScore, FrontPointRow, Job, JobRule
    from service.db.repositories.rules import upsert_rule
    from service.db.session import make_engine, make_session_factory, session_scope
    from service.rulebook import record_of

    rng = random.Random(seed_)
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    spec = DiscoverySpec().model_dump(mode="json")
    per_job = max(1, -(-n_rules // n_jobs))
    ids: list[int] = []
    seen: set[str] = set()
    t0 = time.perf_counter()
    while len(ids) < n_rules:
        with session_scope(sessions) as s:
            history = [{"meta_accuracy": 0.2 + 0.6 * e / 60 + rng.uniform(-0.05, 0.05)} for e in range(60)]
            thetas = [{t: rng.uniform(-0.05, 0.05) for t in TERMS[:3]} for _ in range(60)]
            job = Job(name=f"seeded search {len(ids) // per_job}", spec=spec, owner="bench", status=SUCCEEDED,
                      attempts=1, result={"heldout_accuracy": rng.uniform(0.3, 0.9), "heldout_ci95": 0.02,
                                          "history": history, "theta_history": thetas})
            s.add(job)
            s.flush()
            for position in range(min(per_job, n_rules - len(ids))):
                n_terms = rng.randint(1, 6)
                coefficients = {t: round(rng.uniform(-0.1, 0.1), 5) or 0.001 for t in rng.sample(TERMS, n_terms)}
                record = record_of(RuleExpr(coefficients))
                if record.hash in seen:
                    continue
                seen.add(record.hash)
                rule, _ = upsert_rule(s, record, name=f"rule {len(ids) + 1} ({n_terms} terms)", origin="discovered",
                                      spec=spec, seed=0, job_id=job.id, provenance={"source": "load_bench"})
                s.add(JobRule(job_id=job.id, rule_id=rule.id))
                s.add(FrontPointRow(job_id=job.id, position=position, rule_id=rule.id, n_terms=n_terms,
                                    complexity=n_terms, heldout_accuracy=rng.uniform(0.3, 0.9), heldout_ci95=0.02,
                                    heldout_episodes=100, selected=position == 0, stage=f"fit {n_terms} terms",
                                    terms=list(coefficients), theta=coefficients))
                ids.append(rule.id)
        print(f"  seeded {len(ids)} rules ({time.perf_counter() - t0:.0f} s)", end="\r", flush=True)
    with session_scope(sessions) as s:
        run = BenchmarkRun(suite="fa5-online", suite_version="1", owner="bench", tiny=False, seed=0,
                           status=SUCCEEDED, result={"baselines": "cached"})
        s.add(run)
        s.flush()
        for learner in ("bp", "fa", "dfa"):
            s.add(BenchmarkScore(run_id=run.id, suite=run.suite, learner=learner, origin="baseline",
                                 score=rng.uniform(0.5, 0.9), ci95=0.01, locality="global error"))
        for rid in rng.sample(ids, min(n_benchmarked, len(ids))):
            s.add(BenchmarkScore(run_id=run.id, suite=run.suite, learner=f"rule {rid}", origin="discovered",
                                 rule_id=rid, score=rng.uniform(0.3, 0.9), ci95=0.02, locality="global error",
                                 cost_per_sample_ms=0.01))
    engine.dispose()
    print(f"  seeded {len(ids)} rules in {time.perf_counter() - t0:.0f} s")
    return ids


def copy_database(src: str, dst: str) -> list[int]:
    """Copy every table of ``src`` into the fresh database ``dst`` (migrated first); the rule ids."""
    from sqlalchemy import select, text

    from service.db.migrate import upgrade
    from service.db.models import Base
    from service.db.session import make_engine

    source, target = make_engine(src), make_engine(dst)
    upgrade(target)
    with source.connect() as read, target.begin() as write:
        for table in Base.metadata.sorted_tables:
            if table.name == "read_version":      # its one row is written by the migration
                continue
            rows = [dict(r) for r in read.execute(select(table)).mappings()]
            if rows:
                write.execute(table.insert(), rows)
            if target.dialect.name == "postgresql" and "id" in table.c and rows:
                write.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                   f"(SELECT max(id) FROM {table.name}))"))
        ids = [r for (r,) in write.execute(text("SELECT id FROM rules ORDER BY id"))]
    source.dispose()
    target.dispose()
    return ids


# --- the server ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """``python -m service.cli serve`` in its own process group."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(cls, url: str, data_dir: Path, workers: int, env_extra: dict[str, str], dispatcher: bool) -> Server:
        port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        log = data_dir / "server.log"
        env = {**os.environ, "PLASTICITY_DATA_DIR": str(data_dir), "PLASTICITY_DATABASE_URL": url,
               "PLASTICITY_DISPATCHER": "1" if dispatcher else "0", "OMP_NUM_THREADS": "1", **env_extra}
        cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers)]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=env.get("PYTHONPATH", "").split(os.pathsep)[0] or None)
        server = cls(proc, port, log)
        server.wait_ready(workers)
        if dispatcher:
            server.wait_dispatcher()
        return server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, workers: int, timeout: float = 180.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + "/api/health", timeout=5) as answer:
                    if answer.status == 200 and self.log.read_text().count("Application startup complete") >= workers:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not start in time")

    def wait_dispatcher(self, timeout: float = 300.0) -> None:
        """Until the active dispatcher has started or joined Ray (its start is not part of the measured reads)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/api/health", timeout=5) as answer:
                    if json.loads(answer.read()).get("ray", {}).get("state") == "connected":
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise RuntimeError("the dispatcher did not connect to Ray in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def status_counts(self) -> dict[str, int]:
        """Access-log answers by status code."""
        counts: dict[str, int] = {}
        for code in re.findall(r'HTTP/1\.[01]" (\d{3})', self.log.read_text(errors="replace")):
            counts[code] = counts.get(code, 0) + 1
        return counts


# --- the readers ---------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the readers of one endpoint saw."""

    endpoint: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    missing_retry_after: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan"))
        return {"endpoint": self.endpoint, "requests": len(lat), "rps": len(lat) / self.seconds if self.seconds else 0,
                "p50_ms": q(0.50), "p95_ms": q(0.95), "max_ms": (lat[-1] * 1000 if lat else float("nan")),
                "errors": self.errors, "statuses": self.statuses, "missing_retry_after": self.missing_retry_after}


async def _reader(session: aiohttp.ClientSession, base: str, paths: list[str], ids: list[int], rng: random.Random,
                  stop_at: float, measure_from: float, tally: Tally, ok: tuple[int, ...]) -> None:
    while time.monotonic() < stop_at:
        path = rng.choice(paths)
        if "{id}" in path:
            path = path.replace("{id}", str(rng.choice(ids)))
        t0 = time.monotonic()
        try:
            async with session.get(base + path) as answer:
                await answer.read()
                status, retry_after = answer.status, answer.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status, retry_after = 0, None
        t1 = time.monotonic()
        if t0 < measure_from:
            continue
        tally.latencies.append(t1 - t0)
        tally.statuses[str(status)] = tally.statuses.get(str(status), 0) + 1
        if status not in ok:
            tally.errors += 1
        if status == 503 and not retry_after:
            tally.missing_retry_after += 1
        if status == 0:
            await asyncio.sleep(0.05)


async def run_load(base: str, paths: list[str], ids: list[int], readers: int, warmup: float, duration: float,
                   timeout: float, seed_: int, ok: tuple[int, ...] = (200,), label: str | None = None) -> Tally:
    """``readers`` closed-loop clients over ``paths`` for ``warmup`` + ``duration`` s; the measured part."""
    tally = Tally(label or paths[0])
    connector = aiohttp.TCPConnector(limit=readers, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = time.monotonic()
        measure_from, stop_at = start + warmup, start + warmup + duration
        await asyncio.gather(*(
            _reader(session, base, paths, ids, random.Random(seed_ * 1000 + i), stop_at, measure_from, tally, ok)
            for i in range(readers)))
        tally.seconds = max(1e-9, time.monotonic() - measure_from)
    return tally


async def probe(base: str, path: str, times: int = 5) -> list[float]:
    """Latencies (ms) of ``times`` sequential requests on a fresh connection each."""
    out = []
    for _ in range(times):
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            async with session.get(base + path) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{path} answered {answer.status}")
            out.append((time.monotonic() - t0) * 1000)
    return out


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'endpoint':28s} {'req':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'errors':>7s}")
    for r in rows:
        print(f"{r['endpoint']:28s} {r['requests']:7d} {r['rps']:8.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
              f"{r['max_ms']:8.1f} {r['errors']:7d}  {r['statuses']}")


# --- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default="", help="a fresh PostgreSQL database (default: SQLite in a temp dir); "
                   "its tables are dropped first")
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=100, help="succeeded jobs whose fronts hold the rules")
    p.add_argument("--benchmarked", type=int, default=100, help="rules scored in the seeded benchmark run")
    p.add_argument("--readers", type=int, default=100)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per endpoint")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=30.0, help="a request unanswered this long is an error")
    p.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    p.add_argument("--dispatcher", action="store_true", help="run the dispatcher (starts Ray) as `serve` does")
    p.add_argument("--endpoints", nargs="*", default=list(ENDPOINTS))
    p.add_argument("--overload", action="store_true", help="also the overload test and the recovery check")
    p.add_argument("--overload-only", action="store_true", help="skip the per-endpoint runs")
    p.add_argument("--overload-readers", type=int, default=400)
    p.add_argument("--overload-seconds", type=float, default=30.0)
    p.add_argument("--recovery-wait", type=float, default=60.0)
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the server (PYTHONPATH=<checkout> "
                   "also runs it from that checkout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the SQLite file and the server data here "
                   "(default: a new temp folder)")
    p.add_argument("--copy-from", default="", help="instead of seeding, copy every table of this database (one seeded "
                   "by an earlier run, e.g. sqlite:///<workdir>/bench.db): the same rules without typesetting again")
    p.add_argument("--as-is", action="store_true", help="use the database as it is (any revision: e.g. a copy "
                   "downgraded for a run of an older server with --env PYTHONPATH=<its checkout>)")
    p.add_argument("--reuse", action="store_true", help="keep a database already seeded by an earlier run with the "
                   "same --rules (seeding typesets every formula: minutes)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="load-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    ids = _seeded_ids(url, args.rules, any_revision=args.as_is) if (args.reuse or args.as_is) else []
    if ids:
        print(f"reusing the {len(ids)} rules in {url.split('@')[-1]}")
    elif args.copy_from:
        _drop_all(url)
        print(f"copying {args.copy_from.split('@')[-1]} into {url.split('@')[-1]}")
        ids = copy_database(args.copy_from, url)
    else:
        _drop_all(url)
        print(f"seeding {args.rules} rules into {url.split('@')[-1]}")
        ids = seed(url, args.rules, args.jobs, args.benchmarked, args.seed)
    env = dict(kv.split("=", 1) for kv in args.env)
    server = Server.start(url, tmp / "data", args.workers, env, args.dispatcher)
    results: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "database": url.split("://")[0], "endpoints": []}
    failures: list[str] = []
    try:
        print(f"server: {args.workers} process(es) on {server.base}; {args.readers} readers, "
              f"{args.warmup:g} + {args.duration:g} s per endpoint")
        if not args.overload_only:
            for path in args.endpoints:
                tally = asyncio.run(run_load(server.base, [path], ids, args.readers, args.warmup, args.duration,
                                             args.timeout, args.seed))
                row = tally.summary()
                results["endpoints"].append(row)
                _print([row])
                if row["errors"] or not row["p95_ms"] < 500:
                    failures.append(f"{path}: p95 {row['p95_ms']:.0f} ms, {row['errors']} errors")
        if args.overload or args.overload_only:
            print(f"overload: {args.overload_readers} readers over all endpoints for {args.overload_seconds:g} s")
            tally = asyncio.run(run_load(server.base, list(args.endpoints), ids, args.overload_readers, 0.0,
                                         args.overload_seconds, args.timeout, args.seed, ok=(200, 503),
                                         label="overload (all endpoints)"))
            row = tally.summary()
            results["overload"] = row
            _print([row])
            if row["errors"] or row["missing_retry_after"]:
                failures.append(f"overload: {row['errors']} answers not 200/503, "
                                f"{row['missing_retry_after']} 503s without Retry-After")
            print(f"waiting {args.recovery_wait:g} s, then /api/health and /api/rules/{{id}}")
            time.sleep(args.recovery_wait)
            health = asyncio.run(probe(server.base, "/api/health"))
            rule = asyncio.run(probe(server.base, f"/api/rules/{ids[0]}"))
            results["recovery_ms"] = {"health": health, "rule": rule}
            print(f"recovery: /api/health {', '.join(f'{v:.1f}' for v in health)} ms; "
                  f"/api/rules/{{id}} {', '.join(f'{v:.1f}' for v in rule)} ms")
            if not (statistics.median(health) < 100 and statistics.median(rule) < 100):
                failures.append("recovery: a median answer took >= 100 ms")
    finally:
        server.stop()
    counts = server.status_counts()
    results["server_log_statuses"] = counts
    fives = {k: v for k, v in counts.items() if k.startswith("5")}
    allowed = {"503"} if (args.overload or args.overload_only) else set()
    print(f"server log: answers by status {counts}")
    if set(fives) - allowed:
        failures.append(f"5xx in the server log: {fives}")
    results["failures"] = failures
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    shutil.copy(server.log, tmp / "server-copy.log")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    print(f"(server log: {server.log})")
    return 0 if not failures else 1


def _seeded_ids(url: str, n_rules: int, any_revision: bool = False) -> list[int]:
    """The rule ids of a database seeded before with ``n_rules`` rules (empty when it is not one)."""
    from sqlalchemy import text

    from service.db.migrate import current_revision, head_revision
    from service.db.session import make_engine

    engine = make_engine(url)
    try:
        if not any_revision and current_revision(engine) != head_revision():
            return []
        with engine.connect() as conn:
            ids = [r for (r,) in conn.execute(text("SELECT id FROM rules ORDER BY id"))]
        return ids if len(ids) == n_rules else []
    except Exception:  # noqa: BLE001 - no such database or table: seed it
        return []
    finally:
        engine.dispose()


def _drop_all(url: str) -> None:
    """Empty the database for a fresh run (its tables and the Alembic version row)."""
    from sqlalchemy import MetaData

    from service.db.session import make_engine

    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
