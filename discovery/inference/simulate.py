"""Simulate a small circuit learning under a rule and record it (ground truth for the inference).

A linear layer y = W x (n_post × n_pre) sees Gaussian inputs x_t ~ N(0, C) whose covariance has a clear eigengap
(the first ``n_post`` eigenvalues ``top`` .. ``top/2``, the others ``rest``, in a random orthonormal basis) and
learns online, one sample per step: W_{t+1} = W_t + Σ_r θ_r F_r(x_t, y_t, W_t) (θ by term name or id of the
unsupervised library; the default is Oja's subspace rule η(y xᵀ − y yᵀW)). Each trial starts from a fresh small
random W_0 and input stream, so the recording covers the learning transient.

Observation: every recorded series gets independent Gaussian noise of σ × its own standard deviation (over time
and neurons); ``subsample`` keeps a random subset of pre and post neurons (and the matching block of W). Output:
a :class:`discovery.inference.recording.Recording` (observed), the true weights, and writers for NWB and npz.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from discovery.inference.features import apply_rule, resolve
from discovery.inference.recording import Recording, validate

__all__ = ["OJA", "Simulation", "input_covariance", "simulate", "write_npz", "write_nwb"]

#: Oja's subspace rule with η = 0.005 (per step): ΔW = η (y xᵀ − y yᵀ W)
OJA: dict[str, float] = {"hebb": 0.005, "oja_decay": -0.005}


@dataclass
class Simulation:
    recording: Recording                 # what was observed (noise, subsampling)
    true_weights: np.ndarray             # (T, n, m) of the whole circuit, noise-free
    theta: dict[str, float]              # the rule, by term id
    pre_index: np.ndarray                # recorded pre neurons
    post_index: np.ndarray               # recorded post neurons
    info: dict = field(default_factory=dict)


def input_covariance(m: int, k: int, *, top: float = 4.0, rest: float = 0.25,
                     rng: np.random.Generator) -> np.ndarray:
    """A covariance (m × m) whose first k eigenvalues are linspace(top, top/2) and the rest ``rest``."""
    q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    lam = np.full(m, rest)
    lam[:k] = np.linspace(top, top / 2, k)
    return (q * lam) @ q.T


def simulate(rule: Mapping[str, float] | None = None, *, n_pre: int = 100, n_post: int = 10, n_steps: int = 400,
             n_trials: int = 8, noise: float = 0.1, subsample: tuple[int, int] | None = None, w0_scale: float = 0.02,
             top: float = 4.0, rest: float = 0.25, dt: float = 1.0, seed: int = 0) -> Simulation:
    """Simulate ``n_trials`` trials of ``n_steps`` steps under ``rule`` ({term name or id: θ per step}) and record
    them with observation noise σ = ``noise`` × std of each series; ``subsample`` = (pre kept, post kept)."""
    rng = np.random.default_rng(seed)
    names = dict(rule or OJA)
    ids = resolve(list(names))
    theta = np.array(list(names.values()), dtype=float)
    C = input_covariance(n_pre, n_post, top=top, rest=rest, rng=rng)
    L = np.linalg.cholesky(C)
    T = n_steps * n_trials
    X = np.empty((T, n_pre))
    Y = np.empty((T, n_post))
    Ws = np.empty((T, n_post, n_pre))
    for k in range(n_trials):
        W = rng.normal(scale=w0_scale, size=(n_post, n_pre))
        xs = rng.normal(size=(n_steps, n_pre)) @ L.T
        for t in range(n_steps):
            i = k * n_steps + t
            x = xs[t]
            yv = W @ x
            X[i], Y[i], Ws[i] = x, yv, W
            W = W + apply_rule(theta, x, yv, W, ids)
            if not np.all(np.isfinite(W)) or np.abs(W).max() > 1e6:
                raise FloatingPointError(f"the rule diverged in trial {k} at step {t}")
    pre_idx = np.arange(n_pre)
    post_idx = np.arange(n_post)
    if subsample is not None:
        pre_idx = np.sort(rng.choice(n_pre, size=min(subsample[0], n_pre), replace=False))
        post_idx = np.sort(rng.choice(n_post, size=min(subsample[1], n_post), replace=False))
    obs = []
    for arr in (X[:, pre_idx], Y[:, post_idx], Ws[:, post_idx][:, :, pre_idx]):
        obs.append(arr + noise * arr.std() * rng.normal(size=arr.shape) if noise > 0 else arr.copy())
    rec = validate(obs[0], obs[1], obs[2], dt=dt, trial_starts=np.arange(n_trials) * n_steps, source="simulated")
    info = {"rule": names, "n_pre": n_pre, "n_post": n_post, "n_steps": n_steps, "n_trials": n_trials,
            "noise": noise, "subsample": subsample, "w0_scale": w0_scale, "top": top, "rest": rest, "seed": seed}
    return Simulation(rec, Ws, dict(zip(ids, theta.tolist(), strict=True)), pre_idx, post_idx, info)


def write_npz(rec: Recording, path: str | Path) -> Path:
    """The recording as ``.npz`` (the layout ``read_npz`` reads)."""
    path = Path(path)
    arrays = {"pre": rec.pre, "post": rec.post, "dt": np.array(rec.dt), "trial_starts": np.array(rec.trial_starts),
              "nonlinearity": np.array(rec.circuit.nonlinearity)}
    if rec.weights is not None:
        arrays["weights"] = rec.weights
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


#: NCBI taxonomy "synthetic construct": the subject of a simulated recording is no animal
SYNTHETIC_SPECIES = "http://purl.obolibrary.org/obo/NCBITaxon_32630"


def nwb_file(description: str, identifier: str) -> Any:
    """An empty NWBFile with the metadata nwbinspector asks for (a simulated circuit as its subject)."""
    from pynwb import NWBFile
    from pynwb.file import Subject

    return NWBFile(session_description=description, identifier=identifier,
                   session_start_time=datetime(2024, 1, 1, tzinfo=UTC),
                   experiment_description="ground-truth recording of a simulated circuit learning under a known "
                   "plasticity rule (docs/inference.md)", institution="simulation", keywords=["plasticity",
                   "simulation", "rule inference"],
                   subject=Subject(subject_id="simulated-circuit", age="P0D", species=SYNTHETIC_SPECIES,
                                   sex="U", description="a simulated neural circuit (no animal)"))


def write_nwb(rec: Recording, path: str | Path, *, description: str = "simulated plasticity recording") -> Path:
    """The recording as NWB: TimeSeries 'pre', 'post' (and 'weights') in acquisition at rate 1/dt, one row of
    the trials table per trial, the nonlinearity in the 'post' series' comments."""
    from pynwb import NWBHDF5IO, TimeSeries

    path = Path(path)
    nwb = nwb_file(description, f"plasticity-{hashlib.sha256(rec.pre.tobytes()).hexdigest()[:16]}")
    rate = 1.0 / rec.dt
    nwb.add_acquisition(TimeSeries(name="pre", data=rec.pre, unit="a.u.", rate=rate, starting_time=0.0,
                                   description="presynaptic activity x_t (time × pre neurons)"))
    nwb.add_acquisition(TimeSeries(name="post", data=rec.post, unit="a.u.", rate=rate, starting_time=0.0,
                                   description="postsynaptic activity y_t (time × post neurons)",
                                   comments=f"nonlinearity={rec.circuit.nonlinearity}"))
    if rec.weights is not None:
        nwb.add_acquisition(TimeSeries(name="weights", data=rec.weights, unit="a.u.", rate=rate, starting_time=0.0,
                                       description="synaptic weights W_t (time × post × pre)"))
    for start, stop in rec.trials():
        nwb.add_trial(start_time=start * rec.dt, stop_time=stop * rec.dt)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path
