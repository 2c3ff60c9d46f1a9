"""What a finished job or benchmark leaves in the database (the dispatcher's domain work, without Ray or threads).

A job's result arrives as :class:`workers.progress.JobResult` (the engine's DiscoveryResult plus a sweep's
trials): every trial becomes a ``trials`` row, every rule of an open search's front is stored (once per content
hash) with its own ``front_points`` row, and the discovered rule is stored with its provenance and family; the
job keeps the rest of the result (curves, held-out score) as its summary. A benchmark's result arrives as
:class:`discovery.benchmarks.suite.BenchmarkReport`: one ``benchmark_scores`` row per entry.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from discovery.benchmarks.report import BenchmarkReport
from discovery.results import RuleData, jsonable
from discovery.spec import DiscoverySpec
from service.db.models import ORIGIN_DISCOVERED, SUCCEEDED, BenchmarkRun, Job, Rule, Trial
from service.db.repositories.benchmarks import add_scores, create_run
from service.db.repositories.events import add_event
from service.db.repositories.jobs import add_front_point, link_job_rule
from service.db.repositories.rules import upsert_rule
from service.rulebook import record_from_result
from service.uploads import dataset_provenance
from workers.progress import JobResult

#: the result fields of a single run kept as the metrics of its one trial row
SINGLE_RUN_METRICS = frozenset({"diverged_episodes", "skipped_steps", "wall_time_s", "device", "heldout_episodes"})


def rule_name(job: Job, spec: DiscoverySpec) -> str:
    """The display name of a job's rule: job id, feedback, data set and depth."""
    return f"job {job.id} · {spec.network.feedback} · {spec.task.dataset} · depth {max(len(spec.network.widths) - 1, 0)}"


def _store_trials(s: Session, job: Job, spec: DiscoverySpec, result: JobResult) -> None:
    """One ``trials`` row per sweep trial, or one for a single run (its seed, lr and l1)."""
    if result.trials:
        for i, trial in enumerate(result.trials):
            s.add(Trial(job_id=job.id, index=trial.index if trial.index is not None else i,
                        status=str(trial.status or SUCCEEDED)[:16], config=jsonable(trial.config),
                        heldout_accuracy=jsonable(trial.heldout_accuracy),
                        heldout_ci95=jsonable(trial.heldout_ci95), rule=jsonable(trial.rule),
                        metrics=jsonable(trial.metrics())))
        return
    meta = spec.meta
    s.add(Trial(job_id=job.id, index=0, status=SUCCEEDED, config={"seed": meta.seed, "lr": meta.lr, "l1": meta.l1},
                heldout_accuracy=jsonable(result.heldout_accuracy), heldout_ci95=jsonable(result.heldout_ci95),
                rule=jsonable(result.rule), metrics=jsonable(result.model_dump(include=set(SINGLE_RUN_METRICS)))))


def _metrics(rule: object) -> dict[str, object]:
    """A family's own metrics of a rule (the unsupervised family: subspace error, reconstruction), when it has any."""
    metrics = getattr(rule, "metrics", None)
    return {"metrics": jsonable(metrics)} if isinstance(metrics, dict) else {}


def _provenance(job: Job, rule: RuleData, **fields: object) -> dict[str, object]:
    """Where a stored rule came from: its job, the goal, ``fields``, the data set and the family's metrics."""
    return {"job_id": job.id, "goal": job.goal, **fields, **dataset_provenance(job.spec), **_metrics(rule)}


def _store_front(s: Session, job: Job, spec: DiscoverySpec, result: JobResult) -> list[int]:
    """Every rule of the front (deduplicated by hash), linked to the job, with its own front row."""
    name = rule_name(job, spec)
    ids = []
    for position, point in enumerate(result.front):
        row, _ = upsert_rule(s, record_from_result(point.rule), name=f"{name} ({point.n_terms} terms)",
                             origin=ORIGIN_DISCOVERED, spec=job.spec, seed=spec.meta.seed, job_id=job.id,
                             provenance=_provenance(job, point.rule, coefficients_raw=point.theta))
        link_job_rule(s, job, row)
        add_front_point(s, job, point, position=position, rule=row)
        ids.append(row.id)
    return ids


def _store_rule(s: Session, job: Job, spec: DiscoverySpec, result: JobResult) -> Rule:
    """Store (or find) the job's rule with its provenance and link it to the job."""
    seed = result.best_seed()
    row, created = upsert_rule(
        s, record_from_result(result.rule), name=rule_name(job, spec), origin=ORIGIN_DISCOVERED, spec=job.spec,
        seed=seed if seed is not None else spec.meta.seed, job_id=job.id,
        provenance=_provenance(job, result.rule, best_trial=result.best_trial,
                               heldout_accuracy=result.heldout_accuracy, heldout_ci95=result.heldout_ci95,
                               heldout_episodes=result.heldout_episodes, wall_time_s=result.wall_time_s,
                               device=result.device, coefficients_raw=result.rule.coefficients_raw),
    )
    link_job_rule(s, job, row)
    add_event(s, "rule", ("stored rule" if created else "the rule was already stored as rule") + f" {row.id}",
              job_id=job.id, data={"rule_id": row.id, "hash": row.hash})
    return row


def record_job_result(s: Session, job: Job, result: JobResult) -> Rule:
    """Store the trials, the front (rules and rows) and the rule of a succeeded job; the stored rule."""
    spec = DiscoverySpec.model_validate(job.spec)   # the job's stored spec, read once
    _store_trials(s, job, spec, result)
    if result.front:
        ids = _store_front(s, job, spec, result)
        add_event(s, "front", f"stored the front: rules {', '.join(map(str, ids))}", job_id=job.id,
                  data={"rule_ids": ids})
    return _store_rule(s, job, spec, result)


def job_summary(result: JobResult) -> dict[str, object]:
    """What the job row keeps of its result (``jobs.result``): everything but the trials and the front, which
    have rows of their own."""
    return jsonable(result.model_dump(mode="json", exclude={"trials", "front"}))


def queue_benchmarks(s: Session, job: Job, rule: Rule, suites: list[str], *, tiny: bool) -> None:
    """Queue a benchmark of a newly discovered rule on each of ``suites`` (``settings.auto_benchmark_suites``)."""
    for suite in suites:
        create_run(s, suite=suite, rule_id=rule.id, expression=None, owner=job.owner, tiny=tiny, seed=0,
                   reason=f"automatic benchmark of rule {rule.id} from job {job.id}")


def record_benchmark_result(s: Session, run: BenchmarkRun, report: BenchmarkReport) -> None:
    """One ``benchmark_scores`` row per entry of the report."""
    add_scores(s, run, report)
