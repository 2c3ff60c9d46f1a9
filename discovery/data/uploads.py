"""Labelled data sets uploaded by users (``POST /api/datasets``; a job names one as ``task.dataset = "upload:<id>"``).

Accepted content: ``X`` (N × D numbers, or N × H × W images, flattened row-major) and ``y`` (N integer labels).

- ``.npz`` (``numpy.savez``): arrays ``X`` and ``y``; other arrays are ignored; pickled (object) arrays are refused.
- ``.nwb`` (Neurodata Without Borders, read with ``pynwb``): a ``TimeSeries`` named ``X`` in ``acquisition`` whose
  data is (N, D) or (N, H, W) — one row per sample — and the labels as a ``TimeSeries`` named ``y`` in
  ``acquisition`` (N,) or as a ``label`` column of the trials table (one trial per sample).

Validation (:func:`canonical`): X real numbers (float or integer; not bool, complex, strings or objects), finite
(no NaN or ±∞, also after the cast to float32), y integers of the same length N, at least two classes and at least
:data:`MIN_PER_CLASS` samples in every class (so the held-out split keeps each class on both sides).

Storage: the canonical content — X as float32 (N, D) and y as int64 (the labels as given) — is saved as
``<folder>/<sha256>.npz``, where the sha256 (:func:`content_sha256`) covers the shapes and the bytes of both
arrays, so the same data uploaded twice has the same checksum whatever the file's format or dtype.

Loading (:func:`load_upload`): the file is read back and its checksum verified; the labels are remapped to
0..C−1 in ascending order of their values, and X is scaled to [0, 1] exactly as the built-in sets are: left as it
is when it already lies in [0, 1], else ``(X − min) / (max − min)`` over the whole array in float32. sklearn's
digits (pixels 0..16) therefore load as ``X / 16``, the same float32 numbers as the built-in ``digits``, and the
meta-train / held-out split is made by the same :class:`discovery.data.sampler.EpisodeSampler` code.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from discovery.data.datasets import Dataset, DatasetError, load_dataset

if TYPE_CHECKING:
    from discovery.spec import TaskSpec

__all__ = [
    "DATASET_DIR_ENV",
    "MIN_PER_CLASS",
    "Canonical",
    "UploadError",
    "UploadInfo",
    "canonical",
    "content_sha256",
    "episode_problem",
    "load_task_data",
    "load_upload",
    "read_labelled",
    "save_canonical",
]

#: Folder of the uploaded data sets when a spec's ``task.upload.dir`` is unset.
DATASET_DIR_ENV = "PLASTICITY_DATASET_DIR"
#: Fewest samples of one class in an upload (one on each side of the meta-train / held-out split).
MIN_PER_CLASS = 2
#: Most classes an upload may have.
MAX_CLASSES = 10_000
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"

Format = Literal["npz", "nwb"]


class UploadError(DatasetError):
    """An uploaded file that cannot become a data set; the message says why."""


class UploadInfo(BaseModel):
    """What the goal reader needs to know of an uploaded data set (``"... on my dataset <name>"``)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    name: str
    dim: int
    n_classes: int

    @property
    def ref(self) -> str:
        """The name a spec gives it: ``upload:<id>``."""
        return f"upload:{self.id}"


@dataclass(frozen=True)
class Canonical:
    """Validated content of an upload: X float32 (N, D), y int64 (N,) as given, and its summary."""

    x: np.ndarray
    y: np.ndarray
    side: int | None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @functools.cached_property
    def classes_and_counts(self) -> tuple[list[int], list[int]]:
        values, counts = np.unique(self.y, return_counts=True)
        return [int(v) for v in values], [int(c) for c in counts]

    @property
    def sha256(self) -> str:
        return content_sha256(self.x, self.y)


# ----------------------------------------------------------------------------------------------------------
# reading what was uploaded


def sniff_format(filename: str | None, head: bytes) -> Format:
    """``npz`` or ``nwb`` from the file name's extension, else from the first bytes."""
    suffix = Path(filename or "").suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".nwb", ".h5", ".hdf5"):
        return "nwb"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head.startswith(_HDF5_MAGIC):
        return "nwb"
    raise UploadError(f"unsupported file {filename or '(unnamed)'!r}: upload a .npz holding arrays X and y "
                      "(numpy.savez) or an .nwb file (see GET /api/datasets for the layout)")


def read_labelled(data: bytes, filename: str | None = None, *, max_unpacked_bytes: int = 2**31) -> tuple[
        np.ndarray, np.ndarray, Format]:
    """(X, y, format) of an uploaded file's bytes, as stored in it (not yet validated: see :func:`canonical`)."""
    fmt = sniff_format(filename, data[:8])
    if fmt == "npz":
        x, y = _read_npz(data, max_unpacked_bytes)
    else:
        x, y = _read_nwb(data)
    return x, y, fmt


def _read_npz(data: bytes, max_unpacked_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise UploadError("not a .npz file: a .npz is a zip archive of .npy arrays (numpy.savez(f, X=..., y=...))")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise UploadError(f"the .npz (zip) archive is damaged: {exc}") from exc
    if unpacked > max_unpacked_bytes:
        raise UploadError(f"the .npz unpacks to {unpacked} bytes, more than the limit of {max_unpacked_bytes}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = set(archive.files)
            missing = [k for k in ("X", "y") if k not in names]
            if missing:
                raise UploadError(f"the .npz has no array {' and no array '.join(missing)}: it holds "
                                  f"{sorted(names) or 'nothing'}; save it with numpy.savez(f, X=X, y=y)")
            return archive["X"], archive["y"]
    except UploadError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UploadError("the .npz holds an object (pickled) array; X and y must be arrays of numbers") from exc
        raise UploadError(f"the .npz cannot be read: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UploadError(f"the .npz cannot be read: {exc}") from exc


def _read_nwb(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        from pynwb import NWBHDF5IO
    except ImportError as exc:  # pragma: no cover - pynwb is a dependency of the service
        raise UploadError("NWB files need the pynwb package on the server") from exc
    if not data.startswith(_HDF5_MAGIC):
        raise UploadError("not an NWB file: an .nwb file is HDF5 (it starts with the HDF5 signature)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.nwb"
        path.write_bytes(data)
        try:
            with NWBHDF5IO(str(path), "r") as nwb_io:
                nwb = nwb_io.read()
                return _nwb_arrays(nwb)
        except UploadError:
            raise
        except Exception as exc:  # h5py / hdmf raise many kinds on a bad file
            raise UploadError(f"the NWB file cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _nwb_arrays(nwb: object) -> tuple[np.ndarray, np.ndarray]:
    acquisition = getattr(nwb, "acquisition", {}) or {}
    if "X" not in acquisition:
        raise UploadError(f"the NWB file has no series 'X' in acquisition (it has {sorted(acquisition) or 'none'}); "
                          "store the samples as a TimeSeries named 'X' with data (N, D)")
    x = np.asarray(acquisition["X"].data[()])
    if "y" in acquisition:
        y = np.asarray(acquisition["y"].data[()])
    else:
        trials = getattr(nwb, "trials", None)
        if trials is None or "label" not in trials.colnames:
            raise UploadError("the NWB file has no labels: store them as a TimeSeries named 'y' in acquisition "
                              "or as a 'label' column of the trials table")
        y = np.asarray(trials["label"].data[:])
    return x, y


# ----------------------------------------------------------------------------------------------------------
# validation and the canonical form


def canonical(x: np.ndarray, y: np.ndarray, *, max_dim: int | None = None) -> Canonical:
    """Validate X and y and return their canonical form; :class:`UploadError` says what is wrong."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "fiu":
        raise UploadError(f"X must hold real numbers (float or integer), not {x.dtype} ({_kind(x.dtype)})")
    if y.dtype.kind not in "iu":
        raise UploadError(f"y must hold integer class labels, not {y.dtype} ({_kind(y.dtype)})")
    if x.ndim not in (2, 3):
        raise UploadError(f"X must be N × D (or N × H × W images), got shape {x.shape}")
    if y.ndim != 1:
        raise UploadError(f"y must be a vector of N labels, got shape {y.shape}")
    n = x.shape[0]
    if n == 0 or math.prod(x.shape[1:]) == 0:
        raise UploadError(f"X is empty (shape {x.shape})")
    if y.shape[0] != n:
        raise UploadError(f"X has {n} samples but y has {y.shape[0]} labels")
    side = x.shape[1] if x.ndim == 3 and x.shape[1] == x.shape[2] else None
    flat = x.reshape(n, -1)
    dim = flat.shape[1]
    if x.ndim == 2:
        root = math.isqrt(dim)
        side = root if root * root == dim else None
    if max_dim is not None and dim > max_dim:
        raise UploadError(f"X has D = {dim} features, more than the largest input width {max_dim}")
    if x.dtype.kind == "f" and not np.isfinite(flat).all():
        bad = int((~np.isfinite(flat)).sum())
        raise UploadError(f"X has {bad} values that are NaN or infinite; every value must be finite")
    x32 = np.ascontiguousarray(flat, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise UploadError("X has values beyond the float32 range (±3.4e38)")
    y64 = np.ascontiguousarray(y, dtype=np.int64)
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and int(y.max()) > np.iinfo(np.int64).max:
        raise UploadError("y has labels beyond the int64 range")
    values, counts = np.unique(y64, return_counts=True)
    if len(values) < 2:
        raise UploadError(f"y has {len(values)} class ({values.tolist()}); a classification data set needs at "
                          "least 2 classes")
    if len(values) > MAX_CLASSES:
        raise UploadError(f"y has {len(values)} classes, more than {MAX_CLASSES}")
    small = [(int(v), int(c)) for v, c in zip(values, counts) if c < MIN_PER_CLASS]
    if small:
        shown = ", ".join(f"class {v}: {c}" for v, c in small[:5])
        raise UploadError(f"{len(small)} class(es) have fewer than {MIN_PER_CLASS} samples ({shown}); every class "
                          "needs samples on both sides of the meta-train / held-out split")
    return Canonical(x32, y64, side)


def _kind(dtype: np.dtype) -> str:
    return {"b": "booleans", "c": "complex numbers", "O": "Python objects", "U": "strings", "S": "bytes",
            "f": "floats", "i": "integers", "u": "unsigned integers", "M": "dates", "m": "time deltas",
            "V": "raw records"}.get(dtype.kind, dtype.kind)


def content_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """Checksum of a canonical (X float32 (N, D), y int64 (N,)): shapes and little-endian bytes of both."""
    h = hashlib.sha256(b"plasticity-dataset-v1\0")
    h.update(f"{x.shape[0]}x{x.shape[1]}\0".encode())
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return h.hexdigest()


def save_canonical(folder: str | os.PathLike[str], data: Canonical) -> Path:
    """Write ``<folder>/<sha256>.npz`` (atomically: a temporary file renamed); the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data.sha256}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, X=data.x, y=data.y)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------------------
# the engine's side


def upload_path(sha256: str, folder: str | os.PathLike[str] | None) -> Path:
    """The stored file of the upload ``sha256`` in ``folder`` (default: ``PLASTICITY_DATASET_DIR``)."""
    raw = folder if folder not in (None, "") else os.environ.get(DATASET_DIR_ENV) or None
    if raw is None:
        raise DatasetError(f"no folder of uploaded data sets: the spec's task.upload.dir is unset and so is "
                           f"{DATASET_DIR_ENV}")
    return Path(raw).expanduser() / f"{sha256}.npz"


def scale_unit(x: np.ndarray) -> np.ndarray:
    """X in [0, 1]: unchanged when it already is, else (X − min) / (max − min) in float32."""
    lo, hi = np.float32(x.min()), np.float32(x.max())
    if lo >= 0 and hi <= 1:
        return x
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


@functools.lru_cache(maxsize=8)
def _cached_upload(path: str, sha256: str, size: int, mtime_ns: int, ref: str) -> Dataset:
    return _read_upload(Path(path), sha256, ref)


def _read_upload(path: Path, sha256: str, ref: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            x, y = archive["X"], archive["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"cannot read the uploaded data set {ref} at {path}: {exc}") from exc
    if x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 2 or y.shape != (x.shape[0],):
        raise DatasetError(f"{path} is not a stored upload (X float32 (N, D), y int64 (N,))")
    found = content_sha256(x, y)
    if found != sha256:
        raise DatasetError(f"the uploaded data set {ref} at {path} has checksum {found}, not {sha256}")
    values, labels = np.unique(y, return_inverse=True)
    images = torch.from_numpy(np.ascontiguousarray(scale_unit(x), dtype=np.float32))
    root = math.isqrt(x.shape[1])
    return Dataset(images, torch.from_numpy(labels.astype(np.int64).reshape(-1)), len(values), ref,
                   root if root * root == x.shape[1] else None)


def load_upload(ref: str, sha256: str, folder: str | os.PathLike[str] | None, *, cache: bool = True) -> Dataset:
    """The uploaded data set ``ref`` (``upload:<id>``) from ``<folder>/<sha256>.npz``, checksum verified."""
    path = upload_path(sha256, folder)
    try:
        st = path.stat()
    except OSError as exc:
        raise DatasetError(f"the uploaded data set {ref} ({sha256[:12]}…) is not at {path}: was it deleted?") from exc
    if not cache:
        return _read_upload(path, sha256, ref)
    return _cached_upload(str(path.resolve()), sha256, st.st_size, st.st_mtime_ns, ref)


def load_task_data(task: TaskSpec, *, cache: bool = True, **extra: Any) -> Dataset:
    """The data set of a job's task: an upload (``"upload:<id>"``, read from ``task.upload``) or a built-in set
    by name (:func:`discovery.data.datasets.load_dataset` with ``extra``, e.g. synthetic's ``dim``)."""
    if task.dataset.startswith("upload:"):
        if task.upload is None:
            raise DatasetError(f"{task.dataset} is an uploaded data set: the spec needs task.upload (its checksum)")
        return load_upload(task.dataset, task.upload.sha256, task.upload.dir, cache=cache)
    return load_dataset(task.dataset, emnist_dir=task.emnist_dir, upsample=task.upsample, cache=cache, **extra)


def episode_problem(class_counts: list[int], *, ways: int, shots: int, queries: int,
                    heldout_fraction: float) -> str | None:
    """Why episodes of ``ways`` classes × (``shots`` + ``queries``) samples cannot be drawn from both the
    meta-train and the held-out split of a data set with these class sizes (None when they can): the split is
    the one :class:`~discovery.data.sampler.EpisodeSampler` makes, computed on the labels alone."""
    from discovery.data.sampler import EpisodeSampler

    labels = torch.arange(len(class_counts)).repeat_interleave(torch.tensor(class_counts, dtype=torch.long))
    stub = Dataset(torch.zeros(len(labels), 1), labels, len(class_counts), "upload", None)
    for split in ("train", "heldout"):
        try:
            EpisodeSampler(stub, ways, shots, queries, split=split, heldout_fraction=heldout_fraction)
        except ValueError as exc:
            return str(exc).replace("'upload'", "the data set")
    return None
