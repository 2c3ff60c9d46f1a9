"""``/api/rules``: list (with filters), inspect, export, and add a hand-written rule.

``POST /api/rules`` answers **201** with the new rule, or **200** with the already stored rule (same content
hash: the same ΔW up to the canonical form of ``rules.Rule``); the body's ``created`` tells which.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse

from discovery.spec import DatasetName, FeedbackMode
from service.api.deps import IdPath, OwnerDep, SessionDep, get_or_404
from service.api.errors import errors
from service.api.schemas import ExportFormatName, RuleCreate, RuleOrigin, RuleOut
from service.db.models import ORIGIN_USER, Rule
from service.db.repositories import rules as rule_repo
from service.db.repositories.rules import discovery_scores, upsert_rule
from service.rulebook import InvalidRule, parse_rule, terms_catalog

router = APIRouter(prefix="/api/rules", tags=["rules"])

Feedback = Annotated[FeedbackMode | None, Query(description="bp, fa, dfa or sign")]
_TOTAL = {"X-Total-Count": {"description": "the number of matches", "schema": {"type": "integer"}}}


@router.get("", response_model=list[RuleOut],
            responses={200: {"description": "the rules", "headers": _TOTAL}, **errors(422, 503)})
def list_rules(
    session: SessionDep,
    response: Response,
    feedback: Feedback = None,
    depth: Annotated[int | None, Query(ge=1, le=1000, description="weight layers L")] = None,
    dataset: Annotated[DatasetName | None, Query()] = None,
    term: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_]+$",
                                      description="a term id, e.g. F9")] = None,
    origin: Annotated[RuleOrigin | None, Query(description="discovered, user or inferred")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[RuleOut]:
    """Stored rules, newest first; ``X-Total-Count`` gives the number of matches."""
    rules, total = rule_repo.list_rules(session, feedback=feedback, depth=depth, dataset=dataset, term=term, origin=origin,
                              limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [RuleOut.of(r, discovery_scores(session, r)) for r in rules]


@router.get("/terms", tags=["rules"], responses=errors(503))
def list_terms() -> list[dict]:
    """The library of rule terms (F0..F9, hebb, ...) with their expressions."""
    return terms_catalog()


@router.get("/{rule_id}", response_model=RuleOut, responses=errors(404, 422, 503, e404="no such rule"))
def get_rule(rule_id: IdPath, session: SessionDep) -> RuleOut:
    """Expression, LaTeX, coefficients, terms, origin, hash, spec, provenance and scores of one rule."""
    rule = get_or_404(session, Rule, rule_id, "rule")
    return RuleOut.of(rule, discovery_scores(session, rule))


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
    out = RuleOut.of(rule, discovery_scores(session, rule), created=created)
    if created:
        return out
    return JSONResponse(status_code=status.HTTP_200_OK, content=out.model_dump(mode="json"))  # type: ignore[return-value]
