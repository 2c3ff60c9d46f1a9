"""An inference job as the engine runs it (docs/inference.md): the spec, reading an uploaded recording (NWB or
npz, one-layer or layered), its canonical stored form and checksum, and :func:`run_inference`, which picks the fit
(weights observed, activity only, or a layered error-driven recording) and adds the recorded-against-simulated
trajectories that the rule page plots.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from discovery.inference.errors import (
    LayeredRecording,
    design_of_layers,
    infer_layered,
    is_layered,
    read_layered_npz,
    read_layered_nwb,
    write_layered_npz,
)
from discovery.inference.fit import InferenceResult, design_of, infer_rule
from discovery.inference.recording import Recording, RecordingError, _from_nwb, read_npz
from discovery.inference.simulate import write_npz

__all__ = ["GOAL_PATTERN", "InferenceSpec", "RecordingRef", "canonical_bytes", "checksum", "parse_goal",
           "read_upload", "run_inference"]

AnyRecording = Recording | LayeredRecording

#: "infer the plasticity rule from recording 3" (also "infer the rule behind recording 3")
GOAL_PATTERN = re.compile(r"^\s*infer\s+(?:the\s+)?(?:plasticity\s+)?rule\s+(?:from|behind|of)\s+(?:the\s+)?"
                          r"recording\s+#?(\d{1,9})\s*[.!]?\s*$", re.IGNORECASE)


class RecordingRef(BaseModel):
    """The recording a job reads: its id, name and checksum (the provenance) and, for the workers, its folder."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=1)
    name: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    dir: str | None = None


class InferenceSpec(BaseModel):
    """One inference job: the recording, the fit's options; stored as the job's spec with ``kind = "inference"``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["inference"] = "inference"
    recording: RecordingRef
    max_terms: int = Field(default=6, ge=1, le=8, description="largest support on the front")
    n_bootstrap: int = Field(default=200, ge=0, le=2000, description="bootstrap resamples (activity only: ≤ 10 used)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    name: str | None = Field(default=None, max_length=200)


def parse_goal(text: str) -> int | None:
    """The recording id of an inference goal, or None when the text is not one."""
    m = GOAL_PATTERN.match(text or "")
    return int(m.group(1)) if m else None


def _npz_names(data: bytes) -> list[str]:
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [n.removesuffix(".npy") for n in z.namelist()]
    except zipfile.BadZipFile as exc:
        raise RecordingError(f"the file is not a readable .npz (zip) file: {exc}") from exc


def read_upload(data: bytes, filename: str | None) -> tuple[AnyRecording, str]:
    """(recording, format) of uploaded bytes: NWB by its HDF5 signature, else npz; either layout."""
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        from pynwb import NWBHDF5IO

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.nwb"
            path.write_bytes(data)
            try:
                with NWBHDF5IO(str(path), "r") as nwb_io:
                    nwb = nwb_io.read()
                    names = list(nwb.acquisition)
                    rec = read_layered_nwb(nwb, filename or "upload") if is_layered(names) else \
                        _from_nwb(nwb, filename or "upload", None)
            except RecordingError:
                raise
            except Exception as exc:
                raise RecordingError(f"the NWB file cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from exc
        return rec, "nwb"
    if data[:2] != b"PK":
        raise RecordingError("the file is neither NWB (HDF5) nor .npz (zip)")
    rec = read_layered_npz(data) if is_layered(_npz_names(data)) else read_npz(data)
    return rec, "npz"


def checksum(rec: AnyRecording) -> str:
    """sha256 over the recording's arrays (name, shape, float64 bytes in a fixed order), dt and trial starts."""
    h = hashlib.sha256()
    for name, arr in _arrays(rec):
        h.update(f"{name}:{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
    h.update(repr((float(rec.dt), tuple(rec.trial_starts))).encode())
    return h.hexdigest()


def _arrays(rec: AnyRecording) -> list[tuple[str, np.ndarray]]:
    if isinstance(rec, LayeredRecording):
        return [*((f"y_{i}", a) for i, a in enumerate(rec.activity)), *((f"e_{i}", a) for i, a in enumerate(rec.errors)),
                *((f"W_{i + 1}", a) for i, a in enumerate(rec.weights))]
    out = [("pre", rec.pre), ("post", rec.post)]
    return out + ([("weights", rec.weights)] if rec.weights is not None else [])


def canonical_bytes(rec: AnyRecording, folder: Path, digest: str) -> Path:
    """Write the canonical ``<folder>/<sha256>.npz`` (the layout of docs/inference.md) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.npz"
    if not path.exists():
        tmp = folder / f".{digest}.tmp"
        (write_layered_npz if isinstance(rec, LayeredRecording) else write_npz)(rec, tmp)
        tmp.replace(path)
    return path


def load_stored(ref: RecordingRef) -> AnyRecording:
    """The stored recording of ``ref`` (its folder set by the service), checked against its checksum."""
    if ref.dir is None or ref.sha256 is None:
        raise RecordingError(f"recording {ref.id}: the job names no stored file")
    path = Path(ref.dir) / f"{ref.sha256}.npz"
    if not path.exists():
        raise RecordingError(f"recording {ref.id}: its file {path.name} is missing")
    data = path.read_bytes()
    rec = read_layered_npz(data) if is_layered(_npz_names(data)) else read_npz(data)
    if checksum(rec) != ref.sha256:
        raise RecordingError(f"recording {ref.id}: the stored file does not match its checksum {ref.sha256}")
    return rec


def summary(rec: AnyRecording) -> dict[str, Any]:
    """Sizes, trials, what was observed (the row's metadata)."""
    if isinstance(rec, LayeredRecording):
        return {**rec.summary(), "widths": [int(a.shape[1]) for a in rec.activity]}
    return {**rec.summary(), "kind": "layer", "widths": [rec.circuit.n_pre, rec.circuit.n_post],
            "errors_observed": False}


def _downsample(n: int, most: int = 160) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def trajectories(rec: AnyRecording, res: InferenceResult, *, series: int = 4) -> dict[str, Any]:
    """Recorded against simulated trajectories of the last trial for the rule page: weight changes W(t) − W(t₀)
    of the synapses that change most (weights observed) or post activity (activity only)."""
    a, b = rec.trials()[-1]
    if isinstance(rec, LayeredRecording) or rec.weights is not None:
        design = design_of_layers(rec, list(res.theta)) if isinstance(rec, LayeredRecording) else \
            design_of(rec, list(res.theta))
        F = design.features(a, b)                                            # (T, R, E)
        th = np.array([res.theta[i] for i in design.ids])
        steps = np.tensordot(th, F, axes=(0, 1)) if len(th) else np.zeros_like(design.weights[a:b])
        pred = np.concatenate([np.zeros_like(steps[:1]), np.cumsum(steps[:-1], axis=0)])
        obs = design.weights[a:b] - design.weights[a]
        what, unit = "weight change W(t) − W(t₀)", "synapse"
    else:   # activity only: infer_from_activity fills them from its own simulation
        return dict(res.diagnostics.get("trajectories") or {})
    pick = np.argsort(-np.abs(pred[-1]))[:series] if pred.size else np.arange(0)
    t = _downsample(b - a)
    return {"quantity": what, "trial": len(rec.trials()) - 1, "t": (t * rec.dt).tolist(),
            "series": [{"label": f"{unit} {int(k)}", "recorded": obs[t, k].tolist(), "simulated": pred[t, k].tolist()}
                       for k in pick]}


def run_inference(spec: InferenceSpec) -> InferenceResult:
    """Read the stored recording and infer its rule with the fit its content allows; trajectories added."""
    rec = load_stored(spec.recording)
    if isinstance(rec, LayeredRecording):
        res = infer_layered(rec, max_terms=spec.max_terms, n_bootstrap=spec.n_bootstrap, seed=spec.seed)
    elif rec.weights is not None:
        res = infer_rule(rec, max_terms=spec.max_terms, n_bootstrap=spec.n_bootstrap, seed=spec.seed)
    else:
        from discovery.inference.activity import infer_from_activity

        res = infer_from_activity(rec, max_terms=min(spec.max_terms, 4), n_bootstrap=min(spec.n_bootstrap, 10),
                                  seed=spec.seed)
    if "trajectories" not in res.diagnostics:
        res.diagnostics["trajectories"] = trajectories(rec, res)
    res.provenance["recording_ref"] = spec.recording.model_dump(exclude={"dir"})
    return res
