"""Infer a sparse rule from activity alone (weights unobserved) by simulating the circuit (docs/inference.md).

Model. Each trial k starts from an unknown W₀ᵏ; the circuit runs on the *recorded* inputs x_t with
ŷ_t = W_t x_t and W_{t+1} = W_t + Σ_r θ_r F_r(x_t, ŷ_t, W_t). θ and every W₀ᵏ are fitted jointly by minimising
Σ_t ‖y_t − ŷ_t‖² over the first ``train_fraction`` of every trial, differentiating through the whole simulation
with torch (L-BFGS, float64). The rest of each trial is held out: the fitted circuit keeps running on it.

Search. The candidate supports come from the weights-observed search (``fit.infer_rule``) run on weights
*estimated* from the activity: a Kalman (Rauch–Tung–Striebel) smoother of the random-walk model
W_{t+1} = W_t + noise(q), y_t = W_t x_t + noise(r), one covariance shared by the rows of W, with q and r chosen by
the innovations' likelihood on a small grid. Every support of that front is then refit by simulate-and-match
(starting from its θ and the smoothed W₀), which removes the smoother's bias. Score: explained variance of the held-out activity against the θ = 0 null (a static W fitted by least squares on
the same training steps): EV = 1 − Σ‖y − ŷ_θ‖² / Σ‖y − ŷ_null‖², mean over trials ± 1.96 sd/√trials. Selection:
the fewest terms within the best score's 95 % CI. Coefficient uncertainty: bootstrap over trials of the selected
support's refit (few resamples: each is a full fit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from discovery.inference.features import LIBRARY, resolve
from discovery.inference.fit import CoefficientInterval, InferenceResult, InferredFrontPoint, rule_data
from discovery.inference.recording import Recording, RecordingError
from discovery.unsupervised.terms import TermEvaluator
from rules.unsupervised import UNSUPERVISED_TERMS

__all__ = ["infer_from_activity"]

_T = torch.float64


class _Problem:
    """The recorded trials as tensors (trials × steps), the training length and the term evaluator."""

    def __init__(self, rec: Recording, train_fraction: float, trials: Sequence[int] | None = None) -> None:
        bounds = rec.trials()
        lengths = {b - a for a, b in bounds}
        if len(lengths) != 1:
            raise RecordingError("inference from activity needs trials of equal length; got lengths "
                                 f"{sorted(lengths)}")
        idx = list(range(len(bounds))) if trials is None else list(trials)
        self.x = torch.tensor(np.stack([rec.pre[bounds[k][0]:bounds[k][1]] for k in idx]), dtype=_T)
        self.y = torch.tensor(np.stack([rec.post[bounds[k][0]:bounds[k][1]] for k in idx]), dtype=_T)
        self.B, self.steps, self.m = self.x.shape
        self.n = self.y.shape[2]
        self.n_train = max(2, min(self.steps - 1, round(train_fraction * self.steps)))

    def null_w0(self) -> torch.Tensor:
        """The θ = 0 fit: a static W per trial by least squares of y on x over the training steps."""
        X, Y = self.x[:, :self.n_train], self.y[:, :self.n_train]
        G = X.transpose(1, 2) @ X + 1e-8 * torch.eye(self.m, dtype=_T)
        return torch.linalg.solve(G, X.transpose(1, 2) @ Y).transpose(1, 2)       # (B, n, m)

    def simulate(self, ev: TermEvaluator, theta: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        """ŷ (B, steps, n) of the circuit under θ (R,) from W₀ (B, n, m) on the recorded inputs."""
        W, out = w0, []
        th = theta.expand(self.B, theta.shape[0])
        for t in range(self.steps):
            dW, yhat = ev.delta(th, W, self.x[:, t])
            out.append(yhat)
            W = W + dW
        return torch.stack(out, 1)


def _scales(prob: _Problem, ids: Sequence[str], w0: torch.Tensor) -> torch.Tensor:
    """s_r: θ_r = s_r φ_r with φ_r = 1 moving W by about its own size over the training steps."""
    ev = TermEvaluator(ids)
    k = min(prob.n_train, 64)
    x = prob.x[:, :k].reshape(-1, prob.m)
    W = w0.repeat_interleave(k, 0)
    out = []
    for r in range(len(ids)):
        th = torch.zeros(x.shape[0], len(ids), dtype=_T)
        th[:, r] = 1
        dW, _ = ev.delta(th, W, x)
        rms = float(dW.expand_as(W).pow(2).mean().sqrt())
        out.append(float(w0.pow(2).mean().sqrt()) / (prob.n_train * max(rms, 1e-300)))
    return torch.tensor(out, dtype=_T)


def _fit(prob: _Problem, ids: Sequence[str], scale: torch.Tensor, w0: torch.Tensor, phi0: torch.Tensor | None,
         iters: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(θ, W₀, training loss) of a support, L-BFGS from (φ0, W₀)."""
    ev = TermEvaluator(ids)
    y_train = prob.y[:, :prob.n_train]
    phi_start = phi0.clone() if phi0 is not None else torch.zeros(len(ids), dtype=_T)
    lr = 1.0
    for _attempt in range(6):      # a step into a diverging simulation: start again with a 4× smaller step
        phi = phi_start.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([phi, w], lr=lr, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)

        def closure(opt: torch.optim.LBFGS = opt, phi: torch.Tensor = phi, w: torch.Tensor = w) -> torch.Tensor:
            opt.zero_grad()
            yhat = prob.simulate(ev, phi * scale, w)[:, :prob.n_train]
            loss = (yhat - y_train).pow(2).sum()
            if not bool(torch.isfinite(loss)):    # diverged: a huge finite loss with no gradient (line search backs off)
                return torch.tensor(1e30, dtype=_T)
            loss.backward()
            if not bool(torch.isfinite(phi.grad).all() and torch.isfinite(w.grad).all()):
                opt.zero_grad()
                return torch.tensor(1e30, dtype=_T)
            return loss.detach()

        if ids:
            opt.step(closure)
        if bool(torch.isfinite(phi).all() and torch.isfinite(w).all()):
            with torch.no_grad():
                yhat = prob.simulate(ev, phi * scale, w)[:, :prob.n_train]
            if bool(torch.isfinite(yhat).all()):
                break
        lr /= 4
    with torch.no_grad():
        yhat = prob.simulate(ev, phi * scale, w)[:, :prob.n_train]
        loss = float((yhat - y_train).pow(2).sum())
    return (phi * scale).detach(), w.detach(), loss


def _heldout(prob: _Problem, ids: Sequence[str], theta: torch.Tensor, w0: torch.Tensor,
             null_w0: torch.Tensor) -> list[float]:
    """Per trial: 1 − Σ_tail ‖y − ŷ_θ‖² / Σ_tail ‖y − ŷ_null‖², floored at −1."""
    with torch.no_grad():
        yhat = prob.simulate(TermEvaluator(ids), theta, w0)[:, prob.n_train:]
        ynull = torch.einsum("bnm,btm->btn", null_w0, prob.x[:, prob.n_train:])
        y = prob.y[:, prob.n_train:]
        num = (y - yhat).pow(2).sum((1, 2))
        den = (y - ynull).pow(2).sum((1, 2))
    # a prediction that diverges (or is worse than predicting nothing) counts as −1
    return [max(float(1 - a / b), -1.0) if b > 0 and math.isfinite(float(a)) else -1.0
            for a, b in zip(num, den, strict=True)]


def _smooth(x: np.ndarray, y: np.ndarray, q: float, r: float, p0: float,
            smooth: bool = True) -> tuple[np.ndarray, float]:
    """RTS-smoothed W_t (T, n, m) of one trial (filtered only when ``smooth`` is False) and the log-likelihood of
    its innovations."""
    T, m = x.shape
    n = y.shape[1]
    W = np.zeros((n, m))
    P = p0 * np.eye(m)
    Wf, Pf, Pp = np.empty((T, n, m)), np.empty((T, m, m)), np.empty((T, m, m))
    loglik = 0.0
    for t in range(T):
        Pp[t] = P
        xt = x[t]
        Px = P @ xt
        s = float(xt @ Px) + r
        innov = y[t] - W @ xt
        loglik -= 0.5 * (n * math.log(2 * math.pi * s) + float(innov @ innov) / s)
        K = Px / s
        W = W + np.outer(innov, K)
        P = P - np.outer(K, Px)
        Wf[t], Pf[t] = W, P
        P = P + q * np.eye(m)
    if not smooth:
        return Wf, loglik
    Ws = np.empty_like(Wf)
    Ws[-1] = Wf[-1]
    for t in range(T - 2, -1, -1):
        C = np.linalg.solve(Pp[t + 1], Pf[t]).T          # P_f(t) P_p(t+1)⁻¹ (both symmetric)
        Ws[t] = Wf[t] + (Ws[t + 1] - Wf[t]) @ C.T
    return Ws, loglik


def smoothed_weights(rec: Recording, *, grid: int = 3) -> tuple[np.ndarray, dict[str, float]]:
    """W_t (T, n, m) estimated from the activity of every trial (q, r by likelihood on the first two trials)."""
    var_y = float(rec.post.var())
    var_x = float(rec.pre.var()) * rec.circuit.n_pre
    trials = rec.trials()
    p0 = var_y / var_x * 4
    best = None
    for q_rel in np.logspace(-6, -3, grid + 1):
        for r_rel in np.logspace(-3, -1, grid):
            q, r = q_rel * var_y / var_x, r_rel * var_y
            ll = sum(_smooth(rec.pre[a:b], rec.post[a:b], q, r, p0, smooth=False)[1] for a, b in trials[:2])
            if best is None or ll > best[0]:
                best = (ll, q, r)
    assert best is not None
    _, q, r = best
    W = np.concatenate([_smooth(rec.pre[a:b], rec.post[a:b], q, r, p0)[0] for a, b in trials])
    return W, {"q": q, "r": r, "p0": p0}


def infer_from_activity(rec: Recording, *, library: Sequence[str] | None = None, max_terms: int = 4,
                        train_fraction: float = 0.75, iters: int = 30, n_bootstrap: int = 5,
                        seed: int = 0) -> InferenceResult:
    """Infer the sparse rule behind ``rec`` from its activity (weights unobserved; y = W x): front, selection,
    a small bootstrap over trials, warnings."""
    from discovery.inference.fit import infer_rule

    t_start = time.perf_counter()
    if rec.circuit.nonlinearity != "linear":
        raise RecordingError("inference from activity supports the linear circuit y = W x only")
    lib = resolve(list(library)) if library else list(LIBRARY)
    prob = _Problem(rec, train_fraction)
    if prob.B < 2:
        raise RecordingError("inference from activity needs at least 2 trials")
    W_hat, kalman = smoothed_weights(rec)
    est = infer_rule(rec.model_copy(update={"weights": W_hat}), library=lib, max_terms=max_terms, n_bootstrap=0,
                     seed=seed)
    null_w0 = prob.null_w0()
    starts = [a for a, _ in rec.trials()]
    w0_hat = torch.tensor(W_hat[starts], dtype=_T)

    scored = []
    for point in est.front:
        ids = list(point.terms)
        th0 = torch.tensor([point.theta[i] for i in ids], dtype=_T)
        scale = th0.abs().clamp_min(1e-12)
        theta, w0, loss = _fit(prob, ids, scale, w0_hat, th0 / scale, iters)
        evs = np.array(_heldout(prob, ids, theta, w0, null_w0))
        mean = float(evs.mean())
        ci = float(1.96 * evs.std(ddof=1) / math.sqrt(evs.size)) if evs.size > 1 else float("nan")
        scored.append((tuple(ids), theta, w0, loss, mean, ci, point))
    top = max(scored, key=lambda s: s[4])
    threshold = top[4] - (top[5] if math.isfinite(top[5]) else 0.0)
    chosen = min((s for s in scored if s[4] >= threshold), key=lambda s: (len(s[0]), -s[4]))

    front = []
    for ids, th, _w, _loss, ev, ci, point in scored:
        theta_s = {i: float(v) for i, v in zip(ids, th, strict=True)}
        front.append(InferredFrontPoint(
            terms=list(ids), theta=theta_s, rule=rule_data(theta_s, f"inferred ({len(ids)})"),
            n_terms=len(ids), complexity=len(ids), heldout_accuracy=ev, heldout_ci95=ci, heldout_episodes=prob.B,
            stage=f"{point.stage}, refit by simulation", selected=ids == chosen[0],
            heldout_explained_variance=ev, train_explained_variance=point.heldout_explained_variance))

    sel_ids = list(chosen[0])
    theta_sel = {i: float(v) for i, v in zip(sel_ids, chosen[1], strict=True)}
    coefs: dict[str, CoefficientInterval] = {}
    if n_bootstrap > 1:
        rng = np.random.default_rng(seed)
        scale = chosen[1].abs().clamp_min(1e-12)
        boots = []
        for _ in range(n_bootstrap):
            pick = rng.integers(0, prob.B, size=prob.B)
            sub = _Problem(rec, train_fraction, trials=pick.tolist())
            th, _, _ = _fit(sub, sel_ids, scale, chosen[2][pick], chosen[1] / scale, iters)
            boots.append(th.numpy())
        B = np.array(boots)
        coefs = {i: CoefficientInterval(estimate=theta_sel[i], std=float(B[:, j].std(ddof=1)),
                                        ci_low=float(np.percentile(B[:, j], 2.5)),
                                        ci_high=float(np.percentile(B[:, j], 97.5)))
                 for j, i in enumerate(sel_ids)}
    with torch.no_grad():   # the last trial, recorded against simulated, for the rule page
        last = prob.B - 1
        yhat = prob.simulate(TermEvaluator(sel_ids), chosen[1], chosen[2])[last].numpy()
    t = np.unique(np.linspace(0, prob.steps - 1, min(prob.steps, 160)).round().astype(int))
    pick = np.argsort(-prob.y[last].numpy().std(0))[:4]
    trajectories = {"quantity": "post activity y(t)", "trial": last, "t": (t * rec.dt).tolist(),
                    "series": [{"label": f"neuron {int(k)}", "recorded": prob.y[last, t, k].tolist(),
                                "simulated": yhat[t, k].tolist()} for k in pick]}
    warnings = [w for w in est.warnings if "transient" in w]
    if not (chosen[4] >= 0.5):
        warnings.append(f"the selected rule explains only {chosen[4]:.3g} of the held-out activity beyond the "
                        "θ = 0 null: the recording may not cover the learning transient")
    for i, c in coefs.items():
        if c.ci_low < 0 < c.ci_high:
            warnings.append(f"the sign of {UNSUPERVISED_TERMS[i].name} is not determined (bootstrap 95 % interval "
                            f"[{c.ci_low:.3g}, {c.ci_high:.3g}] over {n_bootstrap} resamples)")
    return InferenceResult(
        rule=rule_data(theta_sel, "inferred"), theta=theta_sel,
        names={i: UNSUPERVISED_TERMS[i].name for i in theta_sel},
        heldout_explained_variance=chosen[4], heldout_ci95=chosen[5], heldout_units=prob.B, coefficients=coefs,
        front=front, warnings=warnings,
        diagnostics={"observed": "activity", "train_fraction": train_fraction, "train_loss": chosen[3],
                     "kalman": kalman, "smoothed_weights_theta": est.theta, "trajectories": trajectories,
                     "library": [UNSUPERVISED_TERMS[i].name for i in lib]},
        provenance={"origin": "inferred", "method": "weights estimated by a Kalman smoother, sparse search on them, "
                    "each front support refit by simulate-and-match through the circuit (torch, L-BFGS), held-out "
                    f"trial tails, bootstrap {n_bootstrap}", "recording": rec.summary(), "time_unit": "per step",
                    "seed": seed},
        wall_time_s=time.perf_counter() - t_start)
