"""The refactors keep the numerics: a tiny discovery and a tiny benchmark equal the golden JSON that the code
produced before (``tests/golden/golden.py``; timings excluded).

On the machine that wrote the golden the match is bit for bit. Another CPU (a different BLAS kernel for the same
float32 matmul) moves the last bits: measured 1e-7 relative on an AMD EPYC against a golden written elsewhere. So
every number is compared within float32 rounding accumulated over the tiny run (relative 1e-5), and everything else
(keys, lengths, strings, booleans, integers) exactly; a real change of the numerics moves values far more than that.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tests.golden import golden

REL, ABS = 1e-5, 1e-9
#: angles near 0 are arccos of a cosine within float32 rounding of 1, where arccos has infinite slope:
#: cos = 1 − 1e-8 already reads 0.008°, so an alignment angle is compared to 0.05° absolute
ANGLE_ABS = 0.05
_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")


def _same_text(got: str, want: str) -> bool:
    """Strings equal once their decimal numbers (a rule's printed θ) are compared within REL."""
    g, w = _NUMBER.findall(got), _NUMBER.findall(want)
    return (_NUMBER.sub("#", got) == _NUMBER.sub("#", want) and len(g) == len(w)
            and all(math.isclose(float(a), float(b), rel_tol=REL, abs_tol=ABS) for a, b in zip(g, w, strict=True)))


def mismatches(got: Any, want: Any, path: str = "$") -> list[str]:
    """Paths where ``got`` differs from ``want``: structure, strings, bools and ints exactly, floats within REL."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{path}: keys {sorted(got) if isinstance(got, dict) else type(got).__name__} != {sorted(want)}"]
        return [m for k in want for m in mismatches(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r:.80} != {want!r:.80}"]
        return [m for i, (g, w) in enumerate(zip(got, want, strict=True)) for m in mismatches(g, w, f"{path}[{i}]")]
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        tol = ANGLE_ABS if "alignment_deg" in path else ABS
        same = (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=REL, abs_tol=tol)
        return [] if same else [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, str) and isinstance(got, str):
        return [] if _same_text(got, want) else [f"{path}: {got!r:.80} != {want!r:.80}"]
    return [] if (type(got) is type(want) and got == want) else [f"{path}: {got!r:.80} != {want!r:.80}"]


def _check(got: Any, name: str) -> None:
    expected = json.loads((golden.HERE / name).read_text())
    problems = mismatches(json.loads(json.dumps(got, sort_keys=True)), expected)
    assert not problems, f"{len(problems)} differences from {name}, first: {problems[:5]}"


def test_tiny_discovery_matches_the_golden() -> None:
    _check(golden.tiny_discovery(), "discovery.json")


def test_tiny_benchmark_matches_the_golden(tmp_path: Path) -> None:
    _check(golden.tiny_benchmark(golden._fresh_sqlite(tmp_path)), "benchmark.json")


def test_the_comparison_catches_a_real_change() -> None:
    want = {"a": [1.0, 2.0], "n": 3, "s": "x"}
    assert not mismatches({"a": [1.0 + 1e-7, 2.0], "n": 3, "s": "x"}, want)
    assert mismatches({"a": [1.001, 2.0], "n": 3, "s": "x"}, want)
    assert mismatches({"a": [1.0, 2.0], "n": 4, "s": "x"}, want)
    assert mismatches({"a": [1.0], "n": 3, "s": "x"}, want)
    assert not mismatches("-0.0029999998*e*x.T", "-0.0030000001*e*x.T")
    assert mismatches("-0.0029*e*x.T", "-0.0030*e*x.T") and mismatches("-0.003*e*W", "-0.003*e*x.T")
