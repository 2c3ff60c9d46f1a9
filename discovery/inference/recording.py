"""A recording of a small circuit learning: pre activity x_t, post activity y_t, optionally the weights W_t.

Layout (docs/inference.md): time runs along the first axis; several trials are concatenated in time and
``trial_starts`` lists the index where each begins (the first is 0). A weight change is never taken across a trial
boundary. Sources: ``.npz`` (arrays ``pre``, ``post``, optional ``weights``, ``dt`` or ``timestamps``,
optional ``trial_starts`` and ``nonlinearity``) and NWB (``TimeSeries`` ``pre``, ``post`` and optional ``weights``
in ``acquisition``, timing from ``rate`` or regular ``timestamps``, trials from the trials table).

Every problem with a file is a :class:`RecordingError` whose message names the series and what is wrong.
"""

from __future__ import annotations

import io
import itertools
import math
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Circuit", "Recording", "RecordingError", "read_npz", "read_nwb", "read_recording", "validate"]

#: fewest time steps of one trial (one weight change needs two samples; a held-out change needs more)
MIN_STEPS = 3
#: relative tolerance on the regularity of NWB timestamps
_TIMESTAMP_RTOL = 1e-3
Nonlinearity = Literal["linear"]


class RecordingError(ValueError):
    """A recording that cannot be used for inference; the message says which series and why."""


class Circuit(BaseModel):
    """The circuit model of the recording: y = f(W x) with sizes m (pre) and n (post); only 'linear' for now."""

    model_config = ConfigDict(frozen=True)

    n_pre: int = Field(gt=0)
    n_post: int = Field(gt=0)
    nonlinearity: Nonlinearity = "linear"


class Recording(BaseModel):
    """Validated recording (float64): pre (T, m), post (T, n), weights (T, n, m) or None, dt > 0, trial starts."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    pre: np.ndarray
    post: np.ndarray
    weights: np.ndarray | None = None
    dt: float = 1.0
    trial_starts: tuple[int, ...] = (0,)
    circuit: Circuit
    source: str = ""

    @property
    def n_steps(self) -> int:
        return int(self.pre.shape[0])

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def trials(self) -> list[tuple[int, int]]:
        """(start, stop) of every trial, stop exclusive."""
        bounds = [*self.trial_starts, self.n_steps]
        return [(bounds[i], bounds[i + 1]) for i in range(len(self.trial_starts))]

    def summary(self) -> dict[str, Any]:
        return {"n_pre": self.circuit.n_pre, "n_post": self.circuit.n_post, "nonlinearity": self.circuit.nonlinearity,
                "n_steps": self.n_steps, "n_trials": len(self.trial_starts), "dt": self.dt,
                "weights_observed": self.has_weights, "source": self.source}


def _array(name: str, value: Any, ndim: int) -> np.ndarray:
    if value is None:
        raise RecordingError(f"missing series {name!r}")
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise RecordingError(f"series {name!r} must hold real numbers, not {arr.dtype}")
    if arr.ndim != ndim:
        raise RecordingError(f"series {name!r} must have {ndim} dimensions (time first), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise RecordingError(f"series {name!r} has non-finite values (NaN or ±inf), first at index {tuple(bad)}")
    return arr


def validate(pre: Any, post: Any, weights: Any = None, *, dt: float = 1.0, trial_starts: Any = None,
             nonlinearity: str = "linear", source: str = "") -> Recording:
    """A :class:`Recording` from raw arrays, or a :class:`RecordingError` saying what is wrong."""
    x = _array("pre", pre, 2)
    y = _array("post", post, 2)
    if y.shape[0] != x.shape[0]:
        raise RecordingError(f"length mismatch: 'pre' has {x.shape[0]} time steps, 'post' has {y.shape[0]}")
    W = None
    if weights is not None:
        W = _array("weights", weights, 3)
        if W.shape[0] != x.shape[0]:
            raise RecordingError(f"length mismatch: 'weights' has {W.shape[0]} time steps, 'pre' has {x.shape[0]}")
        if W.shape[1:] != (y.shape[1], x.shape[1]):
            raise RecordingError(f"series 'weights' must be (T, n_post, n_pre) = (T, {y.shape[1]}, {x.shape[1]}), "
                                 f"got {W.shape}")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise RecordingError(f"empty neuron axis: 'pre' is {x.shape}, 'post' is {y.shape}")
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise RecordingError(f"the time step must be a number, got {dt!r}") from None
    if not (math.isfinite(dt) and dt > 0):
        raise RecordingError(f"the time step must be finite and > 0, got {dt}")
    starts = (0,) if trial_starts is None else tuple(int(s) for s in np.asarray(trial_starts).ravel())
    if not starts or starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
        raise RecordingError(f"trial starts must begin at 0 and increase strictly, got {list(starts)}")
    bounds = [*starts, x.shape[0]]
    short = [i for i in range(len(starts)) if bounds[i + 1] - bounds[i] < MIN_STEPS]
    if short:
        raise RecordingError(f"trial {short[0]} has {bounds[short[0] + 1] - bounds[short[0]]} time steps; "
                             f"a trial needs at least {MIN_STEPS}")
    if nonlinearity != "linear":
        raise RecordingError(f"unsupported nonlinearity {nonlinearity!r}: only 'linear' (y = W x) is supported")
    return Recording(pre=x, post=y, weights=W, dt=dt, trial_starts=starts,
                     circuit=Circuit(n_pre=x.shape[1], n_post=y.shape[1], nonlinearity="linear"), source=source)


# ------------------------------------------------------------------------------------------------ npz

def read_npz(source: str | Path | bytes) -> Recording:
    """A recording from an ``.npz``: ``pre`` (T, m), ``post`` (T, n), optional ``weights`` (T, n, m), ``dt`` (or
    regular ``timestamps``), optional ``trial_starts`` and ``nonlinearity``. Pickled arrays are refused."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with fh, np.load(fh, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RecordingError(f"{name} is not a readable .npz file: {exc}") from exc
    missing = [k for k in ("pre", "post") if k not in arrays]
    if missing:
        raise RecordingError(f"missing series {missing[0]!r} in {name} (it has {sorted(arrays) or 'none'})")
    dt = _dt_from(arrays.get("dt"), arrays.get("timestamps"), arrays["pre"].shape[0])
    nl = str(arrays["nonlinearity"]) if "nonlinearity" in arrays else "linear"
    return validate(arrays["pre"], arrays["post"], arrays.get("weights"), dt=dt,
                    trial_starts=arrays.get("trial_starts"), nonlinearity=nl, source=name)


def _dt_from(dt: Any, timestamps: Any, n: int) -> float:
    if dt is not None:
        arr = np.asarray(dt)
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            raise RecordingError(f"'dt' must be one number, got {arr!r}")
        return float(arr.reshape(()))
    if timestamps is None:
        return 1.0
    ts = np.asarray(timestamps, dtype=float).ravel()
    if ts.shape[0] != n:
        raise RecordingError(f"length mismatch: 'timestamps' has {ts.shape[0]} entries, 'pre' has {n} time steps")
    if n < 2:
        return 1.0
    d = np.diff(ts)
    step = float(np.median(d))
    if not (step > 0) or np.max(np.abs(d - step)) > _TIMESTAMP_RTOL * step:
        raise RecordingError("timestamps must increase at a regular step (the rule is a discrete-time update); "
                             f"steps range from {d.min():.6g} to {d.max():.6g}")
    return step


# ------------------------------------------------------------------------------------------------ NWB

def read_nwb(path: str | Path, *, nonlinearity: str | None = None) -> Recording:
    """A recording from an NWB file (layout in docs/inference.md): TimeSeries ``pre``, ``post`` and optionally
    ``weights`` in ``acquisition`` (or in a processing module), the same timing, trials from ``nwb.trials``."""
    try:
        from pynwb import NWBHDF5IO
    except ImportError as exc:  # pragma: no cover - pynwb is a dependency of the service
        raise RecordingError("NWB files need the pynwb package") from exc
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise RecordingError(f"cannot open {path}: {exc}") from exc
    if head != b"\x89HDF\r\n\x1a\n":
        raise RecordingError(f"{path} is not an NWB file (an NWB file is HDF5 and starts with its signature)")
    try:
        with NWBHDF5IO(str(path), "r") as nwb_io:
            nwb = nwb_io.read()
            return _from_nwb(nwb, str(path), nonlinearity)
    except RecordingError:
        raise
    except Exception as exc:
        raise RecordingError(f"the NWB file cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _find_series(nwb: Any, name: str) -> Any:
    acq = getattr(nwb, "acquisition", {}) or {}
    if name in acq:
        return acq[name]
    for module in (getattr(nwb, "processing", {}) or {}).values():
        if name in module.data_interfaces:
            return module.data_interfaces[name]
    return None


def _series_time(series: Any, name: str) -> tuple[float, np.ndarray | None]:
    """(dt, timestamps or None) of a TimeSeries."""
    rate = getattr(series, "rate", None)
    if rate is not None:
        if not (rate > 0):
            raise RecordingError(f"series {name!r} has rate {rate}; it must be > 0")
        return 1.0 / float(rate), None
    ts = getattr(series, "timestamps", None)
    if ts is None:
        raise RecordingError(f"series {name!r} has neither rate nor timestamps")
    ts = np.asarray(ts[:], dtype=float)
    return _dt_from(None, ts, ts.shape[0]), ts


def _from_nwb(nwb: Any, source: str, nonlinearity: str | None) -> Recording:
    acq = sorted(getattr(nwb, "acquisition", {}) or {})
    found = {k: _find_series(nwb, k) for k in ("pre", "post", "weights")}
    for k in ("pre", "post"):
        if found[k] is None:
            raise RecordingError(f"missing series {k!r}: the NWB file needs TimeSeries 'pre' and 'post' in "
                                 f"acquisition (it has {acq or 'none'})")
    arrays = {k: None if s is None else np.asarray(s.data[:]) for k, s in found.items()}
    dt, ts = _series_time(found["pre"], "pre")
    for k in ("post", "weights"):
        if found[k] is not None:
            dt_k, _ = _series_time(found[k], k)
            if abs(dt_k - dt) > _TIMESTAMP_RTOL * dt:
                raise RecordingError(f"series {k!r} has time step {dt_k:.6g}, 'pre' has {dt:.6g}; they must match")
    starts = None
    trials = getattr(nwb, "trials", None)
    if trials is not None and len(trials) > 0:
        t0 = float(found["pre"].starting_time or 0.0) if ts is None else float(ts[0])
        start_times = np.asarray(trials["start_time"][:], dtype=float)
        starts = np.rint((start_times - t0) / dt).astype(int)
    if nonlinearity is None:
        comments = str(getattr(found["post"], "comments", "") or "")
        nonlinearity = "linear"
        for part in comments.split(";"):
            key, _, value = part.partition("=")
            if key.strip() == "nonlinearity" and value.strip():
                nonlinearity = value.strip()
    return validate(arrays["pre"], arrays["post"], arrays["weights"], dt=dt, trial_starts=starts,
                    nonlinearity=nonlinearity, source=source)


def read_recording(path: str | Path) -> Recording:
    """``.npz`` or NWB (``.nwb``/``.h5``/``.hdf5``, or by the HDF5 signature)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    return read_nwb(path)
