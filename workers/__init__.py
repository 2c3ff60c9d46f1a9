"""Ray workers: discovery jobs (one actor each, or a Ray Tune sweep of trials) and benchmark jobs.

The jobs meta-learn θ of ΔW_ℓ = Σ_r θ_r F^r_ℓ (docs/science.md) through ``discovery.discover`` and score rules through
``discovery.benchmarks.registry.run_suite``; this package only schedules, watches and cancels them. Public API: see
:mod:`workers.ray_jobs` (re-exported here) and :func:`workers.runtime.ensure_ray`.
"""

from workers.ray_jobs import (
    JobHandle,
    JobState,
    JobStatus,
    cancel,
    poll,
    spec_resources,
    submit_benchmark,
    submit_discovery,
    wait,
)
from workers.runtime import ensure_ray, ray_info, shutdown_ray

__all__ = [
    "JobHandle",
    "JobState",
    "JobStatus",
    "cancel",
    "ensure_ray",
    "poll",
    "ray_info",
    "shutdown_ray",
    "spec_resources",
    "submit_benchmark",
    "submit_discovery",
    "wait",
]
