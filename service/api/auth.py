"""Bearer tokens for write endpoints.

Tokens come from ``PLASTICITY_API_TOKENS`` (comma-separated). When that is unset, one token is generated at first
start and kept in ``<data dir>/api_token`` (mode 0600), and the service prints it. Reads are public. A token is
never stored in the database: jobs and benchmark runs keep its *fingerprint* (sha256, 16 hex digits), which is
what the per-token concurrency cap counts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from service.settings import Settings


@dataclass(frozen=True)
class TokenSet:
    """The accepted tokens, and whether the (single) token was generated into the data folder."""

    tokens: tuple[str, ...]
    generated_file: str | None = None

    def check(self, presented: str) -> bool:
        """Constant-time membership test."""
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(token.encode(), presented.encode())
        return ok


def fingerprint(token: str) -> str:
    """A short, non-reversible id of a token (stored as the owner of jobs)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def load_tokens(settings: Settings) -> TokenSet:
    """The configured tokens, or the one in ``api_token`` (generated now if missing)."""
    if settings.api_tokens:
        return TokenSet(tuple(settings.api_tokens))
    path = settings.token_file
    if path.exists():
        token = path.read_text().strip()
        if token:
            return TokenSet((token,), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return TokenSet((token,), str(path))


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def require_token(request: Request) -> str:
    """FastAPI dependency of write endpoints: returns the caller's token fingerprint, or raises 401."""
    tokens: TokenSet = request.app.state.tokens
    header = request.headers.get("authorization", "")
    if not header:
        raise _unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(tokens come from PLASTICITY_API_TOKENS, or the file api_token in the data folder)"
        )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    token = value.strip()
    if not tokens.check(token):
        raise _unauthorized("invalid bearer token")
    return fingerprint(token)
