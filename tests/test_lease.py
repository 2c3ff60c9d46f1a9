"""One active dispatcher per database (service.runs.lease): a second dispatcher on the same database stands by, and
takes over (recovering the interrupted work) once the holder lets go; SQLite (file lock) and PostgreSQL (advisory
lock)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from service.db.models import Job
from service.db.session import make_engine, session_scope
from service.runs.dispatcher import Dispatcher
from service.runs.lease import DispatcherLease
from service.runs.states import set_status
from tests.conftest import FakeWorkers


def test_one_lease_per_database(app: Any, settings: Any) -> None:
    engine = app.state.sessions.kw["bind"]
    other_engine = make_engine(settings.database_url)   # another process's connection pool
    first, second = DispatcherLease(engine, settings.data_dir), DispatcherLease(other_engine, settings.data_dir)
    try:
        assert first.acquire() and first.held
        assert not second.acquire() and not second.held
        first.release()
        assert not first.held and second.acquire() and second.held
        assert not first.acquire()
    finally:
        first.release()
        second.release()
        other_engine.dispose()


def test_a_standby_takes_over_and_recovers(client: Any, auth: dict[str, str], app: Any, settings: Any) -> None:
    job_id = client.post("/api/jobs", json={"network": {"widths": [784, 16, 10]}, "task": {"dataset": "synthetic"}},
                         headers=auth).json()["id"]
    with session_scope(app.state.sessions) as s:
        assert set_status(s, Job, job_id, "running", event="started")        # as if a holder had started it
    settings = dataclasses.replace(settings, poll_seconds=0.05)
    active = Dispatcher(settings, app.state.sessions, FakeWorkers())
    standby = Dispatcher(settings, app.state.sessions, FakeWorkers(),
                         lease=DispatcherLease(make_engine(settings.database_url), settings.data_dir))
    active.start()
    try:
        deadline = time.monotonic() + 20
        while not active.status()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        standby.start()
        time.sleep(0.5)
        assert active.status()["active"] and not standby.status()["active"]
        assert standby.ticks == 0                 # a standby never touches Ray or the database
    finally:
        active.stop()
    deadline = time.monotonic() + 20
    # the lease is taken a moment before the first tick: wait for both (a race the loaded CI machine showed)
    while not (standby.status()["active"] and standby.ticks > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert standby.status()["active"] and standby.ticks > 0
        events = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()["events"]
        assert any(e["kind"] == "requeued" for e in events)   # the new holder recovered the running job
    finally:
        standby.stop()
