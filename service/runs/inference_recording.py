"""What a finished inference job leaves in the database (docs/inference.md): the selected rule and every rule of
its front, stored once per content hash with ``origin = "inferred"`` and a provenance that names the recording
and its checksum, the bootstrap intervals, the held-out explained variance, the warnings and the recorded against
simulated trajectories that the rule page plots; one ``front_points`` row per support."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from discovery.inference.fit import InferenceResult
from discovery.results import jsonable
from service.db.models import ORIGIN_INFERRED, Job, Rule
from service.db.repositories.events import add_event
from service.db.repositories.jobs import add_front_point, link_job_rule
from service.db.repositories.rules import upsert_rule
from service.rulebook import record_from_result


def _recording(job: Job) -> dict[str, Any]:
    ref = dict((job.spec or {}).get("recording") or {})
    ref.pop("dir", None)
    return ref


def record_inference_result(s: Session, job: Job, result: InferenceResult) -> Rule:
    """Store the front's rules and the selected rule; the selected rule's row."""
    recording = _recording(job)
    base = {"job_id": job.id, "goal": job.goal, "recording": recording, "method": result.provenance.get("method"),
            "time_unit": result.provenance.get("time_unit")}
    name = f"inferred from recording {recording.get('id')} ({recording.get('name')})"
    row, created = upsert_rule(
        s, record_from_result(result.rule), name=name, origin=ORIGIN_INFERRED, job_id=job.id, seed=None,
        provenance={**base, "heldout_explained_variance": result.heldout_explained_variance,
                    "heldout_ci95": result.heldout_ci95, "heldout_units": result.heldout_units,
                    "coefficients": jsonable({k: v.model_dump() for k, v in result.coefficients.items()}),
                    "warnings": result.warnings, "recording_summary": result.provenance.get("recording"),
                    "trajectories": jsonable(result.diagnostics.get("trajectories")),
                    "wall_time_s": result.wall_time_s})
    link_job_rule(s, job, row)   # the selected rule first: its provenance carries the evidence
    for position, point in enumerate(result.front):
        point_row, _ = upsert_rule(
            s, record_from_result(point.rule), name=f"{name} ({point.n_terms} terms)", origin=ORIGIN_INFERRED,
            job_id=job.id, provenance={**base, "heldout_explained_variance": point.heldout_explained_variance,
                                       "heldout_ci95": point.heldout_ci95, "coefficients_raw": point.theta})
        link_job_rule(s, job, point_row)
        add_front_point(s, job, point, position=position, rule=point_row)
    add_event(s, "rule", ("stored inferred rule" if created else "the rule was already stored as rule") + f" {row.id}",
              job_id=job.id, data={"rule_id": row.id, "hash": row.hash})
    return row


def inference_summary(result: InferenceResult, rule: Rule) -> dict[str, Any]:
    """What the job row keeps (``jobs.result``): the rule id, θ, intervals, held-out EV, warnings."""
    return jsonable({"rule_id": rule.id, "theta": result.theta, "names": result.names,
                     "coefficients": {k: v.model_dump() for k, v in result.coefficients.items()},
                     "heldout_explained_variance": result.heldout_explained_variance,
                     "heldout_accuracy": result.heldout_explained_variance, "heldout_ci95": result.heldout_ci95,
                     "heldout_units": result.heldout_units, "warnings": result.warnings,
                     "wall_time_s": result.wall_time_s})
