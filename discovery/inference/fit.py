"""Infer a sparse rule ΔW = Σ_r θ_r F_r from a recording whose weights are observed (docs/inference.md).

Model. W_{t+1} − W_t = Σ_r θ_r F_r(x_t, y_t, W_t) is linear in θ. One-step differences of *noisy* weights are
dominated by the noise (the noise of ΔW has variance 2σ² at every step while the signal is one step's change), so
the fit uses the integrated form instead: within a unit (a trial, or a segment of one) starting at t₀,

    W_t = W_{t₀} + Σ_r θ_r C_r(t),     C_r(t) = Σ_{s=t₀}^{t−1} F_r(x_s, y_s, W_s),

with the unknown W_{t₀} an intercept per unit and synapse (both sides are centred over the unit's time grid), so
the observation noise of each W_t enters once while the signal grows with t − t₀. Everything the search needs is
a handful of R × R sufficient statistics per unit (Gram matrices of the C_r over synapses and times).

Search. Best subsets by training residual for 1..``exhaustive`` terms, then forward selection from the best one up
to ``max_terms``; every support is refit by least squares. Each support is scored by leave-one-unit-out held-out
explained variance of the weight *changes* W(t) − W(t₀) against the θ = 0 null (never the raw weights). The
selected rule is the support with the fewest terms whose score lies within the best's 95 % CI. Coefficient
uncertainty: bootstrap over units. Warnings flag recordings whose weight change is small against the noise or
whose design is collinear (a recording near convergence, where Oja's two terms cancel).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from discovery.inference.features import LIBRARY, features, resolve
from discovery.inference.recording import Recording, RecordingError
from discovery.results import FrontPoint, RuleData
from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedRule

__all__ = [
    "CoefficientInterval",
    "Design",
    "InferenceResult",
    "InferredFrontPoint",
    "UnitStats",
    "design_of",
    "explained_variance",
    "infer_rule",
    "predict_changes",
    "rule_data",
    "unit_stats",
]

#: fewest units (trials or segments) for the leave-one-out score and the bootstrap
MIN_UNITS = 4
#: condition number of the (column-standardized) design above which the terms are called collinear
COND_WARN = 1e3
#: weight change / noise (RMS) below which the recording is said not to cover the learning transient
SNR_WARN = 3.0


class CoefficientInterval(BaseModel):
    """Bootstrap summary of one coefficient: point estimate (all units), bootstrap std and 95 % interval."""

    estimate: float
    std: float
    ci_low: float
    ci_high: float


class InferredFrontPoint(FrontPoint):
    """A front point of an inferred rule: ``heldout_accuracy`` holds the held-out explained variance of weight
    changes (also under its own name), ``heldout_episodes`` the number of held-out units."""

    heldout_explained_variance: float | None = None
    train_explained_variance: float | None = None


class InferenceResult(BaseModel):
    """A rule inferred from a recording, shaped like ``DiscoveryResult`` where it can be: the selected rule, its θ,
    the front over supports, the held-out score with its CI, coefficient uncertainty, warnings and provenance
    (``provenance["origin"] == "inferred"``)."""

    rule: RuleData
    theta: dict[str, float]
    names: dict[str, str]
    heldout_explained_variance: float | None
    heldout_ci95: float | None
    heldout_units: int
    coefficients: dict[str, CoefficientInterval]
    front: list[InferredFrontPoint] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    wall_time_s: float = 0.0


@dataclass
class UnitStats:
    """Sufficient statistics of one unit: anchored (C_r(t), W_t − W_{t₀}) products and their sums over time."""

    n: int            # grid points
    G0: np.ndarray    # (R, R) Σ_t ⟨C_r(t), C_s(t)⟩
    h0: np.ndarray    # (R,)   Σ_t ⟨C_r(t), W_t − W_{t₀}⟩
    bb0: float        #        Σ_t ‖W_t − W_{t₀}‖²
    S: np.ndarray     # (R, E) Σ_t C_r(t)
    Sb: np.ndarray    # (E,)   Σ_t (W_t − W_{t₀})

    def centred(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(G, h, bb) with an intercept per synapse (both sides centred over the unit's grid)."""
        return (self.G0 - self.S @ self.S.T / self.n, self.h0 - self.S @ self.Sb / self.n,
                float(self.bb0 - self.Sb @ self.Sb / self.n))


@dataclass
class Design:
    """What the weights-observed fit reads, whatever the circuit: the trials, the weights of every layer
    flattened to E synapses per step (T, E), the terms F_r over a block of steps (b − a, R, E), how to name the
    terms and to build a rule from θ, and a summary of the recording for the provenance."""

    ids: list[str]
    names: dict[str, str]
    trials: list[tuple[int, int]]
    weights: np.ndarray
    features: Callable[[int, int], np.ndarray]
    make_rule: Callable[[dict[str, float], str], RuleData]
    summary: dict[str, Any]


def design_of(rec: Recording, ids: Sequence[str] = LIBRARY) -> Design:
    """The design of a one-layer recording over unsupervised library terms (weights observed)."""
    if rec.weights is None:
        raise RecordingError("inference needs the weights: this recording has no 'weights' series")
    W = rec.weights
    E = W.shape[1] * W.shape[2]
    ids = list(ids)

    def feats(a: int, b: int) -> np.ndarray:
        return features(rec.pre[a:b], rec.post[a:b], W[a:b], ids).reshape(b - a, len(ids), E)

    return Design(ids=ids, names={i: UNSUPERVISED_TERMS[i].name for i in ids}, trials=rec.trials(),
                  weights=W.reshape(W.shape[0], E), features=feats, make_rule=rule_data, summary=rec.summary())


def units_of(trials: Sequence[tuple[int, int]], min_units: int = MIN_UNITS) -> list[tuple[int, int]]:
    """Trials, each cut into equal segments so that there are at least ``min_units`` units."""
    per = max(1, math.ceil(min_units / len(trials)))
    out = []
    for a, b in trials:
        edges = np.linspace(a, b, per + 1).round().astype(int)
        out.extend((int(edges[i]), int(edges[i + 1])) for i in range(per) if edges[i + 1] - edges[i] >= 3)
    return out


def unit_stats(design: Design, start: int, stop: int, *, stride: int = 1, chunk: int = 128) -> UnitStats:
    """Statistics of the unit [start, stop) on the grid t = start, start + stride, ... < stop."""
    R, E = len(design.ids), design.weights.shape[1]
    W = design.weights
    G0, h0, S, Sb, bb0, n = np.zeros((R, R)), np.zeros(R), np.zeros((R, E)), np.zeros(E), 0.0, 0
    carry = np.zeros((R, E))
    for c0 in range(start, stop, chunk):
        c1 = min(c0 + chunk, stop)
        # C(t) for t in [c0, c1): the carry plus the sum of F over [c0, t)
        F = design.features(c0, c1)
        C = carry[None] + np.concatenate([np.zeros((1, R, E)), np.cumsum(F[:-1], axis=0)], axis=0)
        carry = C[-1] + F[-1]
        keep = [i for i, t in enumerate(range(c0, c1)) if (t - start) % stride == 0]
        Ck = C[keep]
        bk = (W[c0:c1][keep] - W[start]).reshape(len(keep), E)
        G0 += np.einsum("tre,tse->rs", Ck, Ck)
        h0 += np.einsum("tre,te->r", Ck, bk)
        bb0 += float(np.sum(bk * bk))
        S += Ck.sum(0)
        Sb += bk.sum(0)
        n += len(keep)
    return UnitStats(n, G0, h0, bb0, S, Sb)


def _solve(G: np.ndarray, h: np.ndarray, support: Sequence[int]) -> np.ndarray:
    """Least squares θ on ``support`` from the normal equations (a tiny ridge keeps a singular block solvable)."""
    idx = list(support)
    theta = np.zeros(G.shape[0])
    if not idx:
        return theta
    A = G[np.ix_(idx, idx)]
    ridge = 1e-12 * max(float(np.trace(A)) / len(idx), 1e-300)
    theta[idx] = np.linalg.solve(A + ridge * np.eye(len(idx)), h[idx])
    return theta


def _rss(G: np.ndarray, h: np.ndarray, bb: float, theta: np.ndarray) -> float:
    return float(bb - 2 * theta @ h + theta @ G @ theta)


def explained_variance(observed: np.ndarray, predicted: np.ndarray) -> float:
    """1 − ‖observed − predicted‖² / ‖observed‖² for weight *changes* W(t) − W(t₀): 0 for the θ = 0 null (which
    predicts no change), 1 for a perfect prediction, negative when worse than the null."""
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    denom = float(np.sum(observed * observed))
    if denom == 0:
        return float("nan")
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / denom


def predict_changes(rec: Recording, theta: dict[str, float], start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(observed, predicted) W(t) − W(t₀) over [start, stop), predicted from the recorded activity and weights:
    Σ_r θ_r Σ_{s<t} F_r(x_s, y_s, W_s) (one step ahead at every step, summed)."""
    if rec.weights is None:
        raise RecordingError("predicting weight changes needs the 'weights' series")
    ids = list(theta)
    th = np.array([theta[i] for i in ids])
    F = features(rec.pre[start:stop], rec.post[start:stop], rec.weights[start:stop], ids)
    steps = np.tensordot(th, F, axes=(0, 1)) if ids else np.zeros_like(rec.weights[start:stop])
    pred = np.concatenate([np.zeros_like(steps[:1]), np.cumsum(steps[:-1], axis=0)])
    return rec.weights[start:stop] - rec.weights[start], pred


def _noise_estimate(design: Design) -> float:
    """Observation noise (std) of the weights from second differences within trials (6σ² for white noise)."""
    acc, cnt = 0.0, 0
    W = design.weights
    for a, b in design.trials:
        d2 = W[a + 2:b] - 2 * W[a + 1:b - 1] + W[a:b - 2]
        acc += float(np.sum(d2 * d2))
        cnt += d2.size
    return math.sqrt(acc / cnt / 6) if cnt else float("nan")


def rule_data(theta: dict[str, float], name: str) -> RuleData:
    """The unsupervised rule Σ θ_r F_r (zero coefficients dropped) as the engine hands rules on."""
    rule = UnsupervisedRule({k: v for k, v in theta.items() if v != 0}, name=name)
    return RuleData(**rule.to_dict())


def infer_rule(rec: Recording | Design, *, library: Sequence[str] | None = None, max_terms: int = 6, exhaustive: int = 3,
               n_bootstrap: int = 200, min_units: int = MIN_UNITS, max_grid: int = 400, seed: int = 0) -> InferenceResult:
    """Infer the sparse rule behind ``rec`` (weights observed; a recording or any :class:`Design`): front,
    selection, bootstrap, warnings."""
    t_start = time.perf_counter()
    if isinstance(rec, Recording):
        if not rec.has_weights:
            raise RecordingError("this recording has no 'weights' series: use inference from activity "
                                 "(discovery.inference.activity.infer_from_activity; docs/inference.md)")
        rec = design_of(rec, resolve(list(library)) if library else LIBRARY)
    design = rec
    ids = design.ids
    R = len(ids)
    units = units_of(design.trials, min_units)
    if len(units) < 2:
        raise RecordingError(f"the recording gives {len(units)} unit(s); inference needs at least 2 trials or "
                             "segments of 3 or more steps")
    stats = [unit_stats(design, a, b, stride=max(1, (b - a) // max_grid)) for a, b in units]
    cent = [s.centred() for s in stats]
    G = sum(c[0] for c in cent)
    h = sum(c[1] for c in cent)
    bb = sum(c[2] for c in cent)
    d = np.sqrt(np.maximum(np.diag(G), 1e-300))
    Gs, hs = G / np.outer(d, d), h / d                      # standardized columns

    def fit(support: Sequence[int]) -> np.ndarray:
        return _solve(Gs, hs, support) / d

    # --- search: best subsets up to `exhaustive` terms, then forward from the best one
    usable = [r for r in range(R) if np.diag(G)[r] > 0]
    supports: list[tuple[tuple[int, ...], str]] = []
    best: tuple[int, ...] = ()
    for k in range(1, min(exhaustive, max_terms, len(usable)) + 1):
        best = min(itertools.combinations(usable, k), key=lambda s: _rss(G, h, bb, fit(s)))
        supports.append((tuple(sorted(best)), "best-subset"))
    current = list(best)
    while len(current) < min(max_terms, len(usable)):
        rest = [r for r in usable if r not in current]
        add = min(rest, key=lambda r: _rss(G, h, bb, fit([*current, r])))
        current.append(add)
        supports.append((tuple(sorted(current)), "forward"))

    # --- leave-one-unit-out held-out explained variance of W(t) − W(t₀)
    def heldout(support: Sequence[int]) -> tuple[float, float, list[float]]:
        evs = []
        for u, s in enumerate(stats):
            Gt, ht = G - cent[u][0], h - cent[u][1]
            dt_ = np.sqrt(np.maximum(np.diag(Gt), 1e-300))
            th = _solve(Gt / np.outer(dt_, dt_), ht / dt_, support) / dt_
            evs.append(1.0 - _rss(s.G0, s.h0, s.bb0, th) / s.bb0 if s.bb0 > 0 else float("nan"))
        arr = np.array([e for e in evs if math.isfinite(e)])
        mean = float(arr.mean()) if arr.size else float("nan")
        ci = float(1.96 * arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("nan")
        return mean, ci, evs

    scored = []
    for support, stage in supports:
        ev, ci, _ = heldout(support)
        th = fit(support)
        train = 1.0 - sum(_rss(s.G0, s.h0, s.bb0, th) for s in stats) / sum(s.bb0 for s in stats)
        scored.append((support, stage, ev, ci, th, train))
    finite = [s for s in scored if math.isfinite(s[2])]
    if not finite:
        raise RecordingError("the weights do not change within any trial: nothing to infer")
    top = max(finite, key=lambda s: s[2])
    threshold = top[2] - (top[3] if math.isfinite(top[3]) else 0.0)
    chosen = min((s for s in finite if s[2] >= threshold), key=lambda s: (len(s[0]), -s[2]))

    front = []
    for support, stage, ev, ci, th, train in scored:
        theta_s = {ids[r]: float(th[r]) for r in support}
        front.append(InferredFrontPoint(
            terms=[ids[r] for r in support], theta=theta_s,
            rule=design.make_rule(theta_s, f"inferred ({len(support)})"),
            n_terms=len(support), complexity=len(support), heldout_accuracy=ev, heldout_ci95=ci,
            heldout_episodes=len(units), stage=stage, selected=support == chosen[0],
            heldout_explained_variance=ev, train_explained_variance=train))

    # --- bootstrap over units
    sel = list(chosen[0])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(units), size=len(units))
        Gb = sum(cent[i][0] for i in pick)
        hb = sum(cent[i][1] for i in pick)
        db = np.sqrt(np.maximum(np.diag(Gb), 1e-300))
        boots.append((_solve(Gb / np.outer(db, db), hb / db, sel) / db)[sel])
    B = np.array(boots).reshape(len(boots), len(sel))
    theta_sel = {ids[r]: float(chosen[4][r]) for r in sel}
    coefs = {ids[r]: CoefficientInterval(estimate=float(chosen[4][r]), std=float(B[:, j].std(ddof=1)),
                                         ci_low=float(np.percentile(B[:, j], 2.5)),
                                         ci_high=float(np.percentile(B[:, j], 97.5)))
             for j, r in enumerate(sel)} if n_bootstrap > 1 else {}

    # --- diagnostics and warnings
    warnings: list[str] = []
    cond_sel = float(math.sqrt(np.linalg.cond(Gs[np.ix_(sel, sel)]))) if sel else float("nan")
    cond_lib = float(math.sqrt(np.linalg.cond(Gs[np.ix_(usable, usable)]))) if usable else float("nan")
    sigma = _noise_estimate(design)
    change = math.sqrt(np.mean([np.mean((design.weights[b - 1] - design.weights[a]) ** 2) for a, b in units]))
    snr = change / (math.sqrt(2) * sigma) if sigma > 0 else float("inf")
    if cond_sel > COND_WARN:
        warnings.append(f"the selected terms are nearly collinear in this recording (condition number "
                        f"{cond_sel:.3g} > {COND_WARN:g}): their coefficients are poorly determined; record the "
                        "learning transient, not only the converged state")
    if snr < SNR_WARN:
        warnings.append(f"the weights change little relative to their noise (RMS change per unit / noise = "
                        f"{snr:.3g} < {SNR_WARN:g}): the recording may not cover the learning transient")
    if not (chosen[2] >= 0.5):
        warnings.append(f"the selected rule explains only {chosen[2]:.3g} of the held-out weight changes")
    for r in sel:
        c = coefs.get(ids[r])
        if c is not None and c.ci_low < 0 < c.ci_high:
            warnings.append(f"the sign of {design.names[ids[r]]} is not determined (bootstrap 95 % "
                            f"interval [{c.ci_low:.3g}, {c.ci_high:.3g}])")

    return InferenceResult(
        rule=design.make_rule(theta_sel, "inferred"), theta=theta_sel,
        names={i: design.names[i] for i in theta_sel},
        heldout_explained_variance=chosen[2], heldout_ci95=chosen[3], heldout_units=len(units),
        coefficients=coefs, front=front, warnings=warnings,
        diagnostics={"condition_number_selected": cond_sel, "condition_number_library": cond_lib,
                     "weight_noise_estimate": sigma, "change_to_noise": snr, "units": units,
                     "train_explained_variance": chosen[5], "library": [design.names[i] for i in ids]},
        provenance={"origin": "inferred", "method": "integrated least squares (weights observed), best subsets "
                    f"≤ {exhaustive} + forward to {max_terms}, leave-one-unit-out, bootstrap {n_bootstrap}",
                    "recording": design.summary, "time_unit": "per step (divide θ by dt for a rate)", "seed": seed},
        wall_time_s=time.perf_counter() - t_start)
