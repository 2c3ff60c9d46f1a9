"""HTTP caching of reads: a strong ``ETag`` (a digest of the body) and ``304 Not Modified`` on ``If-None-Match``.

Used by the rules list, a rule, the leaderboard and their pages. ``Cache-Control: no-cache`` lets a client keep
the answer but revalidate it on each use, so a changed rule or score is seen at once (docs/http-api.md,
"Caching and pagination"). :class:`ReadCache` keeps the answers themselves in the server process while the data
is unchanged (docs/operations.md, "Reads at scale").
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import Request, Response
from sqlalchemy.orm import Session


def etag_of(body: bytes) -> str:
    """A strong entity tag: the quoted 128-bit BLAKE2b digest of the body."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``tag`` (weak comparison, as RFC 9110 asks for it, or ``*``)."""
    if not if_none_match:
        return False
    bare = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == bare:
            return True
    return False


def cached(request: Request, body: bytes, media_type: str, headers: Mapping[str, str] | None = None,
           status_code: int = 200) -> Response:
    """``body`` with its ETag, or an empty 304 when the request's ``If-None-Match`` names that ETag."""
    tag = etag_of(body)
    skip = {"content-length", "etag", "cache-control", "content-type"}
    out = {**{k: v for k, v in (headers or {}).items() if k.lower() not in skip}, "ETag": tag,
           "Cache-Control": "no-cache"}
    if status_code == 200 and matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=out)
    return Response(body, status_code=status_code, media_type=media_type, headers=out)


@dataclass(frozen=True)
class _Entry:
    version: int
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...]
    etag: str


class ReadCache:
    """Answers of the read endpoints kept in memory per URL, valid while the database's change counter
    (``read_version``, ``service.db.read_fields``) is unchanged; least recently used first out above ``max_bytes``.

    A cached answer costs one primary-key read (the counter) instead of its queries and rendering; any write that
    changes what reads show bumps the counter, so no answer is ever served stale. One per server process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, version: int) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.version != version:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, version: int, response: Response) -> _Entry:
        skip = {"content-length", "etag", "cache-control"}
        headers = tuple((k, v) for k, v in response.headers.items() if k.lower() not in skip)
        body = bytes(response.body)
        entry = _Entry(version, body, response.media_type or "application/octet-stream", headers, etag_of(body))
        if len(body) > self.max_bytes // 8:
            return entry                                   # too large to keep: served, not cached
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= len(old.body)
            self._entries[key] = entry
            self.size += len(body)
            while self.size > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self.size -= len(dropped.body)
        return entry


def respond(request: Request, entry: _Entry) -> Response:
    """The cached answer, or 304 when ``If-None-Match`` names its ETag."""
    out = {**dict(entry.headers), "ETag": entry.etag, "Cache-Control": "no-cache"}
    if matches(request.headers.get("if-none-match"), entry.etag):
        return Response(status_code=304, headers=out)
    return Response(entry.body, media_type=entry.media_type, headers=out)


def serve_read(request: Request, session: Session, build: Callable[[], Response]) -> Response:
    """The answer of a read endpoint: from the process's :class:`ReadCache` while the data is unchanged, else
    ``build()`` (which reads with ``session``) cached when it is a 200. The session is closed before the answer is
    sent."""
    from service.db.read_fields import read_version

    cache: ReadCache | None = getattr(request.app.state, "read_cache", None)
    key = request.url.path + "?" + request.url.query
    version = read_version(session.connection()) if cache is not None else 0
    entry = cache.get(key, version) if cache is not None else None
    if entry is None:
        response = build()
        session.close()
        if response.status_code != 200:
            return response
        if cache is None:
            return cached(request, bytes(response.body), response.media_type or "", response.headers)
        entry = cache.put(key, version, response)
    session.close()
    return respond(request, entry)
