"""The service layer: FastAPI app, database, dispatcher of Ray work, pages and the `plasticity` CLI.

Dependency direction: service → workers → discovery → rules (docs/CONTRACTS.md). Nothing numerical runs in a
request handler; the dispatcher thread hands jobs and benchmarks to ``workers.ray_jobs``.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__: str = _metadata.version("plasticity")
except _metadata.PackageNotFoundError:  # running from a checkout without `pip install -e .`
    __version__ = "0.1.0"
