"""The read path: cached answers sent before routing, one version check shared by the requests that arrive
together, and answers built in a worker thread that stops when its client has gone.

- :class:`VersionClock` reads ``read_version.n`` (``service.db.read_fields``) on a connection of its own. A
  request gets a value read by a query that *started after the request arrived*, so it never sees an older state
  than a write acknowledged before it; requests that arrive while one query runs share the next one, so there
  are at most about two such reads per round trip, whatever the number of readers.
- :class:`ReadFront` (ASGI middleware, outermost): a ``GET`` whose URL has an answer in the process's
  :class:`~service.api.caching.ReadCache` at the current version is sent from there at once — no routing, no
  validation, no thread, no session (the answer was built and validated by its endpoint for the same URL).
- :func:`serve_read`: the endpoints' side. On a miss it runs ``build(session, checkpoint)`` in a worker thread
  with a session of its own; ``checkpoint()`` raises :class:`ClientGone` once the client has disconnected, so
  the build stops at its next phase (reading, rendering) instead of finishing work nobody will receive.
  Requests for the same URL at the same version while it is built wait for that build (one build, not 100).

docs/operations.md, "Reads at scale".
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
from fastapi import Request, Response
from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.caching import ReadCache, _Entry, cache_key, matches, respond

log = logging.getLogger("plasticity.reads")

#: Raises :class:`ClientGone` when the request's client has disconnected.
Checkpoint = Callable[[], None]
Build = Callable[[Session, Checkpoint], Response]


#: The request scope's key for the version :class:`ReadFront` read for it.
VERSION_KEY = "plasticity.read_version"


class ClientGone(Exception):
    """The client of the request being built has disconnected: stop building."""


class VersionClock:
    """``read_version.n`` for the requests of one server process, one query per batch of arrivals."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        url = engine.url
        #: an in-memory SQLite database is one per connection's thread: read it inline, on a fresh connection
        self.inline = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        self.queries = 0
        self._arrivals = 0
        self._running: tuple[asyncio.Future[int], int] | None = None    # (the query, tickets it covers: < n)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="read-version")
        self._conn: Connection | None = None

    async def current(self) -> int:
        """The version as of a read that started after this call."""
        if self.inline:
            from service.db.read_fields import read_version

            with self.engine.connect() as conn:
                return read_version(conn)
        ticket = self._arrivals
        self._arrivals += 1
        while True:
            if self._running is None:
                future = asyncio.get_running_loop().run_in_executor(self._executor, self._read)
                self._running = (future, self._arrivals)
                future.add_done_callback(self._finished)
            future, covers = self._running
            if ticket < covers:
                return await asyncio.shield(future)
            await asyncio.wait([future])      # an earlier read (its failure is not this request's): then ours

    def _finished(self, future: asyncio.Future[int]) -> None:
        if self._running is not None and self._running[0] is future:
            self._running = None

    def _read(self) -> int:
        from service.db.read_fields import read_version

        self.queries += 1
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
            try:
                return read_version(self._conn)
            finally:
                self._conn.rollback()      # end the read transaction: the next read sees newer commits
        except Exception:
            if self._conn is not None:
                self._conn.invalidate()
                self._conn.close()
                self._conn = None
            raise

    def close(self) -> None:
        """Release the connection (the app's shutdown)."""
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._executor.submit(_close).result(10)
        self._executor.shutdown(wait=False)


class ReadFront:
    """ASGI middleware: a ``GET`` whose answer is cached at the current version is answered here (200 with its
    ``ETag``, or 304 on a matching ``If-None-Match``); anything else goes on to the app."""

    def __init__(self, app: ASGIApp, *, cache: ReadCache, clock: VersionClock) -> None:
        self.app = app
        self.cache = cache
        self.clock = clock
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            entry = self.cache.peek(cache_key(scope["path"], scope.get("query_string", b"").decode("latin-1")),
                                    touch=True)
            if entry is not None:
                try:
                    current = await self.clock.current()
                except Exception:  # noqa: BLE001 - the database is unreachable: the app answers (503)
                    current = None
                if current == entry.version:
                    self.served += 1
                    self.cache.hits += 1
                    await _send_entry(scope, send, entry)
                    return
                if current is not None:
                    scope[VERSION_KEY] = current      # read after the request arrived: serve_read uses it
        await self.app(scope, receive, send)


async def _send_entry(scope: Scope, send: Send, entry: _Entry) -> None:
    if_none_match = next((v for k, v in scope.get("headers", ()) if k == b"if-none-match"), None)
    if if_none_match is not None and matches(if_none_match.decode("latin-1"), entry.etag):
        headers = [(k, v) for k, v in entry.raw_headers if k not in (b"content-length", b"content-type")]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": list(entry.raw_headers)})
    await send({"type": "http.response.body", "body": entry.body})


async def serve_read(request: Request, build: Build) -> Response:
    """The answer of a read endpoint: from the process's :class:`ReadCache` at the current version, else
    ``build(session, checkpoint)`` run in a worker thread with a session of its own (closed before the answer
    is sent), cached when it is a 200. A client that disconnects meanwhile stops the build at its next
    ``checkpoint()``; it gets no answer."""
    state = request.app.state
    cache: ReadCache | None = getattr(state, "read_cache", None)
    clock: VersionClock | None = getattr(state, "version_clock", None)
    key = cache_key(request.url.path, request.url.query)
    version = request.scope.get(VERSION_KEY)
    if version is None:
        version = await clock.current() if clock is not None else 0
    entry = cache.get(key, version) if cache is not None else None
    if entry is not None:
        return respond(request, entry)
    builds: dict[tuple[str, int], asyncio.Future[_Entry | None]] = state.read_builds
    running = builds.get((key, version))
    if running is not None:          # the same answer is being built: wait for it instead of building it again
        await asyncio.wait([running])
        if not running.cancelled() and running.exception() is None and running.result() is not None:
            return respond(request, running.result())   # type: ignore[arg-type]
    own: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
    builds.setdefault((key, version), own)
    shared: _Entry | None = None
    try:
        try:
            response = await _build_watched(request, build)
        except ClientGone:
            state.reads_abandoned = getattr(state, "reads_abandoned", 0) + 1
            return Response(status_code=499)       # never sent: the client has gone
        if response.status_code != 200 or cache is None:
            return response
        shared = cache.put(key, version, response)
        return respond(request, shared)
    finally:
        own.set_result(shared)
        if builds.get((key, version)) is own:
            del builds[(key, version)]


async def _build_watched(request: Request, build: Build) -> Response:
    """``build`` in a worker thread while the request's ``receive`` is watched for a disconnect."""
    gone = threading.Event()

    def checkpoint() -> None:
        if gone.is_set():
            raise ClientGone

    def run() -> Response:
        checkpoint()                     # it may have waited for a thread
        session: Session = request.app.state.sessions()
        try:
            return build(session, checkpoint)
        finally:
            session.close()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await anyio.to_thread.run_sync(run)
    finally:
        watcher.cancel()


__all__ = ["Build", "Checkpoint", "ClientGone", "ReadFront", "VersionClock", "respond", "serve_read"]
