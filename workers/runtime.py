"""Connecting to Ray: a cluster named by ``RAY_ADDRESS``, or a small local Ray started on demand.

No mathematics here; the jobs it hosts meta-learn the coefficients θ of ΔW_ℓ = Σ_r θ_r F^r_ℓ (docs/science.md).
:func:`ensure_ray` is idempotent and thread-safe: the service may call it from any request thread.

Environment:
    ``RAY_ADDRESS``                     cluster to join (``ray://…`` or ``host:port``); unset, empty or
                                         ``local``: start a local Ray.
    ``PLASTICITY_RAY_NUM_CPUS``          CPUs of a local Ray (default: all).
    ``PLASTICITY_RAY_OBJECT_STORE_MB``   object store of a local Ray in MiB (default 256).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import ray

_LOCK = threading.Lock()
_STARTED_LOCAL = False
#: the repository root (parent of ``workers/``); local workers get it on their ``sys.path``.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OBJECT_STORE_MB = 256


def _cluster_address() -> str | None:
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address.lower() == "local":
        return None
    return address


def ensure_ray(num_cpus: int | None = None) -> str:
    """Make sure this process is connected to Ray; return the GCS address of the cluster.

    With ``RAY_ADDRESS`` set, join that cluster (``num_cpus`` is ignored: the cluster has its own).
    Otherwise start a local Ray with ``num_cpus`` CPUs (or ``PLASTICITY_RAY_NUM_CPUS``, or all), no dashboard,
    a small object store and worker logs kept out of this process's output. Calling it again is a no-op.
    """
    global _STARTED_LOCAL
    with _LOCK:
        if not ray.is_initialized():
            address = _cluster_address()
            if address is not None:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            else:
                if num_cpus is None and os.environ.get("PLASTICITY_RAY_NUM_CPUS"):
                    num_cpus = int(os.environ["PLASTICITY_RAY_NUM_CPUS"])
                store_mb = int(os.environ.get("PLASTICITY_RAY_OBJECT_STORE_MB", DEFAULT_OBJECT_STORE_MB))
                kwargs: dict[str, Any] = {}
                if Path.cwd().resolve() != REPO_ROOT:
                    # Ray puts the driver's working directory on the workers' sys.path; from anywhere else,
                    # name the repository explicitly so that actors can import discovery/ and workers/.
                    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
                    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
                # `address="local"` so that a RAY_ADDRESS of "local"/"" never makes ray.init search for a cluster.
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    object_store_memory=store_mb * 1024 * 1024,
                    log_to_driver=False,
                    ignore_reinit_error=True,
                    configure_logging=False,
                    **kwargs,
                )
                _STARTED_LOCAL = True
        return str(ray.get_runtime_context().gcs_address)


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local Ray when this process started it)."""
    global _STARTED_LOCAL
    with _LOCK:
        if ray.is_initialized():
            ray.shutdown()
        _STARTED_LOCAL = False


def ray_info() -> dict[str, Any]:
    """A small JSON-able summary for health checks: connected, address, local, total and free resources."""
    if not ray.is_initialized():
        return {"connected": False}
    try:
        return {
            "connected": True,
            "address": str(ray.get_runtime_context().gcs_address),
            "local": _STARTED_LOCAL,
            "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")},
            "available": {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")},
        }
    except Exception as exc:  # noqa: BLE001 - health must answer, not raise
        return {"connected": False, "error": str(exc)}
