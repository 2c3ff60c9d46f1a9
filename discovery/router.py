"""The router: ``discover(spec)`` hands a job spec to its family's trainer (feed-forward meta-training, open
search, the recurrent fixed-point trainer, or the unsupervised and reward families through ``discovery.registry``). The one
entry point the workers and the CLI call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from discovery.feedforward.trainer import discover_feedforward
from discovery.recurrent.trainer import discover_recurrent
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.search.open_search import discover_search
from discovery.spec import DiscoverySpec


def discover(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
             checkpoint_dir: Path | str | None = None,
             should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Meta-train θ for ``spec``, evaluate on held-out data, return the rule and its history; ``progress``
    receives a ProgressEvent per meta-step, ``should_stop`` is polled between steps."""
    if spec.family in ("unsupervised", "reward"):
        from discovery.registry import get_family

        return get_family(spec.family).meta_train(spec, progress, checkpoint_dir=checkpoint_dir,
                                                     should_stop=should_stop)
    if spec.search.active and spec.task.kind == "fewshot":
        return discover_search(spec, progress, checkpoint_dir, should_stop)
    if spec.task.kind == "fixedpoint-mnist" and spec.search.active:
        from discovery.recurrent.search import discover_recurrent_search

        return discover_recurrent_search(spec, progress, checkpoint_dir, should_stop)
    if spec.task.kind == "fixedpoint-mnist":
        return discover_recurrent(spec, progress, checkpoint_dir, should_stop)
    return discover_feedforward(spec, progress, checkpoint_dir, should_stop)
