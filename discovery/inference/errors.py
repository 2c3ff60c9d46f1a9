"""Error-driven feed-forward rules from recordings of a deep network (docs/inference.md, docs/science.md S3).

A depth-L network (softplus β = 10 hidden layers, softmax output as the rule sees it) learns online under
ΔW_ℓ = Σ_r θ_r F_r(y_{ℓ−1}, y_ℓ, e_ℓ, e_{ℓ−1}, W_ℓ), one θ_r shared by all layers, with the teaching signals of
feedback alignment: e_L = softmax(z_L) − onehot, e_ℓ = (e_{ℓ+1} B_{ℓ+1}) ⊙ (1 − exp(−β y_ℓ)) with fixed random B
(``discovery.feedforward.network``). A *layered recording* holds, per step, the activities y_0..y_L, the errors
e_0..e_L and the weights W_1..W_L. The terms are the feed-forward library's (``rules.terms``) evaluated by the
rule compiler on the recorded quantities; the layers are stacked along the synapse axis, so the weights-observed
fit (``discovery.inference.fit``: integrated least squares, best subsets, held-out explained variance of weight
changes, bootstrap) runs unchanged.

Layout (npz or NWB ``TimeSeries`` in ``acquisition``): ``y_0`` … ``y_L`` (T, n_ℓ), ``e_0`` … ``e_L`` (T, n_ℓ),
``W_1`` … ``W_L`` (T, n_ℓ, n_{ℓ−1}); ``dt`` or the series' rate; trials as in a one-layer recording.
"""

from __future__ import annotations

import io
import itertools
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from discovery.inference.fit import Design, InferenceResult, infer_rule
from discovery.inference.recording import MIN_STEPS, RecordingError, _array
from discovery.results import RuleData
from rules.rule import Rule
from rules.terms import POOLS, TERMS, term

__all__ = ["FF_LIBRARY", "S3_RULE", "LayeredRecording", "design_of_layers", "infer_layered", "read_layered_npz",
           "read_layered_nwb", "simulate_layered", "write_layered_npz", "write_layered_nwb"]

#: the S3 rule F0 + F2 + F9 with the published signs in the project's convention (docs/science.md S3): θ0 > 0
#: (pseudo-gradient), θ2 < 0 (eHebb aligns W with B), θ9 > 0 (Oja)
S3_RULE: dict[str, float] = {"F0": 0.05, "F2": -0.02, "F9": 0.01}
_OJA_PART = "y*(y.T*W)"


def _library() -> list[str]:
    """bio10, hebb and the base library without y (yᵀW) (F9 = y xᵀ − y yᵀW would otherwise be a sum of two)."""
    ids = list(dict.fromkeys([*POOLS["bio10"], "hebb", *POOLS["library"]]))
    return [i for i in ids if TERMS[i].text.replace(" ", "") != _OJA_PART]


#: the feed-forward terms searched (21 ids)
FF_LIBRARY: list[str] = _library()


class LayeredRecording(BaseModel):
    """Validated layered recording (float64): activities y_0..y_L, errors e_0..e_L, weights W_1..W_L."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    activity: list[np.ndarray]
    errors: list[np.ndarray]
    weights: list[np.ndarray]
    dt: float = 1.0
    trial_starts: tuple[int, ...] = (0,)
    source: str = ""

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def n_steps(self) -> int:
        return int(self.activity[0].shape[0])

    def trials(self) -> list[tuple[int, int]]:
        bounds = [*self.trial_starts, self.n_steps]
        return [(bounds[i], bounds[i + 1]) for i in range(len(self.trial_starts))]

    def summary(self) -> dict[str, Any]:
        return {"kind": "layered", "widths": [int(a.shape[1]) for a in self.activity], "depth": self.depth,
                "n_steps": self.n_steps, "n_trials": len(self.trial_starts), "dt": self.dt,
                "weights_observed": True, "errors_observed": True, "source": self.source}


def validate_layers(activity: Sequence[Any], errors: Sequence[Any], weights: Sequence[Any], *, dt: float = 1.0,
                    trial_starts: Any = None, source: str = "") -> LayeredRecording:
    """A :class:`LayeredRecording` from raw arrays, or a :class:`RecordingError` naming the series and problem."""
    if len(activity) < 2:
        raise RecordingError("a layered recording needs activities y_0 and y_1 at least")
    if len(errors) != len(activity):
        raise RecordingError(f"errors e_0..e_L must match the activities y_0..y_L: {len(activity)} activities, "
                             f"{len(errors)} errors")
    if len(weights) != len(activity) - 1:
        raise RecordingError(f"weights W_1..W_L: expected {len(activity) - 1}, got {len(weights)}")
    ys = [_array(f"y_{i}", a, 2) for i, a in enumerate(activity)]
    es = [_array(f"e_{i}", a, 2) for i, a in enumerate(errors)]
    Ws = [_array(f"W_{i + 1}", a, 3) for i, a in enumerate(weights)]
    T = ys[0].shape[0]
    for name, arr in [*((f"y_{i}", a) for i, a in enumerate(ys)), *((f"e_{i}", a) for i, a in enumerate(es)),
                      *((f"W_{i + 1}", a) for i, a in enumerate(Ws))]:
        if arr.shape[0] != T:
            raise RecordingError(f"length mismatch: {name!r} has {arr.shape[0]} time steps, 'y_0' has {T}")
    for i, (e, y) in enumerate(zip(es, ys, strict=True)):
        if e.shape != y.shape:
            raise RecordingError(f"series 'e_{i}' must have the shape of 'y_{i}' {y.shape}, got {e.shape}")
    for i, W in enumerate(Ws):
        want = (ys[i + 1].shape[1], ys[i].shape[1])
        if W.shape[1:] != want:
            raise RecordingError(f"series 'W_{i + 1}' must be (T, n_{i + 1}, n_{i}) = (T, {want[0]}, {want[1]}), "
                                 f"got {W.shape}")
    if not (math.isfinite(float(dt)) and float(dt) > 0):
        raise RecordingError(f"the time step must be finite and > 0, got {dt}")
    starts = (0,) if trial_starts is None else tuple(int(s) for s in np.asarray(trial_starts).ravel())
    if not starts or starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
        raise RecordingError(f"trial starts must begin at 0 and increase strictly, got {list(starts)}")
    bounds = [*starts, T]
    if any(bounds[i + 1] - bounds[i] < MIN_STEPS for i in range(len(starts))):
        raise RecordingError(f"every trial needs at least {MIN_STEPS} time steps")
    return LayeredRecording(activity=ys, errors=es, weights=Ws, dt=float(dt), trial_starts=starts, source=source)


# ------------------------------------------------------------------------------------------------ the design

def _env(rec: LayeredRecording, layer: int, a: int, b: int) -> dict[str, torch.Tensor]:
    """The primitives of layer ``layer`` (1-based) over steps [a, b): x = y_{ℓ−1}, y = y_ℓ, e, e_pre, W."""
    arrays = {"x": rec.activity[layer - 1], "y": rec.activity[layer], "e": rec.errors[layer],
              "e_pre": rec.errors[layer - 1], "W": rec.weights[layer - 1]}
    return {k: torch.from_numpy(np.ascontiguousarray(v[a:b])) for k, v in arrays.items()}


def ff_rule_data(theta: Mapping[str, float], name: str) -> RuleData:
    """The feed-forward rule Σ θ_r F_r (zero coefficients dropped)."""
    return RuleData(**Rule({k: v for k, v in theta.items() if v != 0}, name=name).to_dict())


def design_of_layers(rec: LayeredRecording, ids: Sequence[str] = FF_LIBRARY) -> Design:
    """Every layer's synapses stacked along E; F_r of each layer by the rule compiler on the recorded values."""
    from rules.compiler import compile_terms

    ids = [term(i).id for i in ids]
    compiled = [compile_terms([TERMS[i].expr]) for i in ids]
    one = torch.ones(1, dtype=torch.float64)

    def feats(a: int, b: int) -> np.ndarray:
        blocks = []
        for layer in range(1, rec.depth + 1):
            env = _env(rec, layer, a, b)
            blocks.append(torch.stack([c.delta(one, env).expand_as(env["W"]) for c in compiled], 1)
                          .reshape(b - a, len(ids), -1))
        return torch.cat(blocks, 2).numpy()

    W = np.concatenate([w.reshape(w.shape[0], -1) for w in rec.weights], 1)
    return Design(ids=ids, names={i: TERMS[i].name for i in ids}, trials=rec.trials(), weights=W, features=feats,
                  make_rule=ff_rule_data, summary=rec.summary())


def infer_layered(rec: LayeredRecording, *, library: Sequence[str] | None = None, **kwargs: Any) -> InferenceResult:
    """The sparse feed-forward rule behind a layered recording (weights and errors observed)."""
    res = infer_rule(design_of_layers(rec, library or FF_LIBRARY), **kwargs)
    res.provenance["family"] = "feedforward"
    return res


# ------------------------------------------------------------------------------------------------ simulator

def simulate_layered(rule: Mapping[str, float] | None = None, *, widths: Sequence[int] = (20, 16, 12, 4),
                     n_steps: int = 300, n_trials: int = 8, noise: float = 0.1, beta: float = 10.0,
                     seed: int = 0) -> LayeredRecording:
    """``n_trials`` trials (fresh Xavier W and random feedback B each) of online learning of a Gaussian-cluster
    classification task (inputs in [0, 1], as pixels: e_0 treats them as softplus outputs) under ``rule`` with feedback alignment; recorded with noise σ = ``noise`` × std of each
    series."""
    from discovery.feedforward.network import errors, forward, init_feedback, init_weights, post_activities
    from rules.compiler import compile_terms

    rule = dict(rule or S3_RULE)
    ids = [term(k).id for k in rule]
    compiled = compile_terms([TERMS[i].expr for i in ids])
    theta = torch.tensor([rule[k] for k in rule], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    B, L, C = n_trials, len(widths) - 1, widths[-1]
    Ws = init_weights(widths, B, gen, dtype=torch.float64)
    Bs = init_feedback(widths, "fa", B, gen, dtype=torch.float64)
    means = torch.tensor(rng.uniform(0.1, 0.9, size=(B, C, widths[0])), dtype=torch.float64)
    labels = torch.tensor(rng.integers(0, C, size=(B, n_steps)))
    noise_x = torch.tensor(rng.normal(scale=0.15, size=(B, n_steps, widths[0])), dtype=torch.float64)
    ys_rec = [np.empty((B, n_steps, n)) for n in widths]
    es_rec = [np.empty((B, n_steps, n)) for n in widths]
    Ws_rec = [np.empty((B, n_steps, *w.shape[1:])) for w in Ws]
    bidx = torch.arange(B)
    for t in range(n_steps):
        x = (means[bidx, labels[:, t]] + noise_x[:, t]).clamp(0, 1)      # pixel-like inputs in [0, 1]
        ys = forward(Ws, x, beta)
        target = torch.nn.functional.one_hot(labels[:, t], C).to(torch.float64)
        es = errors(ys, target, Ws, Bs, "fa", beta)
        post = post_activities(ys)
        for i in range(L + 1):
            ys_rec[i][:, t], es_rec[i][:, t] = post[i].numpy(), es[i].numpy()
        new = []
        for i in range(L):
            Ws_rec[i][:, t] = Ws[i].numpy()
            env = {"x": post[i], "y": post[i + 1], "e": es[i + 1], "e_pre": es[i], "W": Ws[i]}
            new.append(compiled.update(theta, env))
        Ws = new
        if not all(torch.isfinite(w).all() for w in Ws):
            raise FloatingPointError(f"the rule diverged at step {t}")

    def observe(arr: np.ndarray) -> np.ndarray:
        flat = arr.reshape(B * n_steps, *arr.shape[2:])
        return flat + noise * flat.std() * rng.normal(size=flat.shape) if noise > 0 else flat

    return validate_layers([observe(a) for a in ys_rec], [observe(a) for a in es_rec],
                           [observe(a) for a in Ws_rec], trial_starts=np.arange(B) * n_steps,
                           source="simulated (layered)")


# ------------------------------------------------------------------------------------------------ files

def _layer_arrays(arrays: Mapping[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    L = 0
    while f"y_{L + 1}" in arrays:
        L += 1
    return ([arrays.get(f"y_{i}") for i in range(L + 1)], [arrays.get(f"e_{i}") for i in range(L + 1)],
            [arrays.get(f"W_{i}") for i in range(1, L + 1)])


def is_layered(names: Sequence[str]) -> bool:
    """Whether a file's series are the layered layout (``y_0``, ``y_1``, …)."""
    return "y_0" in names and "y_1" in names


def read_layered_npz(source: str | Path | bytes) -> LayeredRecording:
    """A layered recording from ``.npz`` (arrays y_i, e_i, W_i, dt, trial_starts); pickles refused."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with fh, np.load(fh, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RecordingError(f"{name} is not a readable .npz file: {exc}") from exc
    ys, es, Ws = _layer_arrays(arrays)
    missing = [f"e_{i}" for i, e in enumerate(es) if e is None] + [f"W_{i + 1}" for i, w in enumerate(Ws) if w is None]
    if missing:
        raise RecordingError(f"missing series {missing[0]!r} in {name} (it has {sorted(arrays)})")
    dt = float(np.asarray(arrays["dt"]).reshape(())) if "dt" in arrays else 1.0
    return validate_layers(ys, es, Ws, dt=dt, trial_starts=arrays.get("trial_starts"), source=name)


def write_layered_npz(rec: LayeredRecording, path: str | Path) -> Path:
    arrays = {**{f"y_{i}": a for i, a in enumerate(rec.activity)}, **{f"e_{i}": a for i, a in enumerate(rec.errors)},
              **{f"W_{i + 1}": a for i, a in enumerate(rec.weights)}, "dt": np.array(rec.dt),
              "trial_starts": np.array(rec.trial_starts)}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def write_layered_nwb(rec: LayeredRecording, path: str | Path) -> Path:
    """TimeSeries y_i, e_i, W_i in acquisition at rate 1/dt and the trials table."""
    import hashlib

    from pynwb import NWBHDF5IO, TimeSeries

    from discovery.inference.simulate import nwb_file

    nwb = nwb_file("simulated deep network learning under feedback alignment",
                   f"plasticity-layered-{hashlib.sha256(rec.weights[0].tobytes()).hexdigest()[:16]}")
    rate = 1.0 / rec.dt
    for kind, arrays, first, what in (("y", rec.activity, 0, "activity"), ("e", rec.errors, 0, "error signal"),
                                      ("W", rec.weights, 1, "weights (time × post × pre)")):
        for i, arr in enumerate(arrays):
            nwb.add_acquisition(TimeSeries(name=f"{kind}_{i + first}", data=arr, unit="a.u.", rate=rate,
                                           starting_time=0.0, description=f"layer {i + first} {what}"))
    for start, stop in rec.trials():
        nwb.add_trial(start_time=start * rec.dt, stop_time=stop * rec.dt)
    with NWBHDF5IO(str(path), "w") as nwb_io:
        nwb_io.write(nwb)
    return Path(path)


def read_layered_nwb(nwb: Any, source: str) -> LayeredRecording:
    """A layered recording from an open NWB file's acquisition (called by ``recording.read_any``)."""
    acq = nwb.acquisition
    arrays = {k: np.asarray(v.data[:]) for k, v in acq.items() if k.split("_")[0] in ("y", "e", "W")}
    ys, es, Ws = _layer_arrays(arrays)
    rate = getattr(acq["y_0"], "rate", None)
    dt = 1.0 / float(rate) if rate else 1.0
    starts = None
    if nwb.trials is not None and len(nwb.trials) > 0:
        starts = np.rint(np.asarray(nwb.trials["start_time"][:], dtype=float) / dt).astype(int)
    missing = [f"e_{i}" for i, e in enumerate(es) if e is None] + [f"W_{i + 1}" for i, w in enumerate(Ws) if w is None]
    if missing:
        raise RecordingError(f"missing series {missing[0]!r} in {source} (it has {sorted(acq)})")
    return validate_layers(ys, es, Ws, dt=dt, trial_starts=starts, source=source)
