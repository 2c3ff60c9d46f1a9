"""Compiled inner loop of the reward family's reservoir (numba): the same equations as discovery.reward.sim's torch
loop (docs/reward.md), K Euler steps of B reservoirs per call, state updated in place, float64.

At N = 100 one step of one reservoir is a sparse J r (≈ 1,000 multiply-adds), the readout and the rule: the torch
loop spends ≈ 200–300 µs per step on op dispatch whatever B is, this loop ≈ 1 µs per reservoir-step.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def run_steps(train: bool, first: bool, task: int, x: np.ndarray, r: np.ndarray, z: np.ndarray, W: np.ndarray,
              zbar: np.ndarray, ebar: np.ndarray, beta: np.ndarray, theta: np.ndarray, third: np.ndarray,
              post: np.ndarray, pre_r: np.ndarray, seed_of: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
              data: np.ndarray, Q: np.ndarray, xi: np.ndarray, zeta: np.ndarray, target: np.ndarray, t0: int,
              fb_replay: np.ndarray, use_replay: bool, rec_replay: np.ndarray, record: bool, lengths: np.ndarray,
              a: float, keep: float, alpha_r: float, quartic: bool, beta_amp: float, beta_pow: float,
              errors: np.ndarray, lam: np.ndarray, used_r: np.ndarray, used_1: np.ndarray, Er: np.ndarray,
              E1: np.ndarray) -> bool:
    """K = errors.shape[0] steps. third[k] ∈ {0: R − R̄, 1: R, 2: 1}, post[k] ∈ {0: z − z̄, 1: z, 2: z − f, 3: 1},
    pre_r[k] (pre = r, else 1). Training: own feedback, noise, learning; test: feedback f (task 1) or the replayed
    output, no noise, frozen W. ``record``: write z into rec_replay[k]. Returns ``first`` after the steps.
    Eligibility traces where lam[b] > 0: Er[b, p] ← Er + λ(post_p rᵀ − Er), E1[b, p] ← E1 + λ(post_p − E1) for
    the posts in use (used_r / used_1), and ΔW = Σ_k θ_k M_k E_k; lam[b] = 0: ΔW = Σ_k θ_k M_k post_k pre_kᵀ."""
    B, N = x.shape
    d = z.shape[1]
    K = errors.shape[0]
    R_ = theta.shape[1]
    inp = np.empty(N)
    pos = np.empty(d)
    pv = np.empty((4, d))
    ur = np.empty(d)
    u1 = np.empty(d)
    for k in range(K):
        f = target[t0 + k]
        for b in range(B):
            s = seed_of[b]
            # feedback
            for j in range(N):
                acc = 0.0
                for p in range(indptr[s, j], indptr[s, j + 1]):
                    acc += data[p] * r[b, indices[p]]
                inp[j] = acc
            for j in range(N):
                fbq = 0.0
                for i in range(d):
                    if train:
                        fz = z[b, i]
                    elif use_replay:
                        fz = fb_replay[k, b, i]
                    else:
                        fz = f[i]
                    fbq += Q[s, j, i] * fz
                x[b, j] += a * (inp[j] + fbq - x[b, j])
                r[b, j] = math.tanh(x[b, j])
                if train:
                    r[b, j] += xi[k, s, j]
            for i in range(d):
                acc = 0.0
                for j in range(N):
                    acc += W[b, i, j] * r[b, j]
                z[b, i] = acc + (beta[b] * zeta[k, s, i] if train else 0.0)
            if task == 1:
                for i in range(d):
                    pos[i] = z[b, i]
            else:
                phi = 0.0
                px = 0.0
                py = 0.0
                for i in range(d):
                    phi += math.pi * z[b, i]
                    px += lengths[i] * math.sin(phi)
                    py += lengths[i] * math.cos(phi)
                pos[0] = px
                pos[1] = py - 2.0
            err = 0.0
            for i in range(2):
                err += (pos[i] - f[i]) ** 2
            errors[k, b] = err
            if record:
                for i in range(d):
                    rec_replay[k, b, i] = z[b, i]
            if not train:
                continue
            for i in range(d):
                zbar[b, i] = z[b, i] if first else zbar[b, i] + (1.0 - keep) * (z[b, i] - zbar[b, i])
            ebar[b] = err if first else ebar[b] + alpha_r * (err - ebar[b])
            u = ebar[b] - err
            if quartic:
                u = math.copysign(abs(u) ** 0.25, u) if u != 0.0 else 0.0
            for i in range(d):
                pv[0, i] = z[b, i] - zbar[b, i]
                pv[1, i] = z[b, i]
                pv[2, i] = z[b, i] - f[i] if i < f.shape[0] else 0.0
                pv[3, i] = 1.0
                ur[i] = 0.0
                u1[i] = 0.0
            if lam[b] > 0.0:
                lb = lam[b]
                for q in range(4):
                    for i in range(d):
                        if used_1[q]:
                            E1[b, q, i] += lb * (pv[q, i] - E1[b, q, i])
                        if used_r[q]:
                            for j in range(N):
                                Er[b, q, i, j] += lb * (pv[q, i] * r[b, j] - Er[b, q, i, j])
                for kk in range(R_):
                    c = theta[b, kk]
                    if c == 0.0:
                        continue
                    cm = c * (u if third[kk] == 0 else (-err if third[kk] == 1 else 1.0))
                    q = post[kk]
                    for i in range(d):
                        for j in range(N):
                            W[b, i, j] += cm * (Er[b, q, i, j] if pre_r[kk] else E1[b, q, i])
                beta[b] = beta_amp * (10.0 * max(ebar[b], 0.0)) ** beta_pow
                continue
            any_r = False
            any_1 = False
            for kk in range(R_):
                c = theta[b, kk]
                if c == 0.0:
                    continue
                m = u if third[kk] == 0 else (-err if third[kk] == 1 else 1.0)
                for i in range(d):
                    if pre_r[kk]:
                        ur[i] += c * m * pv[post[kk], i]
                        any_r = True
                    else:
                        u1[i] += c * m * pv[post[kk], i]
                        any_1 = True
            if any_r or any_1:
                for i in range(d):
                    for j in range(N):
                        W[b, i, j] += ur[i] * r[b, j] + u1[i]
            beta[b] = beta_amp * (10.0 * max(ebar[b], 0.0)) ** beta_pow
        first = False if train else first
    return first
