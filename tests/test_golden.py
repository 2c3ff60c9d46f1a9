"""The refactors keep the numerics: a tiny discovery and a tiny benchmark equal, bit for bit, the golden JSON that the
code produced before (``tests/golden/golden.py``; timings excluded)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.golden import golden


def test_tiny_discovery_matches_the_golden_bit_for_bit() -> None:
    expected = json.loads((golden.HERE / "discovery.json").read_text())
    assert json.loads(json.dumps(golden.tiny_discovery(), sort_keys=True)) == expected


def test_tiny_benchmark_matches_the_golden_bit_for_bit(tmp_path: Path) -> None:
    expected = json.loads((golden.HERE / "benchmark.json").read_text())
    got = golden.tiny_benchmark(golden._fresh_sqlite(tmp_path))
    assert json.loads(json.dumps(got, sort_keys=True)) == expected
