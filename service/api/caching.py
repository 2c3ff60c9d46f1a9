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
from dataclasses import dataclass

from fastapi import Request, Response


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


@dataclass(frozen=True)
class _Entry:
    version: int
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...]
    etag: str
    #: the 200 answer's ASGI headers, encoded once
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


class ReadCache:
    """Answers of the read endpoints kept in memory per URL, valid while the database's change counter
    (``read_version``, ``service.db.read_fields``) is unchanged; least recently used first out above ``max_bytes``.

    A cached answer costs one version check (:class:`VersionClock`, shared by the requests that arrive together)
    instead of its queries and rendering; any write that changes what reads show bumps the counter, so no answer
    is ever served stale. One per server process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, key: str, touch: bool = False) -> _Entry | None:
        """The entry kept for ``key`` whatever its version (the caller compares it); ``touch``: count it as used."""
        entry = self._entries.get(key)
        if entry is not None and touch:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
        return entry

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
        tag = etag_of(body)
        raw = ((b"content-length", str(len(body)).encode()), (b"etag", tag.encode()), (b"cache-control", b"no-cache"),
               *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers))
        entry = _Entry(version, body, response.media_type or "application/octet-stream", headers, tag, raw)
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


def cache_key(path: str, query: str) -> str:
    """The read cache's key of a URL: its path and query string, as sent."""
    return path + "?" + query
