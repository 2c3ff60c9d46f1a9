"""The family contract (discovery.family): one smoke test run on every registered family (discovery.registry) —
its library (sympy, unique canonical ids), its tiny spec meta-trained end to end, its training state saved and
resumed, its suites and baselines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sympy as sp
import torch

from discovery.family import Family
from discovery.registry import get_family, list_families
from discovery.results import DiscoveryResult

FAMILIES = list_families()


def test_the_three_families_are_registered() -> None:
    assert {"feedforward", "recurrent", "unsupervised"} <= set(FAMILIES)
    with pytest.raises(KeyError, match="registered: "):
        get_family("no-such-family")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_keeps_the_contract(name: str, tmp_path: Path) -> None:
    fam = get_family(name)
    assert isinstance(fam, Family) and fam.name == name and fam.goal_words
    assert fam.gradient_mode in ("forward", "reverse", "gradient-free")
    library = list(fam.term_library())
    ids = [t.id for t in library]
    assert ids and len(set(ids)) == len(ids), "term ids are unique"
    assert all(isinstance(t.expr, sp.Basic) for t in library), "every term is a sympy expression"
    assert all(isinstance(s, sp.Basic) for s in fam.primitives().values())
    for suite in fam.suites():
        from discovery.benchmarks.registry import get_suite

        assert get_suite(suite).rule_family == name
    assert not fam.suites() or fam.baselines(), "a family with suites names its baselines"

    spec = fam.tiny_spec()
    assert spec.family == name
    events: list = []
    result = fam.meta_train(spec, events.append, checkpoint_dir=tmp_path / "run")
    assert isinstance(result, DiscoveryResult) and not result.stopped and events
    assert result.theta and all(math.isfinite(v) for v in result.theta.values())
    assert set(result.theta) <= set(ids), "the rule is built of the family's library"
    assert result.rule.hash and result.rule.expression
    if spec.search.active:
        assert result.front and sum(p.selected for p in result.front) == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_saves_and_resumes_its_training_state(name: str, tmp_path: Path) -> None:
    """One step, save, one more step == load the saved state into a fresh trainer, one step: θ identical."""
    fam = get_family(name)
    backend = fam.search_backend()
    if backend is None:
        pytest.skip(f"the {name} family fits by whole L-BFGS / CMA-ES runs (no step-wise trainer): its search "
                    "resumes at stage granularity (test_every_family_resumes_an_interrupted_search_...)")
    spec = fam.tiny_spec()
    terms = list(spec.rule.terms or [])[:2]
    sub = backend.subspec(spec, terms, {}, 3)
    first = fam.trainer(sub)
    first.step()
    first.save(tmp_path)
    first.step()
    again = fam.trainer(sub)
    assert again.resume(tmp_path) == 1
    again.step()
    assert again.episode == first.episode == 2
    torch.testing.assert_close(again.theta, first.theta, rtol=0, atol=0)
    assert again.theta_dict() == first.theta_dict()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_resumes_an_interrupted_search_to_the_same_front(name: str, tmp_path: Path) -> None:
    """The tiny search stopped once its first stage is in the stage log, then restarted on the same folder, ends
    with the front of an uninterrupted run (terms, θ, held-out scores, selection), every finished stage replayed."""
    fam = get_family(name)
    spec = fam.tiny_spec()
    assert spec.search.active
    whole = fam.meta_train(spec, checkpoint_dir=tmp_path / "whole")
    folder = tmp_path / "cut"
    cut = fam.meta_train(spec, checkpoint_dir=folder, should_stop=lambda: (folder / "search.json").exists())
    assert cut.stopped and not cut.front
    events: list = []
    resumed = fam.meta_train(spec, events.append, checkpoint_dir=folder)
    assert not resumed.stopped and resumed.search["resumed"]["stage"] >= 2
    assert any((e.phase or "").startswith("resumed stage") for e in events)

    def front(result: DiscoveryResult) -> list:
        return [(p.terms, p.theta, p.heldout_accuracy, p.heldout_ci95, p.selected) for p in result.front]

    assert front(resumed) == front(whole) and front(whole)
