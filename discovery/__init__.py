"""The engine: meta-learn the coefficients of symbolic plasticity terms (no web, no database, no Ray).

Public API: ``discover(spec, progress=None, checkpoint_dir=None, should_stop=None) -> DiscoveryResult``
(discovery.router), with the result types in discovery.results. Subpackages by role: ``data`` (datasets, episode
sampler), ``feedforward`` (network, inner loop, meta-trainer, fused kernels), ``search`` (open discovery),
``recurrent`` (fixed-point family), ``reservoir`` (FORCE, RMHL, SUPERTREX), ``baselines`` (BP, FA, DFA, BP+Oja,
predictive coding), ``benchmarks`` (suites, scoring, diagnostics, engine bench).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discovery.results import DiscoveryResult, ProgressEvent

__all__ = ["DiscoveryResult", "ProgressEvent", "discover"]


def __getattr__(name: str) -> Any:
    """Lazy exports, so ``import discovery`` stays cheap: discover, DiscoveryResult, ProgressEvent."""
    if name == "discover":
        from discovery.router import discover

        return discover
    if name in ("DiscoveryResult", "ProgressEvent"):
        from discovery import results

        return getattr(results, name)
    raise AttributeError(name)
