"""The typed client's calls for rule inference (docs/inference.md): upload a recording, start an inference, read
it. Functions of a :class:`service.client.http.Client`, so the client module stays one file per resource group."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from service.api.inference_schemas import InferenceOut, RecordingOut

__all__ = ["infer", "inference", "recordings", "upload_recording", "wait_inference"]


def upload_recording(client: Any, path: str | Path, name: str | None = None) -> RecordingOut:
    """``POST /api/recordings``: an NWB or ``.npz`` recording."""
    p = Path(path)
    with p.open("rb") as fh:
        response = client.request("POST", "/api/recordings", files={"file": (p.name, fh)},
                                  data={"name": name} if name else None)
    return RecordingOut.model_validate(response.json())


def recordings(client: Any, limit: int = 100, offset: int = 0) -> list[RecordingOut]:
    """``GET /api/recordings``."""
    return client._list(RecordingOut, "/api/recordings", limit=limit, offset=offset)


def infer(client: Any, recording_id: int, *, max_terms: int = 6, n_bootstrap: int = 200, seed: int = 0) -> InferenceOut:
    """``POST /api/inferences``: queue the inference of the rule behind a recording."""
    body = {"recording_id": int(recording_id), "max_terms": max_terms, "n_bootstrap": n_bootstrap, "seed": seed}
    return client._post(InferenceOut, "/api/inferences", body)


def inference(client: Any, job_id: int) -> InferenceOut:
    """``GET /api/inferences/{id}``."""
    return client._get(InferenceOut, f"/api/inferences/{int(job_id)}")


def wait_inference(client: Any, job_id: int, timeout: float = 600.0, interval: float = 1.0) -> InferenceOut:
    """Poll until the inference is final (succeeded, failed or cancelled); TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        out = inference(client, job_id)
        if out.status in ("succeeded", "failed", "cancelled"):
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"inference {job_id} is still {out.status} after {timeout:.0f} s")
        time.sleep(interval)
