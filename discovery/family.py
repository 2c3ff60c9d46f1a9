"""The rule-family contract: what the engine, the goal parser and the service need from a family of plasticity
rules (feedforward ΔW_ℓ, recurrent fixed-point ΔW, unsupervised Hebbian ΔW, ...).

A family names itself, lists the words that select it in a plain-language goal, exposes its generated term
library, meta-trains θ for a DiscoverySpec (ΔW = Σ_r θ_r F_r) and returns the shared DiscoveryResult; evaluation
suites and baselines are optional (defaults: none). Only ``name``, ``goal_words``, ``term_library`` and
``meta_train`` are required of an implementation; ``FamilyBase`` gives the defaults of the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from discovery.results import DiscoveryResult, ProgressEvent

ProgressCallback = Callable[[ProgressEvent], None]


@runtime_checkable
class Family(Protocol):
    """A rule family (see the module docstring). ``goal_words`` are the lower-case words or phrases that select
    the family in a goal (discovery.goal)."""

    name: str
    goal_words: tuple[str, ...]

    def term_library(self) -> Sequence[Any]:
        """The family's generated term library (objects with at least ``id``, ``name`` and ``expr``)."""
        ...

    def meta_train(self, spec: Any, on_progress: ProgressCallback | None = None, **kwargs: Any) -> DiscoveryResult:
        """Meta-train θ for ``spec`` (a DiscoverySpec of this family); kwargs: checkpoint_dir, should_stop."""
        ...

    def evaluate(self, rule: Any, suite: str, seed: int = 0) -> dict[str, Any]:
        """Score ``rule`` on one of ``suites()`` (a BenchmarkReport-like dict)."""
        ...

    def suites(self) -> list[str]:
        """Names of the evaluation suites of this family."""
        ...

    def baselines(self) -> list[str]:
        """Names of the baseline learners of this family."""
        ...


class FamilyBase:
    """Defaults for the optional members of :class:`Family`: no suites, no baselines, evaluate refuses."""

    name: str = ""
    goal_words: tuple[str, ...] = ()

    def suites(self) -> list[str]:
        return []

    def baselines(self) -> list[str]:
        return []

    def evaluate(self, rule: Any, suite: str, seed: int = 0) -> dict[str, Any]:
        raise ValueError(f"family {self.name!r} has no suite {suite!r}; suites: {self.suites() or 'none'}")
