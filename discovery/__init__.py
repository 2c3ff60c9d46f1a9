"""The engine: meta-learn the coefficients of symbolic plasticity terms (no web, no database, no Ray).

Public API: ``discover(spec, progress=None, checkpoint_dir=None, should_stop=None) -> DiscoveryResult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discovery.meta import DiscoveryResult, ProgressEvent


def discover(spec: Any, progress=None, checkpoint_dir=None, should_stop=None) -> DiscoveryResult:
    """Meta-train θ for a DiscoverySpec (or its dict); see discovery.meta.discover."""
    from discovery.meta import discover as _discover

    return _discover(spec, progress=progress, checkpoint_dir=checkpoint_dir, should_stop=should_stop)


__all__ = ["DiscoveryResult", "ProgressEvent", "discover"]


def __getattr__(name: str):
    if name in ("DiscoveryResult", "ProgressEvent"):
        from discovery import meta

        return getattr(meta, name)
    raise AttributeError(name)
