"""Load shedding: a bounded number of requests in flight, a bounded number running, 503 with ``Retry-After`` above.

One server process admits at most ``max_inflight`` requests at once; the next answers at once **503** with
``Retry-After`` (never a 500, never a queue without end). Of the admitted ones, ``max_active`` run their handlers
at once (the database pool is sized to match, ``Settings.serving.pool``); the rest wait for a slot, at most
``queue_seconds`` (then 503 with ``Retry-After``). A waiting GET or HEAD whose client disconnects is dropped
before its handler runs, so work abandoned by its client does not delay the next requests. ``/api/health`` and
static files are exempt, so the health check stays cheap under overload (docs/operations.md, "Reads at scale").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("plasticity.shedding")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXEMPT_PATHS = frozenset({"/api/health"})
EXEMPT_PREFIXES = ("/static/",)


class LoadShedder:
    """ASGI middleware admitting ``max_inflight`` requests, running ``max_active`` of them at once."""

    def __init__(self, app: ASGIApp, *, max_inflight: int, max_active: int, queue_seconds: float,
                 retry_after_s: int = 1) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.max_active = max_active
        self.queue_seconds = queue_seconds
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.shed = 0       # answered 503
        self.dropped = 0    # clients gone while queued
        self._slots: asyncio.Semaphore | None = None

    def stats(self) -> dict[str, int]:
        """Counters for the health answer and the operations docs."""
        return {"inflight": self.inflight, "max_inflight": self.max_inflight, "max_active": self.max_active,
                "shed": self.shed, "dropped": self.dropped}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            await self._busy(send, f"the server is at its limit of {self.max_inflight} requests in flight "
                                   "(PLASTICITY_MAX_INFLIGHT)")
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_active)
        self.inflight += 1
        try:
            await self._admitted(scope, receive, send, self._slots)
        finally:
            self.inflight -= 1

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, slots: asyncio.Semaphore) -> None:
        first: list[Message] = []
        if scope.get("method") in ("GET", "HEAD"):
            while True:              # the (small) request body; once it is read, a message can only be a disconnect
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.dropped += 1
                    return
                first.append(message)
                if not message.get("more_body", False):
                    break
        got = await self._wait_for_slot(slots, receive if first else None)
        if got == "gone":
            self.dropped += 1
            return
        if got == "timeout":
            await self._busy(send, f"the server is busy: no worker slot within {self.queue_seconds:g} s "
                                   "(PLASTICITY_QUEUE_SECONDS)")
            return
        try:
            await self.app(scope, _replay(first, receive) if first else receive, send)
        finally:
            slots.release()

    async def _wait_for_slot(self, slots: asyncio.Semaphore, receive: Receive | None) -> str:
        """'ok' with a slot held, 'gone' when the client disconnected first, 'timeout' after ``queue_seconds``."""
        if not slots.locked():
            await slots.acquire()
            return "ok"
        acquire = asyncio.ensure_future(slots.acquire())
        waiters: set[asyncio.Future[Any]] = {acquire}
        gone = asyncio.ensure_future(receive()) if receive is not None else None
        if gone is not None:
            waiters.add(gone)
        try:
            done, _ = await asyncio.wait(waiters, timeout=self.queue_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                if not task.done():
                    task.cancel()
        have_slot = acquire.done() and not acquire.cancelled() and acquire.exception() is None
        if gone is not None and gone in done:
            if have_slot:
                slots.release()
            return "gone"
        if have_slot:
            return "ok"
        return "timeout"

    async def _busy(self, send: Send, detail: str) -> None:
        self.shed += 1
        body = json.dumps({"detail": detail + "; retry after the time in Retry-After"}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(first: list[Message], receive: Receive) -> Receive:
    """``receive`` that hands out the messages ``first`` (already read) once, then the real ones."""
    pending = list(reversed(first))

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
