"""Fused CPU kernels of the feedforward inner loop: the planner and torch wrapper (``fused``), the C kernel and its
build (``fused_kernel.c``, ``ckernel``) and the numba fallback (``numba_kernel``)."""
