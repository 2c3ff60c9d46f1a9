"""HTTP caching of reads: a strong ``ETag`` (a digest of the body) and ``304 Not Modified`` on ``If-None-Match``.

Used by the rules list, a rule, the leaderboard and their pages. ``Cache-Control: no-cache`` lets a client keep
the answer but revalidate it on each use, so a changed rule or score is seen at once (docs/http-api.md,
"Caching and pagination").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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


def cached(request: Request, body: bytes, media_type: str, headers: Mapping[str, str] | None = None,
           status_code: int = 200) -> Response:
    """``body`` with its ETag, or an empty 304 when the request's ``If-None-Match`` names that ETag."""
    tag = etag_of(body)
    out = {"ETag": tag, "Cache-Control": "no-cache", **(headers or {})}
    if status_code == 200 and matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=out)
    return Response(body, status_code=status_code, media_type=media_type, headers=out)
