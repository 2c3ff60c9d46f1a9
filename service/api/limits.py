"""Request limits: body size (413), caps on a job spec's sizes (422), active work per token (429).

The caps come from ``service.settings.Limits`` (``PLASTICITY_MAX_*``). A spec problem is reported like a pydantic
validation error, ``{"loc": [...], "msg": ..., "type": "limit"}``, so clients see the field and the reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from discovery.goal import input_dim
from discovery.spec import DiscoverySpec
from service.settings import Limits

#: Where each administrator's cap (``service.settings.Limits``, ``PLASTICITY_MAX_*``) bounds a field of a job
#: spec: (schema component, property, JSON-schema keyword, the cap). ``service.api.openapi`` writes these into
#: the document from the running settings; :func:`spec_problems` enforces the same numbers.
SCHEMA_LIMITS: tuple[tuple[str, str, str, Callable[[Limits], int]], ...] = (
    ("MetaSpec", "episodes", "maximum", lambda lim: lim.max_episodes),
    ("MetaSpec", "eval_episodes", "maximum", lambda lim: lim.max_episodes),
    ("SearchSpec", "front_eval_episodes", "maximum", lambda lim: lim.max_episodes),
    ("MetaSpec", "meta_batch", "maximum", lambda lim: lim.max_meta_batch),
    ("NetworkSpec", "widths", "maxItems", lambda lim: lim.max_depth + 1),
    ("NetworkSpec", "widths", "items.maximum", lambda lim: lim.max_width),
    # the product of the sweep's list lengths is capped too (a meaning check: see docs/http-api.md)
    ("SweepSpec", "seeds", "maxItems", lambda lim: lim.max_trials),
    ("SweepSpec", "lr", "maxItems", lambda lim: lim.max_trials),
    ("SweepSpec", "l1", "maxItems", lambda lim: lim.max_trials),
)


def _problem(loc: list[str | int], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "limit"}


def fit_defaults(spec: DiscoverySpec, limits: Limits) -> DiscoverySpec:
    """Episode counts the request left at their defaults, lowered to the cap (the document shows these
    defaults); a value the request gave is never changed, only checked by :func:`spec_problems`."""
    meta = spec.meta
    for name in ("episodes", "eval_episodes"):
        if name not in meta.model_fields_set and getattr(meta, name) > limits.max_episodes:
            setattr(meta, name, limits.max_episodes)
    return spec


def spec_problems(spec: DiscoverySpec, limits: Limits) -> list[dict[str, Any]]:
    """Everything about ``spec`` that exceeds a cap or cannot run here; empty when it is acceptable."""
    problems: list[dict[str, Any]] = []
    widths = spec.network.widths
    if spec.network.depth > limits.max_depth:
        problems.append(
            _problem(
                ["network", "widths"],
                f"depth {spec.network.depth} exceeds the limit of {limits.max_depth} weight layers "
                "(PLASTICITY_MAX_DEPTH)",
            )
        )
    for i, w in enumerate(widths):
        if w > limits.max_width:
            problems.append(
                _problem(
                    ["network", "widths", i],
                    f"width {w} exceeds the limit of {limits.max_width} (PLASTICITY_MAX_WIDTH)",
                )
            )
    expected = input_dim(spec.task.dataset, upsample=spec.task.upsample)
    if expected is not None and widths[0] != expected:
        problems.append(
            _problem(
                ["network", "widths", 0],
                f"the input width must be {expected} for data set {spec.task.dataset!r}"
                f"{' (upsampled)' if spec.task.upsample else ''}, got {widths[0]}",
            )
        )
    if spec.meta.episodes > limits.max_episodes:
        problems.append(
            _problem(
                ["meta", "episodes"],
                f"{spec.meta.episodes} episodes exceed the limit of {limits.max_episodes} "
                "(PLASTICITY_MAX_EPISODES)",
            )
        )
    if spec.meta.eval_episodes > limits.max_episodes:
        problems.append(
            _problem(
                ["meta", "eval_episodes"],
                f"{spec.meta.eval_episodes} evaluation episodes exceed the limit of "
                f"{limits.max_episodes} (PLASTICITY_MAX_EPISODES)",
            )
        )
    front_eval = spec.search.front_eval_episodes
    if front_eval is not None and front_eval > limits.max_episodes:
        problems.append(
            _problem(
                ["search", "front_eval_episodes"],
                f"{front_eval} front evaluation episodes exceed the limit of {limits.max_episodes} "
                "(PLASTICITY_MAX_EPISODES)",
            )
        )
    if spec.meta.meta_batch > limits.max_meta_batch:
        problems.append(
            _problem(
                ["meta", "meta_batch"],
                f"meta-batch {spec.meta.meta_batch} exceeds the limit of {limits.max_meta_batch} "
                "(PLASTICITY_MAX_META_BATCH)",
            )
        )
    trials = math.prod(len(v) for v in (spec.sweep.seeds, spec.sweep.lr, spec.sweep.l1) if v)
    if not spec.sweep.is_empty() and trials > limits.max_trials:
        problems.append(
            _problem(
                ["sweep"],
                f"the sweep has {trials} trials, more than the limit of "
                f"{limits.max_trials} (PLASTICITY_MAX_TRIALS)",
            )
        )
    if spec.task.emnist_dir is not None:
        problems.append(
            _problem(
                ["task", "emnist_dir"],
                "server paths are not accepted over the API; the server reads EMNIST from "
                "PLASTICITY_EMNIST_DIR",
            )
        )
    elif spec.task.dataset == "emnist-balanced" and not os.environ.get("PLASTICITY_EMNIST_DIR"):
        problems.append(
            _problem(
                ["task", "dataset"],
                "EMNIST is not configured on this server (PLASTICITY_EMNIST_DIR is unset)",
            )
        )
    problems.extend(_term_problems(spec))
    return problems


def _term_problems(spec: DiscoverySpec) -> list[dict[str, Any]]:
    """What the spec's rule family cannot run: unknown feedforward term ids (rules.terms), or for the
    recurrent family (whose term ids the spec already resolved) a network or data set its trainer cannot use."""
    if spec.family == "recurrent":
        return _recurrent_problems(spec)
    if spec.family in ("unsupervised", "reward"):   # terms resolved and checked by their specs (pca, reservoir-motor)
        return []
    from rules.terms import TERMS

    return [
        _problem(["rule", "terms", i], f"unknown term {t!r}; known terms: {', '.join(sorted(TERMS))}")
        for i, t in enumerate(spec.rule.terms or [])
        if t not in TERMS
    ]


def _recurrent_problems(spec: DiscoverySpec) -> list[dict[str, Any]]:
    """A recurrent fixed-point job learns N recurrent tanh units between 784 inputs and 10 classes of mnist5k."""
    from discovery.recurrent.network import INPUT_DIM, N_CLASSES

    problems = []
    w = spec.network.widths
    if len(w) != 3 or w[0] != INPUT_DIM or w[2] != N_CLASSES:
        problems.append(_problem(["network", "widths"], f"task.kind {spec.task.kind!r} needs network.widths = "
                                 f"[{INPUT_DIM}, N, {N_CLASSES}] (N recurrent tanh units), got {w}"))
    if spec.task.dataset != "mnist5k":
        problems.append(_problem(["task", "dataset"], f"task.kind {spec.task.kind!r} runs on mnist5k only, "
                                 f"got {spec.task.dataset!r}"))
    return problems


class BodySizeLimit:
    """ASGI middleware: answer 413 to a request whose body exceeds ``max_bytes`` (declared or streamed);
    ``paths`` gives other limits to requests whose path starts with a key (data set uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: dict[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths or {}

    def _limit(self, path: str) -> tuple[int, str]:
        for prefix, limit in self.paths.items():
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.max_bytes, "PLASTICITY_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        max_bytes, variable = self._limit(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._reject(send, max_bytes, variable)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await self._reject(send, max_bytes, variable)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, max_bytes: int, variable: str) -> None:
        detail = (
            f'{{"detail": "request body too large: the limit is {max_bytes} bytes '
            f'({variable})"}}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(detail)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": detail})
