"""Tests of discovery.data: offline loaders (mnist5k, digits, EMNIST IDX, synthetic) and the episode sampler."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.data import (
    EMNIST_ENV,
    Dataset,
    DatasetError,
    Episodes,
    EpisodeSampler,
    clear_cache,
    load_dataset,
    make_synthetic,
    onehot,
)

MISSING_MSG = "set PLASTICITY_EMNIST_DIR to the folder holding emnist-balanced-test-images-idx3-ubyte(.gz)"


@pytest.fixture(scope="module")
def synth() -> Dataset:
    return load_dataset("synthetic", dim=16, n_classes=8, per_class=30, seed=3)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


# --------------------------------------------------------------------------------------------------------------
# loaders


def _check_dataset(d: Dataset, n: int, dim: int, n_classes: int) -> None:
    assert d.images.shape == (n, dim) and d.images.dtype == torch.float32 and d.images.device.type == "cpu"
    assert d.labels.shape == (n,) and d.labels.dtype == torch.long
    assert float(d.images.min()) >= 0.0 and float(d.images.max()) <= 1.0
    assert d.n_classes == n_classes and int(d.labels.max()) < n_classes


def test_mnist5k_loads() -> None:
    d = load_dataset("mnist5k")
    _check_dataset(d, 5000, 784, 10)
    assert d.name == "mnist5k" and d.side == 28
    assert d.class_counts().tolist() == [500] * 10
    assert float(d.images.max()) == 1.0
    assert load_dataset("mnist5k") is d  # cached


def test_digits_and_upsampling(digits: Dataset) -> None:
    _check_dataset(digits, 1797, 64, 10)
    assert digits.side == 8 and float(digits.images.max()) == 1.0
    up = load_dataset("digits", upsample=True)
    _check_dataset(up, 1797, 784, 10)
    assert up.side == 28 and up.name == "digits28"
    assert load_dataset("digits28") is up
    assert torch.equal(up.labels, digits.labels)
    # Bilinear upsampling keeps the mean brightness roughly and the picture's shape: downsample back and compare.
    back = torch.nn.functional.interpolate(up.images.view(-1, 1, 28, 28), size=(8, 8), mode="area").view(-1, 64)
    assert float((back - digits.images).abs().mean()) < 0.1


def test_synthetic_seeded_and_learnable() -> None:
    a = make_synthetic(dim=50, n_classes=4, per_class=20, seed=1)
    b = load_dataset("synthetic", dim=50, n_classes=4, per_class=20, seed=1, cache=False)
    c = make_synthetic(dim=50, n_classes=4, per_class=20, seed=2)
    _check_dataset(a, 80, 50, 4)
    assert a.side is None and load_dataset("synthetic").side == 28
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    # Nearest class mean classifies it almost perfectly.
    means = torch.stack([a.images[a.labels == k].mean(0) for k in range(4)])
    pred = torch.cdist(a.images, means).argmin(1)
    assert float((pred == a.labels).float().mean()) > 0.95


def test_cache_and_unknown_name() -> None:
    x = load_dataset("synthetic", dim=9, n_classes=3, per_class=5)
    assert load_dataset("synthetic", dim=9, n_classes=3, per_class=5) is x
    assert load_dataset("synthetic", dim=9, n_classes=3, per_class=5, cache=False) is not x
    clear_cache()
    assert load_dataset("synthetic", dim=9, n_classes=3, per_class=5) is not x
    with pytest.raises(DatasetError, match="unknown data set") as info:
        load_dataset("cifar")
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------------------------------
# EMNIST IDX files


def _idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | arr.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> None:
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _emnist_arrays(n_classes: int = 3, per_class: int = 4, side: int = 28, seed: int = 0):
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 256, size=(n_classes * per_class, side, side), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes, dtype=np.uint8), per_class)
    return stored, labels


def _write_emnist(folder: Path, stored: np.ndarray, labels: np.ndarray, *, part: str = "test", gz: bool = False,
                  img_magic: int | None = None, lbl_magic: int | None = None, cut_images: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = _idx_bytes(stored, img_magic)
    _write(folder / f"emnist-balanced-{part}-images-idx3-ubyte", img[: len(img) - cut_images], gz)
    _write(folder / f"emnist-balanced-{part}-labels-idx1-ubyte", _idx_bytes(labels, lbl_magic), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_emnist_loads_raw_and_gz(tmp_path: Path, gz: bool) -> None:
    stored, labels = _emnist_arrays()
    stored[0] = 0
    stored[0, 0, 5] = 255  # stored transposed: row 0, column 5 → upright row 5, column 0
    _write_emnist(tmp_path, stored, labels, gz=gz)
    d = load_dataset("emnist-balanced", emnist_dir=tmp_path)
    _check_dataset(d, 12, 784, 47)
    assert d.side == 28 and d.name == "emnist-balanced"
    assert d.labels.tolist() == labels.tolist()
    upright = d.images.view(-1, 28, 28)
    assert float(upright[0, 5, 0]) == 1.0 and float(upright[0, 0, 5]) == 0.0
    expected = torch.from_numpy(stored.transpose(0, 2, 1).reshape(12, 784).astype(np.float32) / 255.0)
    assert torch.equal(d.images, expected)


def test_emnist_env_var_and_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test_x, test_y = _emnist_arrays(seed=1)
    train_x, train_y = _emnist_arrays(per_class=2, seed=2)
    _write_emnist(tmp_path, test_x, test_y)
    _write_emnist(tmp_path, train_x, train_y, part="train", gz=True)
    monkeypatch.setenv(EMNIST_ENV, str(tmp_path))
    assert load_dataset("emnist-balanced").n == 12
    assert load_dataset("emnist-balanced", emnist_split="train").n == 6
    both = load_dataset("emnist-balanced", emnist_split="all")
    assert both.n == 18 and both.labels.tolist() == test_y.tolist() + train_y.tolist()
    with pytest.raises(DatasetError, match="emnist_split"):
        load_dataset("emnist-balanced", emnist_split="validation")  # type: ignore[arg-type]


def test_emnist_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMNIST_ENV, raising=False)
    with pytest.raises(DatasetError) as info:
        load_dataset("emnist-balanced")
    assert MISSING_MSG in str(info.value)
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_dataset("emnist-balanced", emnist_dir=tmp_path / "nope")
    assert MISSING_MSG in str(info.value)
    monkeypatch.setenv(EMNIST_ENV, str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("emnist-balanced")


def test_emnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="emnist-balanced-test-images-idx3-ubyte"):
        load_dataset("emnist-balanced", emnist_dir=tmp_path)
    stored, labels = _emnist_arrays()
    (tmp_path / "emnist-balanced-test-images-idx3-ubyte").write_bytes(_idx_bytes(stored))
    with pytest.raises(DatasetError, match="emnist-balanced-test-labels-idx1-ubyte"):
        load_dataset("emnist-balanced", emnist_dir=tmp_path)
    _write_emnist(tmp_path / "x", stored, labels)
    with pytest.raises(DatasetError, match="emnist-balanced-train-images"):
        load_dataset("emnist-balanced", emnist_dir=tmp_path / "x", emnist_split="train")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"img_magic": 0x00000801}, "bad IDX magic 0x00000801, expected 0x00000803"),
        ({"img_magic": 0x12345678}, "bad IDX magic"),
        ({"lbl_magic": 0x00000803}, "bad IDX magic 0x00000803, expected 0x00000801"),
        ({"cut_images": 1}, "truncated"),
        ({"cut_images": 28 * 28 * 12 + 8}, "truncated: the header"),
    ],
)
def test_emnist_malformed(tmp_path: Path, gz: bool, kwargs: dict, match: str) -> None:
    stored, labels = _emnist_arrays()
    _write_emnist(tmp_path, stored, labels, gz=gz, **kwargs)
    with pytest.raises(DatasetError, match=match):
        load_dataset("emnist-balanced", emnist_dir=tmp_path, cache=False)


def test_emnist_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    stored, labels = _emnist_arrays()
    _write_emnist(tmp_path / "a", stored, labels[:-1])
    with pytest.raises(DatasetError, match="count mismatch: .* 12 images, .* 11 labels"):
        load_dataset("emnist-balanced", emnist_dir=tmp_path / "a")
    _write_emnist(tmp_path / "b", stored, np.full_like(labels, 47))
    with pytest.raises(DatasetError, match="label 47"):
        load_dataset("emnist-balanced", emnist_dir=tmp_path / "b")
    folder = tmp_path / "c"
    _write_emnist(folder, stored, labels)
    with open(folder / "emnist-balanced-test-labels-idx1-ubyte", "ab") as fh:
        fh.write(b"\x00\x01")
    with pytest.raises(DatasetError, match="trailing bytes"):
        load_dataset("emnist-balanced", emnist_dir=folder)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "emnist-balanced-test-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "d" / "emnist-balanced-test-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset("emnist-balanced", emnist_dir=tmp_path / "d")


def test_emnist_sampler_holds_out_classes(tmp_path: Path) -> None:
    stored, labels = _emnist_arrays(n_classes=25, per_class=10, side=4)
    _write_emnist(tmp_path, stored, labels)
    d = load_dataset("emnist-balanced", emnist_dir=tmp_path)
    assert d.side == 4 and d.dim == 16
    tr = EpisodeSampler(d, 5, 3, 2)
    ho = EpisodeSampler(d, 5, 1, 1, split="heldout", seed=9)
    assert len(tr.heldout_classes) == 5  # round(0.2 · 25)
    assert set(tr.classes.tolist()).isdisjoint(tr.heldout_classes)
    assert set(tr.heldout_classes) <= set(ho.classes.tolist()) and len(ho.classes) == 25
    assert set(tr.indices.tolist()).isdisjoint(ho.indices.tolist())
    assert len(tr.indices) + len(ho.indices) == 250
    seen = set(tr.sample(40).classes.flatten().tolist())
    assert seen.isdisjoint(tr.heldout_classes)


# --------------------------------------------------------------------------------------------------------------
# sampler


def _check_episodes(ep: Episodes, d: Dataset, s: EpisodeSampler, batch: int) -> None:
    m, k, q, dim = s.ways, s.shots, s.queries, d.dim
    assert ep.x_train.shape == (batch, m * k, dim) and ep.x_query.shape == (batch, m * q, dim)
    assert ep.y_train.shape == (batch, m * k) and ep.y_query.shape == (batch, m * q)
    assert ep.classes.shape == (batch, m)
    assert ep.y_train.dtype == ep.y_query.dtype == ep.classes.dtype == torch.long
    assert (ep.batch, ep.ways, ep.shots, ep.queries) == (batch, m, k, q)
    split_idx = set(s.indices.tolist())
    for b in range(batch):
        cls = ep.classes[b]
        assert len(set(cls.tolist())) == m  # distinct classes
        tr, qu = ep.idx_train[b].tolist(), ep.idx_query[b].tolist()
        assert len(set(tr)) == len(tr) and len(set(qu)) == len(qu) and set(tr).isdisjoint(qu)
        assert set(tr) <= split_idx and set(qu) <= split_idx
        assert torch.equal(ep.x_train[b], d.images[ep.idx_train[b]])
        assert torch.equal(ep.x_query[b], d.images[ep.idx_query[b]])
        for y, idx in ((ep.y_train[b], ep.idx_train[b]), (ep.y_query[b], ep.idx_query[b])):
            if y.numel() == 0:
                continue
            if s.remap_labels:
                assert int(y.min()) >= 0 and int(y.max()) < m
                assert torch.equal(cls[y], d.labels[idx])
            else:
                assert torch.equal(y, d.labels[idx]) and set(y.tolist()) <= set(cls.tolist())
        assert torch.bincount(ep.y_train[b], minlength=s.n_outputs).max() == k


@settings(max_examples=30, deadline=None)
@given(
    ways=st.integers(1, 8),
    shots=st.integers(1, 12),
    queries=st.integers(0, 10),
    batch=st.integers(1, 4),
    remap=st.booleans(),
    split=st.sampled_from(["train", "heldout"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_sampler_properties(synth: Dataset, ways: int, shots: int, queries: int, batch: int, remap: bool,
                            split: str, seed: int) -> None:
    # 30 images per class: the held-out pool has 6 (fraction 0.2) or 15 (fraction 0.5) per class.
    frac = 0.2 if split == "train" else 0.5
    need = shots + queries
    available = 24 if split == "train" else 15
    if need > available:
        with pytest.raises(ValueError, match="shots \\+ queries"):
            EpisodeSampler(synth, ways, shots, queries, split=split, heldout_fraction=frac)  # type: ignore[arg-type]
        return
    s = EpisodeSampler(synth, ways, shots, queries, split=split, heldout_fraction=frac,  # type: ignore[arg-type]
                       remap_labels=remap, seed=seed)
    _check_episodes(s.sample(batch), synth, s, batch)


def test_train_order_shuffled(synth: Dataset) -> None:
    s = EpisodeSampler(synth, 4, 10, 2)
    ep = s.sample(3)
    for b in range(3):
        y = ep.y_train[b]
        assert int((y[1:] != y[:-1]).sum()) > 3  # not grouped by class


def test_splits_disjoint_every_class_in_both(synth: Dataset, digits: Dataset) -> None:
    for d, frac in ((synth, 0.2), (digits, 0.3)):
        tr = EpisodeSampler(d, 2, 1, 1, heldout_fraction=frac, seed=1)
        ho = EpisodeSampler(d, 2, 1, 1, split="heldout", heldout_fraction=frac, seed=2)
        a, b = set(tr.indices.tolist()), set(ho.indices.tolist())
        assert a.isdisjoint(b) and len(a) + len(b) == d.n
        assert tr.heldout_classes == () and tr.classes.tolist() == ho.classes.tolist() == list(range(d.n_classes))
        counts = torch.bincount(d.labels[ho.indices], minlength=d.n_classes)
        expected = torch.round(d.class_counts() * frac)
        assert torch.equal(counts, expected.long())
    # the split does not depend on the episode seed
    assert torch.equal(EpisodeSampler(synth, 2, 1, 1, seed=5).indices, EpisodeSampler(synth, 2, 1, 1).indices)
    assert not torch.equal(EpisodeSampler(synth, 2, 1, 1, split_seed=1).indices,
                           EpisodeSampler(synth, 2, 1, 1).indices)


def test_heldout_classes_option() -> None:
    d = load_dataset("synthetic", dim=4, n_classes=30, per_class=10)
    auto = EpisodeSampler(d, 3, 2, 1)
    assert len(auto.heldout_classes) == 6 and len(auto.classes) == 24
    none = EpisodeSampler(d, 3, 2, 1, heldout_classes=0)
    assert none.heldout_classes == () and len(none.classes) == 30
    explicit = EpisodeSampler(d, 3, 2, 1, heldout_classes=[0, 29])
    assert explicit.heldout_classes == (0, 29) and 0 not in explicit.classes.tolist()
    ho = EpisodeSampler(d, 3, 1, 1, split="heldout", heldout_classes=[0, 29])
    assert int((d.labels[ho.indices] == 0).sum()) == 10  # all images of a held-out class
    assert len(EpisodeSampler(d, 3, 2, 1, heldout_classes=4).heldout_classes) == 4
    small = load_dataset("synthetic", dim=4, n_classes=10, per_class=10)
    assert EpisodeSampler(small, 3, 2, 1).heldout_classes == ()  # fewer than 20 classes: none by default
    with pytest.raises(ValueError, match="does not have"):
        EpisodeSampler(d, 3, 2, 1, heldout_classes=[31])
    with pytest.raises(ValueError, match="ways=25"):
        EpisodeSampler(d, 25, 2, 1)


def test_seed_determinism_and_state(synth: Dataset) -> None:
    a, b, c = (EpisodeSampler(synth, 3, 4, 2, seed=s) for s in (7, 7, 8))
    seq_a = [a.sample(2) for _ in range(3)]
    seq_b = [b.sample(2) for _ in range(3)]
    for ea, eb in zip(seq_a, seq_b):
        assert torch.equal(ea.x_train, eb.x_train) and torch.equal(ea.y_query, eb.y_query)
        assert torch.equal(ea.idx_query, eb.idx_query) and torch.equal(ea.classes, eb.classes)
    assert not torch.equal(seq_a[0].idx_train, seq_a[1].idx_train)  # sample advances the generator
    assert not torch.equal(c.sample(2).idx_train, seq_a[0].idx_train)
    state = a.get_state()
    nxt = a.sample(2)
    a.set_state(state)
    assert torch.equal(a.sample(2).idx_train, nxt.idx_train)
    a.reseed()
    assert torch.equal(a.sample(2).idx_train, seq_a[0].idx_train)
    a.reseed(8)
    assert torch.equal(a.sample(2).idx_train, EpisodeSampler(synth, 3, 4, 2, seed=8).sample(2).idx_train)


def test_remap_off_keeps_original_labels(synth: Dataset) -> None:
    s = EpisodeSampler(synth, 3, 5, 2, remap_labels=False, seed=4)
    ep = s.sample(5)
    assert s.n_outputs == synth.n_classes
    assert torch.equal(ep.y_train, synth.labels[ep.idx_train]) and torch.equal(ep.y_query, synth.labels[ep.idx_query])
    assert int(ep.y_train.max()) >= 3  # original ids, not 0..M−1 (5 episodes of 3 of 8 classes)


def test_sampler_errors(synth: Dataset) -> None:
    with pytest.raises(ValueError, match="ways=9"):
        EpisodeSampler(synth, 9, 1, 1)
    with pytest.raises(ValueError, match="only 24 images in the 'train' split"):
        EpisodeSampler(synth, 2, 20, 5)
    with pytest.raises(ValueError, match="split"):
        EpisodeSampler(synth, 2, 1, 1, split="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heldout_fraction"):
        EpisodeSampler(synth, 2, 1, 1, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="shots"):
        EpisodeSampler(synth, 2, 0, 1)
    with pytest.raises(ValueError, match="batch"):
        EpisodeSampler(synth, 2, 1, 1).sample(0)


def test_dtype_device_and_onehot(digits: Dataset) -> None:
    s = EpisodeSampler(digits, 5, 20, 5, seed=0)
    ep = s.sample(2, device="cpu", dtype=torch.float64)
    assert ep.x_train.dtype == ep.x_query.dtype == torch.float64
    _check_episodes(ep.to("cpu", torch.float32), digits, s, 2)
    moved = ep.to("cpu")
    assert moved.x_train.dtype == torch.float64 and moved.y_train.dtype == torch.long
    oh = onehot(ep.y_train, 5)
    assert oh.shape == (2, 100, 5) and oh.dtype == torch.float32
    assert torch.equal(oh.sum(-1), torch.ones(2, 100)) and torch.equal(oh.argmax(-1), ep.y_train)
    assert onehot(torch.tensor([1]), 3, torch.float64).tolist() == [[0.0, 1.0, 0.0]]


def test_paper_protocol_on_mnist5k() -> None:
    d = load_dataset("mnist5k")
    tr = EpisodeSampler(d, 5, 50, 10)
    ho = EpisodeSampler(d, 5, 50, 10, split="heldout", seed=1)
    ep = tr.sample(2)
    assert ep.x_train.shape == (2, 250, 784) and ep.x_query.shape == (2, 50, 784)
    assert set(tr.indices.tolist()).isdisjoint(ho.indices.tolist())
    assert ho.sample(1).x_query.shape == (1, 50, 784)
