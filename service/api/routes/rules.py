"""``/api/rules``: list (with filters), inspect, export, and add a hand-written rule.

``POST /api/rules`` answers **201** with the new rule, or **200** with the already stored rule (same content
hash: the same ΔW up to the canonical form of ``rules.Rule``); the body's ``created`` tells which.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from discovery.spec import DatasetName, FeedbackMode
from service.api.deps import IdPath, OwnerDep, SessionDep, get_or_404
from service.api.errors import errors
from service.api.readpath import Checkpoint, serve_read
from service.api.schemas import ExportFormatName, RuleCreate, RuleOrigin, RuleOut
from service.db.models import ORIGIN_USER, Rule
from service.db.repositories import rules as rule_repo
from service.db.repositories.rules import upsert_rule
from service.rulebook import InvalidRule, parse_rule, terms_catalog

router = APIRouter(prefix="/api/rules", tags=["rules"])

Feedback = Annotated[FeedbackMode | None, Query(description="bp, fa, dfa or sign")]


_PAGING = {
    "X-Total-Count": {"description": "the number of matches", "schema": {"type": "integer"}},
    "X-Next-After": {"description": "the cursor of the next page (absent on the last page)",
                     "schema": {"type": "integer"}},
    "Link": {"description": 'the next page: `<url>; rel="next"` (absent on the last page)', "schema": {"type": "string"}},
    "ETag": {"description": "send it back in If-None-Match: 304 when nothing changed", "schema": {"type": "string"}},
}


@router.get("", response_model=list[RuleOut],
            responses={200: {"description": "the rules", "headers": _PAGING},
                       304: {"description": "not modified (If-None-Match named the current ETag)"},
                       **errors(422, 503)})
async def list_rules(
    request: Request,
    feedback: Feedback = None,
    depth: Annotated[int | None, Query(ge=1, le=1000, description="weight layers L")] = None,
    dataset: Annotated[DatasetName | None, Query()] = None,
    term: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_]+$",
                                      description="a term id, e.g. F9")] = None,
    origin: Annotated[RuleOrigin | None, Query(description="discovered, user or inferred")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9, description="rows to skip (prefer `after`)")] = 0,
    after: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="keyset cursor: only rules with a smaller "
                                       "id (the X-Next-After of the previous page)")] = None,
) -> Response:
    """Stored rules, newest first; ``X-Total-Count`` gives the number of matches, ``X-Next-After`` and ``Link``
    the next page (keyset: ``after=<id>``; ``offset`` still works). Each rule is its row's stored answer
    (``rules.read_json``, service.db.read_fields): no per-row work."""
    filters = rule_repo.RuleFilters(feedback=feedback, depth=depth, dataset=dataset, term=term, origin=origin)

    def build(session: Session, checkpoint: Checkpoint) -> Response:
        texts, total, cursor = rule_repo.list_rule_json(session, filters, limit=limit, offset=offset, after=after)
        session.close()   # the connection goes back to the pool before the answer is assembled
        checkpoint()
        headers = {"X-Total-Count": str(total)}
        if cursor is not None:
            params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("after", "offset")]
            headers["X-Next-After"] = str(cursor)
            headers["Link"] = f'<{request.url.path}?{urlencode([*params, ("after", cursor)])}>; rel="next"'
        return Response(("[" + ",".join(texts) + "]").encode(), media_type="application/json", headers=headers)

    return await serve_read(request, build)


@router.get("/terms", tags=["rules"], responses=errors(503))
def list_terms() -> list[dict]:
    """The library of rule terms (F0..F9, hebb, ...) with their expressions."""
    return terms_catalog()


@router.get("/{rule_id}", response_model=RuleOut,
            responses={304: {"description": "not modified (If-None-Match named the current ETag)"},
                       **errors(404, 422, 503, e404="no such rule")})
async def get_rule(rule_id: IdPath, request: Request) -> Response:
    """Expression, LaTeX, coefficients, terms, origin, hash, spec, provenance and scores of one rule."""
    def build(session: Session, _checkpoint: Checkpoint) -> Response:
        text = rule_repo.stored_answer(session, rule_id)
        if text is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"rule {rule_id} does not exist")
        return Response(text.encode(), media_type="application/json")

    return await serve_read(request, build)


def _rule_language_object(rule: Rule) -> object:
    """The stored rule as a ``rules`` object of its family (the ``family`` column)."""
    from rules.recurrent import RecurrentRule
    from rules.rule import Rule as FeedforwardRule

    family = RecurrentRule if rule.family == RecurrentRule.FAMILY else FeedforwardRule
    return family({str(k): float(v) for k, v in (rule.coefficients or {}).items()}, rule.name)


def _provenance(rule: Rule) -> object:
    """What an export records about where the rule came from."""
    from rules.export import Provenance, spec_summary

    return Provenance(
        rule_id=rule.id, name=rule.name, hash=rule.hash, origin=rule.origin, job_id=rule.job_id, seed=rule.seed,
        spec_summary=spec_summary(rule.spec), code_version=rule.code_version, created_at=rule.created_at.isoformat(),
    )


@router.get(
    "/{rule_id}/export",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "the source file (Content-Disposition names it)", "content": {
            "text/x-python": {}, "application/x-latex": {}, "application/json": {}}},
        **errors(404, 409, 422, 503, e404="no such rule",
                 e409="the stored rule cannot be exported (e.g. a non-finite coefficient)"),
    },
)
def export_rule(
    rule_id: IdPath,
    session: SessionDep,
    format: Annotated[ExportFormatName, Query(description="torch, numpy, jax, latex, sympy or json")] = "torch",
) -> PlainTextResponse:
    """Self-contained source defining ``delta_w(x, y, e, e_pre, W)`` (recurrent rules: ``delta_w(r, delta, G, W,
    u=None)``), batched over a leading dimension, printed from the rule's sympy expression; LaTeX or JSON too."""
    from rules.export import ExportError
    from rules.export import export_rule as render

    rule = get_or_404(session, Rule, rule_id, "rule")
    try:
        exported = render(_rule_language_object(rule), format, _provenance(rule))  # type: ignore[arg-type]
    except (ExportError, ValueError, TypeError) as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"rule {rule_id} cannot be exported as {format}: {exc}"
        ) from exc
    return PlainTextResponse(
        exported.text,
        media_type=exported.media_type,
        headers={"Content-Disposition": f'attachment; filename="{exported.filename}"'},
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RuleOut,
    responses={
        200: {"model": RuleOut, "description": "the same rule was already stored"},
        **errors(400, 401, 413, 422, 503,
                 e422="invalid expression: the parser's message, position and token (grammar and shapes are "
                      "meaning, not shape: see docs/http-api.md)"),
    },
)
def create_rule(body: RuleCreate, session: SessionDep, who: OwnerDep) -> RuleOut:
    """Store a rule from an expression in the rule language (docs/http-api.md, "Rule expressions"); parsed without eval."""
    try:
        record = parse_rule(body.expression)
    except InvalidRule as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.to_dict(body.expression)
        ) from exc
    except ImportError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the rule language is not available: {exc}"
        ) from exc
    rule, created = upsert_rule(
        session,
        record,
        name=body.name,
        origin=ORIGIN_USER,
        provenance={"source": "api", "submitted_expression": body.expression, "submitted_by": who},
    )
    session.commit()
    out = RuleOut.of(rule, created=created)
    if created:
        return out
    return JSONResponse(status_code=status.HTTP_200_OK, content=out.model_dump(mode="json"))  # type: ignore[return-value]
