"""Data for meta-learning plasticity rules (docs/science.md S3, "Meta-learning protocol" and "Data").

Public entry point of the data layer; the code lives in :mod:`discovery.data.datasets` (offline data sets: mnist5k,
digits / digits28, EMNIST-balanced from local IDX files, synthetic) and :mod:`discovery.data.sampler` (M-way K-shot
Q-query episodes with a disjoint meta-train / held-out split).

Episode: M distinct classes, K training images per class streamed online in shuffled order (x_train, y_train of
shape (B, M·K, D), (B, M·K)), Q query images per class (x_query, y_query of shape (B, M·Q, D), (B, M·Q)) for
the meta-loss (query cross-entropy + λ Σ_r |θ_r|). Images are the network input y_0 ∈ [0, 1]^D.
"""

from __future__ import annotations

from discovery.data.datasets import (
    DATASET_NAMES,
    EMNIST_BALANCED_CLASSES,
    EMNIST_ENV,
    Dataset,
    DatasetError,
    clear_cache,
    load_dataset,
    make_synthetic,
    read_idx,
)
from discovery.data.sampler import CLASS_HOLDOUT_MIN_CLASSES, Episodes, EpisodeSampler, onehot

__all__ = [
    "CLASS_HOLDOUT_MIN_CLASSES",
    "DATASET_NAMES",
    "EMNIST_BALANCED_CLASSES",
    "EMNIST_ENV",
    "Dataset",
    "DatasetError",
    "EpisodeSampler",
    "Episodes",
    "clear_cache",
    "load_dataset",
    "make_synthetic",
    "onehot",
    "read_idx",
]
