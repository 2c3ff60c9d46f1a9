"""Episode sampler: M-way, K-shot, Q-query tasks for meta-learning plasticity rules (docs/science.md S3).

An episode (task) draws M distinct classes, then K + Q distinct images of each class: the M·K training images
form the online stream (shuffled; one update each, batch 1) and the M·Q query images measure the adapted
network (meta-loss = query cross-entropy). Labels are remapped to 0..M−1 in the episode's (random) class order
when ``remap_labels`` (an M-way softmax), else kept as the data set's class ids.

Meta-train / held-out split (fixes the reference's "no meta-train / meta-test split"): for every class c the
images are permuted with a generator seeded by (split_seed, c) and the first round(f·n_c) (at least 1, at most
n_c − 1) go to the held-out pool, the rest to the meta-train pool (f = ``heldout_fraction``), so both splits
keep images of every class and never share an image. Data sets with many classes (≥ 20, e.g. EMNIST-balanced
with 47) also hold out round(f·C) whole classes by default (``heldout_classes=None``; pass an int for another
number, a list of class ids, or 0 to disable): those classes never appear in meta-train episodes and all their
images join the held-out pool. Held-out episodes therefore mix novel classes with unseen images of the
meta-train classes. The split depends only on (data set, heldout_fraction, heldout_classes, split_seed), not
on ``seed``, so a "train" and a "heldout" sampler built with different episode seeds stay disjoint.

Sampling is vectorized over the meta-batch: class choice = the first M of a random permutation of the split's
classes; image choice = the K+Q smallest of uniform keys over each class's (padded) pool; one torch.Generator
(seeded with ``seed``) drives everything, so the same seed gives the same episode sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from discovery.data.datasets import Dataset

__all__ = ["CLASS_HOLDOUT_MIN_CLASSES", "EpisodeSampler", "Episodes", "onehot"]

#: Data sets with at least this many classes hold out whole classes by default.
CLASS_HOLDOUT_MIN_CLASSES = 20

Split = Literal["train", "heldout"]


def onehot(labels: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot rows: (..., ) long labels in 0..n−1 → (..., n) tensor of ``dtype`` on the labels' device."""
    return F.one_hot(labels.long(), n).to(dtype)


@dataclass(eq=False)
class Episodes:
    """A meta-batch of B episodes of M classes, K training and Q query images per class.

    Attributes:
        x_train: (B, M·K, D) training images in online order (shuffled).
        y_train: (B, M·K) long labels (0..M−1 when remapped, else class ids).
        x_query: (B, M·Q, D) query images.
        y_query: (B, M·Q) long labels.
        classes: (B, M) long data-set class ids of each episode; with remapping, label j means ``classes[b, j]``.
        idx_train: (B, M·K) long data-set indices of the training images (bookkeeping, tests).
        idx_query: (B, M·Q) long data-set indices of the query images.
    """

    x_train: Tensor
    y_train: Tensor
    x_query: Tensor
    y_query: Tensor
    classes: Tensor
    idx_train: Tensor
    idx_query: Tensor

    @property
    def batch(self) -> int:
        """Number of episodes B."""
        return int(self.classes.shape[0])

    @property
    def ways(self) -> int:
        """Classes per episode M."""
        return int(self.classes.shape[1])

    @property
    def shots(self) -> int:
        """Training images per class K."""
        return int(self.y_train.shape[1]) // max(self.ways, 1)

    @property
    def queries(self) -> int:
        """Query images per class Q."""
        return int(self.y_query.shape[1]) // max(self.ways, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Episodes:
        """A copy on ``device``; images also cast to ``dtype`` when given (labels and indices stay long)."""
        moved: dict[str, Tensor] = {}
        for f in fields(self):
            t: Tensor = getattr(self, f.name)
            if f.name.startswith("x_") and dtype is not None:
                moved[f.name] = t.to(device=device, dtype=dtype)
            else:
                moved[f.name] = t.to(device=device)
        return Episodes(**moved)


class EpisodeSampler:
    """Draws meta-batches of M-way K-shot Q-query episodes from one split of a :class:`Dataset`.

    Args:
        dataset: the data set.
        ways: M, classes per episode (distinct, without replacement).
        shots: K, training images per class.
        queries: Q, query images per class (disjoint from the training images).
        split: ``"train"`` (meta-training pool) or ``"heldout"`` (meta-test pool).
        heldout_fraction: fraction f of each class's images in the held-out pool (0 < f < 1).
        remap_labels: labels 0..M−1 per episode (True) or the data set's class ids (False).
        seed: seed of the episode stream.
        heldout_classes: whole classes reserved for the held-out split: None = automatic (round(f·C) classes
            when the data set has ≥ 20 classes, else none), an int = that many (chosen with ``split_seed``),
            or a sequence of class ids.
        split_seed: seed of the image / class split (keep it equal for a train and a heldout sampler).

    Raises:
        ValueError: bad arguments, ways larger than the classes in the split, or a class in the split with
            fewer than K + Q images.
    """

    def __init__(
        self,
        dataset: Dataset,
        ways: int,
        shots: int,
        queries: int,
        *,
        split: Split = "train",
        heldout_fraction: float = 0.2,
        remap_labels: bool = True,
        seed: int = 0,
        heldout_classes: int | Sequence[int] | None = None,
        split_seed: int = 0,
    ) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if not 0.0 < float(heldout_fraction) < 1.0:
            raise ValueError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction}")
        if ways < 1 or shots < 1 or queries < 0:
            raise ValueError(f"need ways >= 1, shots >= 1, queries >= 0; got {ways}, {shots}, {queries}")
        self.dataset = dataset
        self.ways = int(ways)
        self.shots = int(shots)
        self.queries = int(queries)
        self.split: Split = split
        self.heldout_fraction = float(heldout_fraction)
        self.remap_labels = bool(remap_labels)
        self.seed = int(seed)
        self.split_seed = int(split_seed)

        labels_np = dataset.labels.numpy()
        present = np.unique(labels_np)
        self.heldout_classes: tuple[int, ...] = self._resolve_heldout_classes(heldout_classes, present)
        pools = self._split_pools(labels_np, present)
        self._check_pools(pools)

        class_ids = sorted(pools)
        counts = [len(pools[c]) for c in class_ids]
        width = max(counts)
        padded = torch.full((len(class_ids), width), -1, dtype=torch.long)
        for row, c in enumerate(class_ids):
            padded[row, : counts[row]] = torch.from_numpy(pools[c])
        #: (C,) data-set class ids available in this split, ascending.
        self.classes: Tensor = torch.tensor(class_ids, dtype=torch.long)
        self._pool = padded  # (C, P) data-set indices, −1 padding
        self._counts = torch.tensor(counts, dtype=torch.long)  # (C,)
        self._generator = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------------------------------------------
    # split

    def _resolve_heldout_classes(
        self, heldout_classes: int | Sequence[int] | None, present: np.ndarray
    ) -> tuple[int, ...]:
        n_present = len(present)
        if heldout_classes is None:
            k = round(self.heldout_fraction * n_present) if n_present >= CLASS_HOLDOUT_MIN_CLASSES else 0
        elif isinstance(heldout_classes, (int, np.integer)) and not isinstance(heldout_classes, bool):
            k = int(heldout_classes)
            if not 0 <= k < n_present:
                raise ValueError(f"heldout_classes={k} must lie in 0..{n_present - 1} ({n_present} classes)")
        else:
            chosen = sorted({int(c) for c in heldout_classes})
            unknown = sorted(set(chosen) - {int(c) for c in present})
            if unknown:
                raise ValueError(f"heldout_classes names classes {unknown} that the data set does not have")
            if len(chosen) >= n_present:
                raise ValueError("heldout_classes must leave at least one class for meta-training")
            return tuple(chosen)
        if k == 0:
            return ()
        rng = np.random.default_rng([self.split_seed, 0x48454C44])  # "HELD": independent of the image split
        return tuple(sorted(int(c) for c in rng.choice(present, size=k, replace=False)))

    def _split_pools(self, labels: np.ndarray, present: np.ndarray) -> dict[int, np.ndarray]:
        """Data-set indices of this split, per class (classes with no image in the split are left out)."""
        held = set(self.heldout_classes)
        pools: dict[int, np.ndarray] = {}
        for c in (int(c) for c in present):
            idx = np.flatnonzero(labels == c)
            perm = np.random.default_rng([self.split_seed, c]).permutation(idx)
            n_c = len(perm)
            n_held = min(max(round(self.heldout_fraction * n_c), 1), n_c - 1) if n_c >= 2 else 0
            if c in held:
                pool = perm if self.split == "heldout" else perm[:0]
            else:
                pool = perm[:n_held] if self.split == "heldout" else perm[n_held:]
            if len(pool):
                pools[c] = np.sort(pool).astype(np.int64)
        return pools

    def _check_pools(self, pools: dict[int, np.ndarray]) -> None:
        if self.ways > len(pools):
            raise ValueError(
                f"ways={self.ways} but the {self.split!r} split of {self.dataset.name!r} has only {len(pools)} "
                f"classes (held-out classes: {len(self.heldout_classes)})"
            )
        need = self.shots + self.queries
        small = {c: len(p) for c, p in pools.items() if len(p) < need}
        if small:
            c, n = min(small.items(), key=lambda kv: kv[1])
            raise ValueError(
                f"class {c} has only {n} images in the {self.split!r} split of {self.dataset.name!r} but an "
                f"episode needs shots + queries = {need} ({len(small)} classes too small); lower shots/queries "
                f"or change heldout_fraction (now {self.heldout_fraction})"
            )

    # ------------------------------------------------------------------------------------------------------
    # sampling

    @property
    def n_outputs(self) -> int:
        """Label range: M with remapping, else the data set's number of classes."""
        return self.ways if self.remap_labels else self.dataset.n_classes

    @property
    def indices(self) -> Tensor:
        """All data-set indices in this split, ascending (long, CPU)."""
        flat = self._pool[self._pool >= 0]
        return torch.sort(flat).values

    def get_state(self) -> Tensor:
        """State of the episode generator (for checkpoints)."""
        return self._generator.get_state()

    def set_state(self, state: Tensor) -> None:
        """Restore a state from :meth:`get_state`; the episode stream continues from there."""
        self._generator.set_state(state)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the episode stream from ``seed`` (default: the current ``self.seed``); the split is unchanged."""
        if seed is not None:
            self.seed = int(seed)
        self._generator.manual_seed(self.seed)

    def sample(
        self, batch: int = 1, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Episodes:
        """Draw B = ``batch`` episodes; advances the internal generator.

        Returns:
            :class:`Episodes` with images of ``dtype`` and labels / classes / indices (long) on ``device``.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        g = self._generator
        m, k, q = self.ways, self.shots, self.queries
        n_cls, width = self._pool.shape

        # M distinct classes per episode: the first M of a random permutation of the split's classes.
        cls_pos = torch.rand(batch, n_cls, generator=g).argsort(dim=1)[:, :m]  # (B, M) rows of _pool
        # K+Q distinct images per class: the K+Q smallest uniform keys among the class's valid pool entries.
        keys = torch.rand(batch, m, width, generator=g)
        valid = torch.arange(width) < self._counts[cls_pos].unsqueeze(-1)  # (B, M, P)
        keys = keys.masked_fill_(~valid, 2.0)
        pos = keys.topk(k + q, dim=2, largest=False).indices  # (B, M, K+Q), random order
        idx = torch.gather(self._pool[cls_pos], 2, pos)  # (B, M, K+Q) data-set indices

        classes = self.classes[cls_pos]  # (B, M)
        lab = torch.arange(m).expand(batch, m) if self.remap_labels else classes
        idx_train = idx[:, :, :k].reshape(batch, m * k)
        idx_query = idx[:, :, k:].reshape(batch, m * q)
        y_train = lab.unsqueeze(-1).expand(batch, m, k).reshape(batch, m * k)
        y_query = lab.unsqueeze(-1).expand(batch, m, q).reshape(batch, m * q)

        # Online order: shuffle the training stream (and the query set) within each episode.
        perm = torch.rand(batch, m * k, generator=g).argsort(dim=1)
        idx_train, y_train = idx_train.gather(1, perm), y_train.gather(1, perm)
        if q:
            perm_q = torch.rand(batch, m * q, generator=g).argsort(dim=1)
            idx_query, y_query = idx_query.gather(1, perm_q), y_query.gather(1, perm_q)

        images = self.dataset.images
        x_train = images[idx_train]  # (B, M·K, D)
        x_query = images[idx_query]  # (B, M·Q, D)
        return Episodes(
            x_train=x_train.to(device=device, dtype=dtype),
            y_train=y_train.contiguous().to(device),
            x_query=x_query.to(device=device, dtype=dtype),
            y_query=y_query.contiguous().to(device),
            classes=classes.contiguous().to(device),
            idx_train=idx_train.to(device),
            idx_query=idx_query.to(device),
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.dataset.name!r}, ways={self.ways}, shots={self.shots}, queries={self.queries}, "
            f"split={self.split!r}, classes={len(self.classes)}, images={int(self._counts.sum())}, seed={self.seed})"
        )
