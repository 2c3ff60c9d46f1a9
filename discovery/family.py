"""The rule-family contract: what the engine, the search, the goal parser and the service need from a family of
plasticity rules (feedforward ΔW_ℓ, recurrent fixed-point ΔW, unsupervised Hebbian ΔW, ...); docs/architecture.md
"the family contract".

A family names itself and the goal words that select it; gives its primitives (sympy symbols) and its generated
term library (sympy expressions, canonical ids, deduplicated); a meta-trainer of θ (ΔW = Σ_r θ_r F_r) with its
meta-objective and gradient mode (forward, reverse or gradient-free) whose training state saves and loads
(``trainer(spec).save(folder)`` / ``.resume(folder)``, so a search resumes in any family); held-out evaluation; its
baselines and suites; and, when the one open search (discovery.search.generic) runs it, a ``search_backend()``.
``meta_train`` runs a whole DiscoverySpec of the family and returns the shared DiscoveryResult. Only ``name``,
``goal_words``, ``term_library`` and ``meta_train`` are required of an implementation; ``FamilyBase`` gives the
defaults of the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from discovery.results import DiscoveryResult, ProgressEvent

ProgressCallback = Callable[[ProgressEvent], None]


@runtime_checkable
class Family(Protocol):
    """A rule family (see the module docstring). ``goal_words`` are the lower-case words or phrases that select
    the family in a goal (discovery.goal)."""

    name: str
    goal_words: tuple[str, ...]
    #: how ``meta_train`` differentiates the meta-objective: "forward", "reverse" or "gradient-free"
    gradient_mode: str
    #: the meta-objective in words (what θ minimizes)
    meta_objective: str

    def primitives(self) -> Mapping[str, Any]:
        """Name → sympy symbol of the quantities the family's terms are built of."""
        ...

    def trainer(self, spec: Any, stream: int = 0) -> Any:
        """A meta-trainer of θ for a spec of this family (no search): ``step()``, ``run(...)``, ``theta_dict()``,
        and its training state's ``save(folder)`` / ``resume(folder)`` (discovery.feedforward.checkpoint)."""
        ...

    def search_backend(self) -> Any:
        """The family's side of the one open search (discovery.search.generic.SearchBackend), or None when that
        backend is built per spec (unsupervised, reward: ``meta_train`` builds it and runs the generic search)."""
        ...

    def tiny_spec(self) -> Any:
        """The smallest DiscoverySpec of this family (smoke tests, ``--tiny``)."""
        ...

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
    """Defaults for the optional members of :class:`Family`: the registered suites whose ``rule_family`` is this
    family (evaluate runs one of them), no baselines, no primitives, no trainer, no generic search; the tiny spec
    is the goal "<first goal word>, tiny"."""

    name: str = ""
    goal_words: tuple[str, ...] = ()
    gradient_mode: str = "reverse"
    meta_objective: str = ""

    def primitives(self) -> Mapping[str, Any]:
        return {}

    def trainer(self, spec: Any, stream: int = 0) -> Any:
        raise NotImplementedError(f"family {self.name!r} exposes no step-wise trainer")

    def search_backend(self) -> Any:
        return None

    def tiny_spec(self) -> Any:
        from discovery.goal import parse_goal

        return parse_goal(f"{self.goal_words[0]}, tiny").spec

    def suites(self) -> list[str]:
        from discovery.benchmarks.registry import SUITES

        return sorted(n for n, s in SUITES.items() if s.rule_family == self.name)

    def baselines(self) -> list[str]:
        """The baselines of the family's suites (sorted, each once)."""
        from discovery.benchmarks.registry import SUITES

        return sorted({b for n in self.suites() for b in SUITES[n].baselines})

    def evaluate(self, rule: Any, suite: str, seed: int = 0, tiny: bool = False) -> dict[str, Any]:
        """``rule`` scored on ``suite`` beside the suite's baselines (discovery.benchmarks.registry.run_suite)."""
        if suite not in self.suites():
            raise ValueError(f"family {self.name!r} has no suite {suite!r}; suites: {self.suites() or 'none'}")
        from discovery.benchmarks.registry import run_suite

        return run_suite(suite, rule, seed=seed, tiny=tiny)
