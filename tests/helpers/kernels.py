"""The C kernel fixture of the kernel tests: the auto backend, or a skip where no C compiler works."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from discovery.feedforward.kernels import ckernel


def c_backend(monkeypatch: pytest.MonkeyPatch, loader: Callable[[type], object]) -> Iterator[None]:
    """Select the C backend (``PLASTICITY_FUSED_BACKEND=auto``) and skip unless ``loader(float64)`` finds the kernel;
    the kernel cache is cleared before and after."""
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "auto")
    ckernel.load.cache_clear()
    try:
        if loader(np.float64) is None:
            pytest.skip("no C compiler: the adjoint kernel cannot run here")
    except RuntimeError as exc:
        pytest.skip(f"no C kernel here: {exc}")
    yield
    ckernel.load.cache_clear()
