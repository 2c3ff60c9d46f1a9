"""Family name → lazily imported ``FAMILY`` object (discovery.family.Family): nothing heavy (torch) is imported
until a family is used. Unknown names fail listing the valid ones."""

from __future__ import annotations

import importlib
from functools import cache

from discovery.family import Family

#: family name → module whose ``FAMILY`` attribute implements discovery.family.Family
FAMILY_MODULES: dict[str, str] = {
    "feedforward": "discovery.feedforward.family",
    "recurrent": "discovery.recurrent.family",
    "unsupervised": "discovery.unsupervised",
    "reward": "discovery.reward.family",
}


def list_families() -> list[str]:
    """The registered family names."""
    return sorted(FAMILY_MODULES)


@cache
def get_family(name: str) -> Family:
    """The family ``name`` (imported on first use); KeyError listing the registered names otherwise."""
    if name not in FAMILY_MODULES:
        raise KeyError(f"unknown rule family {name!r}; registered: {', '.join(list_families())}")
    family = importlib.import_module(FAMILY_MODULES[name]).FAMILY
    if not isinstance(family, Family):
        raise TypeError(f"{FAMILY_MODULES[name]}.FAMILY does not implement discovery.family.Family")
    return family
