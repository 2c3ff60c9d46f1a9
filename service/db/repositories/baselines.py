"""The database side of cached baselines (``baseline_sets``, discovery.benchmarks.cache.BaselineSet).

* :func:`cached_for` — at submission, the cached set of the run's key (suite, current suite version, seed,
  tiny) goes to the workers as ``baselines=``, unless the run asks to ``retune`` or none is stored; the workers
  then score the rule alone.
* :func:`store` — when a run that tuned its baselines succeeds, its ``baseline_set`` is stored (replacing the
  row of the same key: a retune refreshes the cache).
* :func:`waits_for_tuning` — a run whose key another submitted run is tuning right now stays queued until that
  one has cached the baselines (two cold-cache requests tune once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from discovery.benchmarks.cache import BaselineKey, BaselineSet
from discovery.benchmarks.progress import BenchmarkProgress
from discovery.benchmarks.report import BenchmarkReport
from discovery.results import jsonable
from rules.base import CoefficientRule
from service.db.models import BaselineSetRow, BenchmarkRun


def current_key(run: BenchmarkRun) -> BaselineKey | None:
    """The cache key of a run with its suite's registered version (None for a suite not registered here)."""
    from service.catalog import registered_suites

    suite = registered_suites().get(run.suite)
    if suite is None:
        return None
    return BaselineKey(suite=run.suite, version=str(suite.version), seed=int(run.seed), tiny=bool(run.tiny))


def _row(s: Session, key: BaselineKey) -> BaselineSetRow | None:
    return s.scalar(select(BaselineSetRow).where(
        BaselineSetRow.suite == key.suite, BaselineSetRow.suite_version == key.version,
        BaselineSetRow.seed == key.seed, BaselineSetRow.tiny == key.tiny))


def lookup(s: Session, key: BaselineKey) -> BaselineSet | None:
    """The cached baselines of ``key`` (None when none are stored, or the row does not validate)."""
    row = _row(s, key)
    if row is None:
        return None
    try:
        return BaselineSet.model_validate(row.data)
    except ValidationError:
        return None


def store(s: Session, baselines: BaselineSet, run_id: int | None) -> BaselineSetRow:
    """Insert or replace the cached set of ``baselines.key``."""
    key = baselines.key
    data = jsonable(baselines.model_dump())
    values = {"metric": baselines.metric[:64], "higher_is_better": baselines.higher_is_better,
              "tuned_with": baselines.tuned_with[:16], "wall_time_s": baselines.wall_time_s, "run_id": run_id,
              "data": data}
    row = _row(s, key)
    if row is None:
        row = BaselineSetRow(suite=key.suite, suite_version=key.version[:32], seed=key.seed, tiny=key.tiny, **values)
        try:
            with s.begin_nested():
                s.add(row)
                s.flush()
            return row
        except IntegrityError:  # another writer stored the same key meanwhile: replace its row
            row = _row(s, key)
            if row is None:
                raise
    for name, value in values.items():
        setattr(row, name, value)
    return row


def cached_for(s: Session, run: BenchmarkRun) -> BaselineSet | None:
    """The cached baselines of the run's key (suite, current suite version, seed, size), None when none are
    stored or the run asks to ``retune``; the dispatcher hands them to the workers, which then score the rule
    alone."""
    if run.retune:
        return None
    key = current_key(run)
    return lookup(s, key) if key is not None else None


def local_benchmark(database_url: str, suite: str, rule: CoefficientRule | None, *, tiny: bool, seed: int,
                    retune: bool = False, progress: Callable[[BenchmarkProgress], None] | None = None,
                    feedback: str | None = None) -> BenchmarkReport:
    """A benchmark in this process (the CLI's ``plasticity benchmark``) with the same cache as the service: the
    baselines of the key from the database unless ``retune``; else tuned here (serially) and stored."""
    from discovery.benchmarks.cache import key_for, run_benchmark, split_baseline_set
    from service.db.migrate import upgrade
    from service.db.session import make_engine, make_session_factory, session_scope

    engine = make_engine(database_url)
    try:
        upgrade(engine)
        sessions = make_session_factory(engine)
        with session_scope(sessions) as s:
            cached = None if retune else lookup(s, key_for(suite, tiny=tiny, seed=seed))
        report, tuned = split_baseline_set(run_benchmark(suite, rule, tiny=tiny, seed=seed, baselines=cached,
                                                         progress=progress, feedback=feedback, threads=1))
        if tuned is not None:
            with session_scope(sessions) as s:
                store(s, tuned, None)
        return report
    finally:
        engine.dispose()


def waits_for_tuning(s: Session, run: BenchmarkRun, active_ids: Iterable[int]) -> bool:
    """Whether a queued run should wait: its key is not cached yet and another submitted run of the same key is
    tuning it now (the dispatcher then submits it once that one has cached the baselines, or has ended without)."""
    if run.retune:
        return False
    key = current_key(run)
    others = [i for i in active_ids if i != run.id]
    if key is None or not others or lookup(s, key) is not None:
        return False
    same = s.scalar(select(BenchmarkRun.id).where(
        BenchmarkRun.id.in_(others), BenchmarkRun.suite == run.suite, BenchmarkRun.seed == run.seed,
        BenchmarkRun.tiny == run.tiny).limit(1))
    return same is not None
