"""A Python client of the plasticity REST API (httpx), typed with the API's own models (``service.api.schemas``).

From a notebook::

    from service.client.http import Client, frame
    c = Client("http://127.0.0.1:8000", token)          # token: PLASTICITY_API_TOKENS or DATA_DIR/api_token
    job = c.wait(c.submit(goal="find a plasticity rule for depth-2 online learning under feedback alignment, tiny"))
    rule = c.rule(job.rule_ids[0])                       # a RuleOut: expression, latex, coefficients, provenance
    source = c.export(rule.id, "torch")                  # self-contained delta_w(x, y, e, e_pre, W) + nn.Module
    run = c.benchmark(rule.id, "fa5-online", tiny=True)  # waits; a BenchmarkOut with per-learner scores
    frame(c.leaderboard("fa5-online").entries)           # a pandas DataFrame (pandas optional)

Every HTTP failure raises an :class:`ApiError` subclass carrying the server's reason in one line:
:class:`Unauthorized` (401), :class:`NotFound` (404), :class:`Conflict` (409), :class:`InvalidRequest` (422, with
``field``), :class:`RateLimited` (429); :class:`ConnectionFailed` when the server cannot be reached,
:class:`RunFailed` when a waited-for job or benchmark ends failed or cancelled, :class:`WaitTimeout` on timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from service.api.schemas import BenchmarkOut, DatasetOut, HealthOut, JobOut, LeaderboardOut, RuleOut

DEFAULT_SERVER = "http://127.0.0.1:8000"
FINAL = ("succeeded", "failed", "cancelled")
RULE_FILTERS = ("feedback", "depth", "dataset", "term", "origin", "limit", "offset", "after")
EXPORT_FORMATS = ("torch", "numpy", "jax", "latex", "sympy", "json")

M = TypeVar("M", bound=BaseModel)


# --- errors ------------------------------------------------------------------------------------------------------
class PlasticityError(Exception):
    """Base class of the client's errors; ``str(exc)`` is one line."""


class ConnectionFailed(PlasticityError):
    """The server could not be reached (refused, timed out, DNS)."""


class ApiError(PlasticityError):
    """An HTTP error answer: ``status``, ``reason`` (the server's detail as one line) and the raw ``detail``."""

    def __init__(self, status: int, reason: str, detail: Any = None, method: str = "", path: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.method = method
        self.path = path


class Unauthorized(ApiError):
    """401: a write without a valid bearer token."""


class NotFound(ApiError):
    """404: no such job, rule, benchmark or suite."""


class Conflict(ApiError):
    """409: e.g. cancelling a run that already finished."""


class InvalidRequest(ApiError):
    """422: the request was understood but refused; ``field`` names the offending field when the server says."""

    @property
    def field(self) -> str | None:
        return field_of(self.detail)


class RateLimited(ApiError):
    """429: too many active jobs or benchmarks for this token."""


class RunFailed(PlasticityError):
    """A job or benchmark that was waited for ended ``failed`` or ``cancelled``; ``run`` is its last state."""

    def __init__(self, message: str, run: BaseModel) -> None:
        super().__init__(message)
        self.run = run


class WaitTimeout(PlasticityError):
    """``wait`` gave up before the run finished; ``run`` is its last state."""

    def __init__(self, message: str, run: BaseModel) -> None:
        super().__init__(message)
        self.run = run


ERRORS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidRequest, 429: RateLimited,
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _loc_text(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "(request)"


def field_of(detail: Any) -> str | None:
    """The field a 422 detail names: ``{"field": ...}``, or the first ``loc`` of a validation error list."""
    if isinstance(detail, Mapping) and detail.get("field"):
        return str(detail["field"])
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping) and "loc" in detail[0]:
        return _loc_text(detail[0]["loc"])
    return None


def reason_of(detail: Any) -> str:
    """The server's ``detail`` as one readable line (strings, the rule parser's dict, goal errors, error lists)."""
    if isinstance(detail, str):
        return _one_line(detail)
    if isinstance(detail, list):
        items = []
        for item in detail:
            if isinstance(item, Mapping) and "msg" in item:
                items.append(f"{_loc_text(item.get('loc') or ())}: {item['msg']}")
            else:
                items.append(reason_of(item))
        return _one_line("; ".join(items))
    if isinstance(detail, Mapping):
        text = str(detail.get("message") or detail.get("detail") or detail)
        if detail.get("field"):
            text = f"{detail['field']}: {text}"
        if detail.get("position") is not None and "position" not in text:
            text += f" (position {detail['position']}"
            text += f", token {detail['token']!r})" if detail.get("token") else ")"
        if detail.get("unknown_words"):
            text += f"; not understood: {', '.join(map(str, detail['unknown_words']))}"
        return _one_line(text)
    return _one_line(str(detail))


def error_for(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` subclass for an error response, with the server's reason."""
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
    except ValueError:
        detail = response.text or response.reason_phrase
    cls = ERRORS.get(response.status_code, ApiError)
    request = response.request
    return cls(response.status_code, reason_of(detail), detail, request.method, request.url.path)


# --- configuration ---------------------------------------------------------------------------------------------------
def default_server() -> str:
    """``PLASTICITY_SERVER`` or http://127.0.0.1:8000."""
    return os.environ.get("PLASTICITY_SERVER", "").strip() or DEFAULT_SERVER


def default_token() -> str | None:
    """The first of ``PLASTICITY_API_TOKENS``, else the token the server generated in its data folder
    (``PLASTICITY_DATA_DIR``, default ./data, file ``api_token``), else None (reads need no token)."""
    tokens = [t.strip() for t in os.environ.get("PLASTICITY_API_TOKENS", "").split(",") if t.strip()]
    if tokens:
        return tokens[0]
    data_dir = Path(os.environ.get("PLASTICITY_DATA_DIR", "").strip() or "./data").expanduser()
    try:
        return (data_dir / "api_token").read_text().strip() or None
    except OSError:
        return None


def frame(rows: Iterable[BaseModel | Mapping[str, Any]]) -> Any:
    """A pandas DataFrame of API models (e.g. ``leaderboard(...).entries`` or ``rules()``); needs pandas."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas ships with the project's environment
        raise ImportError("frame() needs pandas: pip install pandas") from exc
    return pd.DataFrame([r.model_dump() if isinstance(r, BaseModel) else dict(r) for r in rows])


def _id(value: int | BaseModel) -> int:
    return int(value.id) if isinstance(value, BaseModel) else int(value)  # type: ignore[attr-defined]


# --- the client ------------------------------------------------------------------------------------------------------
class Client:
    """The plasticity server at ``url``; ``token`` (needed for writes) defaults to :func:`default_token`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or default_server()).rstrip("/")
        self.token = token if token is not None else default_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)

    # --- plumbing --------------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'set' if self.token else None})"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; raises :class:`ConnectionFailed` or the :class:`ApiError` for an error status."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach the server at {self.url}: {_one_line(str(exc)) or type(exc).__name__}"
                                   ) from exc
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def _get(self, model: type[M], path: str, **params: Any) -> M:
        return model.model_validate(self.request("GET", path, params=_params(params)).json())

    def _list(self, model: type[M], path: str, **params: Any) -> list[M]:
        return [model.model_validate(x) for x in self.request("GET", path, params=_params(params)).json()]

    def _post(self, model: type[M], path: str, body: Any = None) -> M:
        return model.model_validate(self.request("POST", path, json=body).json())

    # --- meta --------------------------------------------------------------------------------------------------------
    def health(self) -> HealthOut:
        """``GET /api/health``."""
        return self._get(HealthOut, "/api/health")

    def suites(self) -> list[dict[str, Any]]:
        """``GET /api/suites``: the named suites with their definitions."""
        return list(self.request("GET", "/api/suites").json())

    # --- jobs --------------------------------------------------------------------------------------------------------
    def submit(self, goal: str | None = None, spec: BaseModel | Mapping[str, Any] | None = None) -> JobOut:
        """Queue a discovery job from a plain-language ``goal`` or a full ``spec`` (a DiscoverySpec or its dict)."""
        if (goal is None) == (spec is None):
            raise ValueError("give goal=... or spec=... (exactly one)")
        body = {"goal": goal} if goal is not None else (
            spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec))  # type: ignore[arg-type]
        return self._post(JobOut, "/api/jobs", body)

    def job(self, job: int | JobOut, events: bool = False) -> JobOut:
        """``GET /api/jobs/{id}``."""
        return self._get(JobOut, f"/api/jobs/{_id(job)}", events=events or None)

    def jobs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> list[JobOut]:
        """``GET /api/jobs``, newest first."""
        return self._list(JobOut, "/api/jobs", status=status, limit=limit, offset=offset)

    def cancel(self, job: int | JobOut) -> JobOut:
        """``POST /api/jobs/{id}/cancel`` (:class:`Conflict` once it finished)."""
        return self._post(JobOut, f"/api/jobs/{_id(job)}/cancel")

    def wait(
        self,
        job: int | JobOut,
        progress: bool = True,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        check: bool = True,
        console: Any = None,
    ) -> JobOut:
        """Poll the job until it finishes, with a rich progress bar (episodes, meta-accuracy, θ) when ``progress``.

        Returns the final job; :class:`RunFailed` when it failed or was cancelled (unless ``check=False``),
        :class:`WaitTimeout` after ``timeout`` seconds."""
        job_id = _id(job)

        def describe(j: JobOut) -> tuple[int | None, int | None, str]:
            p = j.progress
            if p is None:
                return None, None, j.status
            acc = f" acc {p.meta_accuracy:.3f}" if p.meta_accuracy is not None else ""
            theta = " ".join(f"{k}={v:+.2e}" for k, v in list(p.theta.items())[:3] if v is not None)
            return p.episode, p.total, f"{j.status}{acc} {theta}".strip()

        final = self._poll(lambda: self.job(job_id), describe, f"job {job_id}", progress, timeout, poll, console)
        if check and final.status != "succeeded":
            raise RunFailed(f"job {job_id} {final.status}" + (f": {_one_line(final.error)}" if final.error else ""),
                            final)
        return final

    # --- rules -------------------------------------------------------------------------------------------------------
    def rules(self, **filters: Any) -> list[RuleOut]:
        """``GET /api/rules`` with filters feedback, depth, dataset, term, origin (and limit, offset or the cursor
        ``after``); :meth:`all_rules` pages through all of them."""
        unknown = sorted(set(filters) - set(RULE_FILTERS))
        if unknown:
            raise TypeError(f"unknown rule filter(s) {', '.join(unknown)}; use {', '.join(RULE_FILTERS)}")
        return self._list(RuleOut, "/api/rules", **filters)

    def all_rules(self, **filters: Any) -> Iterator[RuleOut]:
        """Every rule matching the filters, newest first, page by page by the server's cursor (``X-Next-After``)."""
        if unknown := sorted(set(filters) - set(RULE_FILTERS) | ({"offset", "after"} & set(filters))):
            raise TypeError(f"not a filter of all_rules: {', '.join(unknown)}")
        params = {"limit": 200, **filters}
        while params.get("after", 0) is not None:
            answer = self.request("GET", "/api/rules", params=_params(params))
            yield from (RuleOut.model_validate(x) for x in answer.json())
            params["after"] = answer.headers.get("X-Next-After")

    def rule(self, rule: int | RuleOut) -> RuleOut:
        """``GET /api/rules/{id}``: expression, LaTeX, coefficients, provenance, scores."""
        return self._get(RuleOut, f"/api/rules/{_id(rule)}")

    @staticmethod
    def term_formulas(rule: RuleOut) -> dict[str, str]:
        """term id → its formula in rule syntax (``F9`` → ``y*x.T - y*(y.T*W)``, generated ids like ``T4d4340c6``
        and recurrent / unsupervised terms too); an id no local library knows maps to itself."""
        from service.rulebook import term_formula

        return {k: (term_formula(k) or {}).get("text", k) for k in rule.coefficients}

    def add_rule(self, name: str, expression: str) -> RuleOut:
        """``POST /api/rules``: store a hand-written rule (the stored one when the same rule exists)."""
        return self._post(RuleOut, "/api/rules", {"name": name, "expression": expression})

    def export(self, rule: int | RuleOut, format: str = "torch") -> str:
        """``GET /api/rules/{id}/export``: self-contained torch / numpy / jax / sympy source, LaTeX or JSON."""
        return self.request("GET", f"/api/rules/{_id(rule)}/export", params={"format": format}).text

    # --- data sets -------------------------------------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, name: str | None = None) -> DatasetOut:
        """``POST /api/datasets``: upload a ``.npz`` (arrays X, y) or ``.nwb`` file; a job then names it
        ``"upload:<id>"`` (or a goal "... on my dataset <name>")."""
        p = Path(path)
        with p.open("rb") as fh:
            response = self.request("POST", "/api/datasets", files={"file": (p.name, fh)},
                                    data={"name": name} if name else None)
        return DatasetOut.model_validate(response.json())

    def datasets(self, limit: int = 100, offset: int = 0) -> list[DatasetOut]:
        """``GET /api/datasets``: N, D, classes, per-class counts, owner and checksum of each."""
        return self._list(DatasetOut, "/api/datasets", limit=limit, offset=offset)

    def dataset(self, dataset: int | DatasetOut) -> DatasetOut:
        """``GET /api/datasets/{id}``."""
        return self._get(DatasetOut, f"/api/datasets/{_id(dataset)}")

    def delete_dataset(self, dataset: int | DatasetOut) -> None:
        """``DELETE /api/datasets/{id}`` (its owner only; :class:`Conflict` while a queued or running job uses it)."""
        self.request("DELETE", f"/api/datasets/{_id(dataset)}")

    # --- benchmarks --------------------------------------------------------------------------------------------------
    def benchmark(
        self,
        rule: int | RuleOut | str | None,
        suite: str,
        wait: bool = True,
        *,
        tiny: bool = False,
        seed: int = 0,
        retune: bool = False,
        progress: bool = False,
        timeout: float | None = None,
        check: bool = True,
        console: Any = None,
    ) -> BenchmarkOut:
        """Run ``suite`` for a stored rule (id or RuleOut), an expression (str), or the baselines alone (None).

        The baselines come from the suite's cache unless ``retune``. ``wait``: poll until it finishes (see
        :meth:`wait_benchmark`), else return the queued run."""
        body: dict[str, Any] = {"suite": suite, "tiny": tiny, "seed": seed, "retune": retune}
        if isinstance(rule, str):
            body["expression"] = rule
        elif rule is not None:
            body["rule_id"] = _id(rule)
        run = self._post(BenchmarkOut, "/api/benchmarks", body)
        if not wait:
            return run
        return self.wait_benchmark(run, progress, timeout=timeout, check=check, console=console)

    def benchmark_run(self, run: int | BenchmarkOut) -> BenchmarkOut:
        """``GET /api/benchmarks/{id}``."""
        return self._get(BenchmarkOut, f"/api/benchmarks/{_id(run)}")

    def benchmarks(self, limit: int = 50, offset: int = 0) -> list[BenchmarkOut]:
        """``GET /api/benchmarks``, newest first."""
        return self._list(BenchmarkOut, "/api/benchmarks", limit=limit, offset=offset)

    def cancel_benchmark(self, run: int | BenchmarkOut) -> BenchmarkOut:
        """``POST /api/benchmarks/{id}/cancel`` (:class:`Conflict` once it finished)."""
        return self._post(BenchmarkOut, f"/api/benchmarks/{_id(run)}/cancel")

    def wait_benchmark(
        self,
        run: int | BenchmarkOut,
        progress: bool = False,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        check: bool = True,
        console: Any = None,
    ) -> BenchmarkOut:
        """Poll a benchmark run until it finishes; :class:`RunFailed` when it failed or was cancelled."""
        run_id = _id(run)

        def describe(b: BenchmarkOut) -> tuple[int | None, int | None, str]:
            p = b.progress  # the bar runs over the whole benchmark: per mille of its work
            if p is None:
                return None, None, b.status
            left = f", ~{p.remaining:.0f} s left" if p.remaining is not None else ""
            what = (f"{p.phase} {p.learner or ''} ({p.learner_index}/{p.learners}"
                    + (f", {p.episode}/{p.total}" if p.total else "") + f"{left})")
            return round(1000 * p.fraction), 1000, f"{b.status} {what}"

        final = self._poll(lambda: self.benchmark_run(run_id), describe, f"benchmark {run_id}", progress, timeout,
                           poll, console)
        if check and final.status != "succeeded":
            raise RunFailed(f"benchmark {run_id} {final.status}"
                            + (f": {_one_line(final.error)}" if final.error else ""), final)
        return final

    def leaderboard(self, suite: str | None = None) -> LeaderboardOut:
        """``GET /api/leaderboard``: ranked rules and baselines of ``suite`` (default: the latest benchmarked)."""
        return self._get(LeaderboardOut, "/api/leaderboard", suite=suite)

    # --- polling -----------------------------------------------------------------------------------------------------
    def _poll(
        self,
        fetch: Callable[[], M],
        describe: Callable[[M], tuple[int | None, int | None, str]],
        label: str,
        progress: bool,
        timeout: float | None,
        poll: float,
        console: Any,
    ) -> M:
        """Fetch until the run's status is final, updating a progress bar; WaitTimeout after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _bar(label, progress, console) as update:
            while True:
                current = fetch()
                done, total, info = describe(current)
                update(done, total, info)
                if current.status in FINAL:  # type: ignore[attr-defined]
                    return current
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"{label} still {current.status} after {timeout:g} s", current)  # type: ignore[attr-defined]
                time.sleep(poll)


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


@contextmanager
def _bar(label: str, enabled: bool, console: Any) -> Iterator[Callable[[int | None, int | None, str], None]]:
    """A rich progress bar (on stderr unless ``console`` is given) yielding ``update(done, total, info)``."""
    if not enabled:
        yield lambda done, total, info: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True)) as bar:
        task = bar.add_task(label, total=None, info="")

        def update(done: int | None, total: int | None, info: str) -> None:
            bar.update(task, completed=done or 0, total=total, info=info)

        yield update


__all__ = ["ApiError", "Client", "Conflict", "ConnectionFailed", "InvalidRequest", "NotFound", "PlasticityError",
           "RateLimited", "RunFailed", "Unauthorized", "WaitTimeout", "default_server", "default_token", "frame",
           "reason_of"]
