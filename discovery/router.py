"""The router: ``discover(spec)`` hands a job spec to its family (discovery.registry: feedforward, recurrent,
unsupervised, reward), whose ``meta_train`` runs the open search (discovery.search.generic) or one fit; a spec with a
task distribution goes to the transfer search. The one entry point the workers and the CLI call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from discovery.registry import get_family
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.spec import DiscoverySpec


def discover(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
             checkpoint_dir: Path | str | None = None,
             should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Meta-train θ for ``spec``, evaluate on held-out data, return the rule and its history; ``progress``
    receives a ProgressEvent per meta-step, ``should_stop`` is polled between steps."""
    if spec.transfer is not None:      # a task distribution (docs/transfer.md)
        from discovery.transfer.search import discover_transfer

        return discover_transfer(spec, progress, checkpoint_dir, should_stop)
    return get_family(spec.family).meta_train(spec, progress, checkpoint_dir=checkpoint_dir,
                                              should_stop=should_stop)
