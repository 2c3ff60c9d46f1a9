"""Fused CPU inner loop: the forward-mode online pass of discovery.inner in one compiled kernel per run.

Same mathematics as `run_online_forward` (W_ℓ ← W_ℓ + Σ_r θ_r F^r_ℓ and Ẇ_ℓ ← Ẇ_ℓ + d(ΔW_ℓ)/dθ in closed form), but
each step touches every weight once: W_ℓ is stored transposed (row j = input unit j, padded to 16 floats), so one
sweep over the rows

    v_j = (aᵀW)_j (Oja's yᵀW),  W_{:,j} ← s W_{:,j} + Σ_u u a_{u,j},  a_u = Σ_s c_{u,s} v_s,  z_{t+1} += W_{:,j} x_{t+1,j}

updates column j of W and of its R tangents and accumulates the next sample's forward pass while the row sits in
L1 (the batched torch loop streams every weight four times). The kernel is C (`fused_kernel.c`, built by
`discovery.ckernel`, one episode per thread); this module also holds the same kernel in numba, used where no C
compiler works.

A rule is fusable when every atom is G · u vᵀ with u ∈ {y, e, 1}, v ∈ {x, e_pre, 1_pre, Wᵀy, Wᵀe, Wᵀ1} and G a
product of at most two 1×1 gates (aᵀb of two post or two pre vectors, or aᵀW b), plus decay (F3): every term of
bio10 and of the generated library (rules.library). The feedback must be fa, dfa or bp (bp reads W_{ℓ+1} and Ẇ_{ℓ+1}
in the error pass, before the sweep updates them). Gated rules run in the C kernel only; otherwise (sign feedback,
CUDA, other shapes) the caller uses the batched torch loop.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from discovery import ckernel
from rules.compiler import CompiledRule
from rules.primitives import DIMS

U_CODES = {"y": 0, "e": 1, "one": 2}
#: v slots: 0 x, 1 e_pre, 2 one, 3 Wᵀy, 4 Wᵀe, 5 Wᵀ1 (slot 3 + u-code of a)
V_DIRECT = {"x": 0, "e_pre": 1, "one_pre": 2}
N_SLOTS = 6
FEEDBACK_CODES = {"fa": 0, "dfa": 1, "bp": 2}
_KERNEL_LOCK = threading.Lock()   # numba's default 'workqueue' threading layer must not be entered concurrently

try:  # numba is a runtime dependency; a missing or broken install only disables the fast path
    import numba
    from numba import njit, prange
except Exception:  # noqa: BLE001  # pragma: no cover
    numba = None


POST_CODES = {"y": 0, "e": 1, "one": 2}
PRE_CODES = {"x": 0, "e_pre": 1, "one_pre": 2}
MAX_GATES_PER_ATOM = 2


@dataclass(frozen=True)
class FusedPlan:
    """ΔW = Σ_t θ_t (Σ_{u,s} C[t,u,s] G u v_sᵀ + d_t W): the rule as a coefficient table and, for scalar-gated
    rules, the atom list (t, u, s, gate 1, gate 2; κ) and the gates (kind 0 post aᵀb, 1 pre aᵀb, 2 aᵀW b; a, b)."""

    coef: np.ndarray    # (R, 3, 6): κ summed per (t, u, s) (the whole rule when ungated; the structure otherwise)
    decay: np.ndarray   # (R,)
    atoms: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int32))
    atom_coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))

    @property
    def gated(self) -> bool:
        return len(self.gates) > 0


def _segments(chain: Sequence[tuple[str, bool]]) -> list[list[tuple[str, bool]]]:
    """Cut a 1×m chain of factors wherever the inner dimension is 1: 1×1 gates, then the final 1×m piece."""
    out, cur = [], []
    for f in chain:
        cur.append(f)
        rows, cols = DIMS[f[0]]
        if (rows if f[1] else cols) == "1":
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _gate(seg: Sequence[tuple[str, bool]]) -> tuple[int, int, int] | None:
    """(kind, a, b) of a 1×1 gate: aᵀb of two post vectors (0) or two pre vectors (1), or aᵀW b (2)."""
    if len(seg) == 2 and seg[0][1] and not seg[1][1]:
        (a, _), (b, _) = seg
        for kind, codes in ((0, POST_CODES), (1, PRE_CODES)):
            if a in codes and b in codes:
                return (kind, *sorted((codes[a], codes[b])))
    if len(seg) == 3 and seg[1][0] == "W":
        (a, ta), (_, tw), (b, tb) = seg
        if ta and not tw and not tb and a in POST_CODES and b in PRE_CODES:
            return (2, POST_CODES[a], PRE_CODES[b])
        if ta and tw and not tb and a in PRE_CODES and b in POST_CODES:
            return (2, POST_CODES[b], PRE_CODES[a])
    return None


def _slot(seg: Sequence[tuple[str, bool]]) -> int | None:
    """The v slot of the final 1×m piece: x, e_pre, 1_pre (0–2) or aᵀW (3 + a)."""
    if len(seg) == 1 and seg[0][1] and seg[0][0] in V_DIRECT:
        return V_DIRECT[seg[0][0]]
    if len(seg) == 2 and seg[0][1] and seg[0][0] in U_CODES and seg[1] == ("W", False):
        return 3 + U_CODES[seg[0][0]]
    return None


def plan(rule: CompiledRule) -> FusedPlan | None:
    """The coefficient table (and gated atoms) of a fusable rule, or None when some atom has another shape."""
    R = len(rule)
    coef = np.zeros((R, 3, N_SLOTS))
    atoms, kappas, gates = [], [], []
    for t, term in enumerate(rule.terms):
        for a in term.atoms:
            if len(a.prefix) != 1 or a.prefix[0][1] or a.prefix[0][0] not in U_CODES:
                return None
            segs = _segments(a.suffix)
            slot = _slot(segs[-1]) if segs else None
            found = [_gate(g) for g in segs[:-1]]
            if slot is None or None in found or len(found) > MAX_GATES_PER_ATOM:
                return None
            u = U_CODES[a.prefix[0][0]]
            coef[t, u, slot] += a.coef
            ids = []
            for g in found:
                if g not in gates:
                    gates.append(g)
                ids.append(gates.index(g))
            ids += [-1] * (MAX_GATES_PER_ATOM - len(ids))
            atoms.append([t, u, slot, *ids])
            kappas.append(a.coef)
    decay = np.array(rule.decays, dtype=np.float64)
    if not gates:
        return FusedPlan(coef, decay)
    return FusedPlan(coef, decay, np.array(atoms, dtype=np.int32).reshape(-1, 5),
                     np.array(kappas, dtype=np.float64), np.array(gates, dtype=np.int32).reshape(-1, 3))


def available() -> bool:
    """Whether some fused kernel can run here: the C one (a compiler is present) or the numba one."""
    return numba is not None or ckernel.load(np.float64) is not None


def backend_name() -> str:
    """Which fused kernel runs here: 'C' or 'numba'."""
    return "C" if ckernel.load(np.float32) is not None else "numba"


def fusable(rule: CompiledRule, feedback: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused loop can run this rule: CPU, fa/dfa/bp feedback, supported atoms, a kernel present."""
    if not (available() and device.type == "cpu" and feedback in FEEDBACK_CODES
            and dtype in (torch.float32, torch.float64)):
        return False
    p = plan(rule)
    return p is not None and (not p.gated or ckernel.load(np.float64) is not None)   # gates: the C kernel only


# --------------------------------------------------------------------------------------------- the kernel

#: reassociation (vectorized reductions) and FMA contraction, but not no-NaN/no-inf: divergence must stay visible
FAST = {"reassoc", "contract", "arcp"}

if numba is not None:

    @njit(cache=True, error_model="numpy", fastmath=FAST, inline="always")
    def _softplus(z, beta):
        bz = beta * z
        return z if bz > 20.0 else math.log1p(math.exp(bz)) / beta

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _dots(A, ka, cnt, oa, Bm, kb, ob, n, out, oo, zero):
        """out[oo + k] = Σ_i A[ka + k, oa + i] · Bm[kb, ob + i] for k < cnt: four dot products per pass while four
        rows are left (the shared vector is loaded once per four rows), then one at a time."""
        k = 0
        while k < cnt:
            left = cnt - k
            r = ka + k
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            bv = Bm[kb, ob:ob + n]                  # slices indexed from 0: numba then knows i ≥ 0, so no
            v0 = A[r, oa:oa + n]                    # wrap-around check blocks the vectorizer
            if left >= 4:
                v1, v2, v3 = A[r + 1, oa:oa + n], A[r + 2, oa:oa + n], A[r + 3, oa:oa + n]
                for i in range(n):
                    b = bv[i]
                    a0 += v0[i] * b
                    a1 += v1[i] * b
                    a2 += v2[i] * b
                    a3 += v3[i] * b
                out[oo + k] = a0
                out[oo + k + 1] = a1
                out[oo + k + 2] = a2
                out[oo + k + 3] = a3
                k += 4
            else:
                for i in range(n):
                    a0 += v0[i] * bv[i]
                out[oo + k] = a0
                k += 1

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _axpy_rows(Z, kz, cnt, w, ow, coef, n):
        """Z[kz + k, i] += w[ow + i] · coef[k] for k < cnt (the tangent forward term W ẋ_r), four rows per pass."""
        k = 0
        while k < cnt:
            r = kz + k
            wv = w[ow:ow + n]
            z0 = Z[r, :n]
            if cnt - k >= 4:
                c0, c1, c2, c3 = coef[k], coef[k + 1], coef[k + 2], coef[k + 3]
                z1, z2, z3 = Z[r + 1, :n], Z[r + 2, :n], Z[r + 3, :n]
                for i in range(n):
                    wi = wv[i]
                    z0[i] += wi * c0
                    z1[i] += wi * c1
                    z2[i] += wi * c2
                    z3[i] += wi * c3
                k += 4
            else:
                c0 = coef[k]
                for i in range(n):
                    z0[i] += wv[i] * c0
                k += 1

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _forward0(WT, woff, widths, wpad, Y, voff, beta):
        """Initial forward pass (Ẇ = 0 so all tangents are 0): Y[0] of every layer from the input."""
        L = widths.shape[0] - 1
        for li in range(L):
            n, m, npd = widths[li + 1], widths[li], wpad[li + 1]
            z = np.zeros(npd, dtype=Y.dtype)
            for j in range(m):
                xj = Y[0, voff[li] + j]
                base = woff[li] + j * npd
                for i in range(npd):
                    z[i] += WT[base + i] * xj
            for i in range(n):
                Y[0, voff[li + 1] + i] = z[i] if li == L - 1 else _softplus(z[i], beta)

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _errors(U, FB, foff, W2, Wd, woff, widths, wpad, voff, target, mode, beta, R, G, zero):
        """e_L = p − onehot (p = softmax, written into Y[0] as the output post-activity), ė_L = ṗ;
        e_ℓ = g ⊙ s, s = 1 − e^{−β y_ℓ}, g = e_{ℓ+1} B_{ℓ+1} (fa), e_{ℓ+1} W_{ℓ+1} (bp) or e_L D_ℓ (dfa);
        ė_ℓ = ġ ⊙ s + g β e^{−β y} ẏ with ġ = ė B (fa), ė W + e Ẇ (bp), ė_L D (dfa). Rows: 0 primal, 1..R tangents."""
        L = widths.shape[0] - 1
        nL, oL = widths[L], voff[L]
        mx = -1e300
        for i in range(nL):
            mx = max(mx, U[0, oL + i])
        tot = 0.0
        for i in range(nL):
            U[0, oL + i] = math.exp(U[0, oL + i] - mx)
            tot += U[0, oL + i]
        for i in range(nL):
            U[0, oL + i] /= tot
        for r in range(1, R + 1):
            dot = 0.0
            for i in range(nL):
                dot += U[0, oL + i] * U[r, oL + i]
            for i in range(nL):
                U[r, oL + i] = U[0, oL + i] * (U[r, oL + i] - dot)
        for i in range(nL):
            U[R + 1, oL + i] = U[0, oL + i] - (1.0 if i == target else 0.0)
            for r in range(1, R + 1):
                U[R + 1 + r, oL + i] = U[r, oL + i]
        for li in range(L - 1, -1, -1):          # layer li's error from layer li+1 (weight block li)
            m, npd = widths[li], wpad[li + 1]
            om, on = voff[li], voff[li + 1]
            if mode == 1 and li == 0:
                for j in range(m):
                    for r in range(R + 1):
                        U[R + 1 + r, om + j] = 0.0
                break
            for j in range(m):
                if mode == 0:                      # transposed block li: row j = column j of B_{li+1}
                    _dots(U, R + 1, R + 1, on, FB, 0, foff[li] + j * npd, npd, G, 0, zero)
                elif mode == 2:                    # bp: ġ = ė W + e Ẇ (the feedback is W itself)
                    b = woff[li] + j * npd
                    _dots(U, R + 1, R + 1, on, W2, 0, b, npd, G, 0, zero)
                    _dots(Wd, 0, R, b, U, R + 1, on, npd, G, R + 1, zero)
                    for r in range(R):
                        G[r + 1] += G[R + 1 + r]
                else:                              # dfa: D_li (nL × m) row-major
                    for k in range(R + 1):
                        G[k] = 0.0
                    for i in range(nL):
                        dv = FB[0, foff[li] + i * m + j]
                        for k in range(R + 1):
                            G[k] += dv * U[R + 1 + k, oL + i]
                g = G[0]
                ex = math.exp(-beta * U[0, om + j])
                s = 1.0 - ex
                U[R + 1, om + j] = g * s
                for r in range(1, R + 1):
                    U[R + 1 + r, om + j] = G[r] * s + g * beta * ex * U[r, om + j]

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _sweep(W2, Wd, b0, npd, m, R, c, Cr, dr, scale, act_s, act_u, pairs, U, Un, on, om, Z, has_next, zero,
               red, vals, vd, au, aud, xdv):
        """One pass over the rows j of a layer block (m rows of npd): reductions v_s = (aᵀW)_j, then the tangent and
        primal updates ΔW_{:,j} = Σ_u u a_{u,j} (a_u = Σ_s c_{u,s} v_s) with the next sample's forward accumulation
        z += W_{:,j} x_{t+1,j} fused into the same loop while the row is in L1."""
        for j in range(m):
            b = b0 + j * npd
            vals[0] = U[0, om + j]                  # v = x (pre activity)
            vals[1] = U[R + 1, om + j]                  # v = e_pre
            vals[2] = 1.0
            for r in range(R):
                vd[r, 0] = U[r + 1, om + j]
                vd[r, 1] = U[R + 2 + r, om + j]
                vd[r, 2] = 0.0
            for a in range(3):                      # v = Wᵀa: aᵀW_{:,j} and ȧ_rᵀW_{:,j} + aᵀẆ_r{:,j}
                s = 3 + a
                if not act_s[s]:
                    continue
                if a == 0:
                    _dots(U, 0, R + 1, on, W2, 0, b, npd, red, 0, zero)
                    _dots(Wd, 0, R, b, U, 0, on, npd, red, R + 1, zero)
                elif a == 1:
                    _dots(U, R + 1, R + 1, on, W2, 0, b, npd, red, 0, zero)
                    _dots(Wd, 0, R, b, U, R + 1, on, npd, red, R + 1, zero)
                else:
                    _dots(U, 2 * R + 2, 1, on, W2, 0, b, npd, red, 0, zero)
                    for r in range(R):
                        red[r + 1] = 0.0
                    _dots(Wd, 0, R, b, U, 2 * R + 2, on, npd, red, R + 1, zero)
                vals[s] = red[0]
                for r in range(R):
                    vd[r, s] = red[r + 1] + red[R + 1 + r]
            for u in range(3):
                au[u] = 0.0
                for r in range(R):
                    aud[r, u] = 0.0
            for k in range(pairs.shape[0]):          # a_u = Σ_s c_{u,s} v_s ; ȧ_{u,r} = Σ_s C_{r,u,s} v_s + c_{u,s} v̇_{r,s}
                u, s = pairs[k, 0], pairs[k, 1]
                v = vals[s]
                au[u] += c[u, s] * v
                for r in range(R):
                    aud[r, u] += Cr[r, u, s] * v + c[u, s] * vd[r, s]
            xn = Un[0, om + j] if has_next else zero   # next sample's pre activity x_{t+1,j} and its tangents
            ay, ae, a1 = au[0], au[1], au[2]
            w = W2[0, b:b + npd]                    # 0-based slices: see _dots
            yv, ev, one = U[0, on:on + npd], U[R + 1, on:on + npd], U[2 * R + 2, on:on + npd]
            for r in range(R):                      # Ẇ_r ← sẆ_r + d_r W + ẏ_r a_y + ė_r a_e + y ȧ_y + e ȧ_e + 1 ȧ_1
                by, be, b1 = aud[r, 0], aud[r, 1], aud[r, 2]
                wd, zd = Wd[r, b:b + npd], Z[r + 1, :npd]
                ydv, edv = U[r + 1, on:on + npd], U[R + 2 + r, on:on + npd]
                if scale != 1.0 or dr[r] != 0.0:
                    d = dr[r]
                    for i in range(npd):
                        wd[i] = wd[i] * scale + w[i] * d
                if act_u[2] and b1 != 0.0:
                    for i in range(npd):
                        wd[i] += one[i] * b1
                for i in range(npd):                # ... and ż_r += Ẇ_r{:,j} x_{t+1,j}
                    nw = wd[i] + (ydv[i] * ay + edv[i] * ae + yv[i] * by + ev[i] * be)
                    wd[i] = nw
                    zd[i] += nw * xn
            z0 = Z[0, :npd]
            if scale != 1.0:                        # W ← sW + y a_y + e a_e + 1 a_1, and z += W_{:,j} x_{t+1,j}
                for i in range(npd):
                    w[i] *= scale
            if act_u[2] and a1 != 0.0:
                for i in range(npd):
                    w[i] += one[i] * a1
            for i in range(npd):
                nw = w[i] + yv[i] * ay + ev[i] * ae
                w[i] = nw
                z0[i] += nw * xn
            if has_next and om > 0:                 # ż_r += W_{:,j} ẋ_{r,t+1,j} (the input layer has no tangent)
                for r in range(R):
                    xdv[r] = Un[r + 1, om + j]
                _axpy_rows(Z, 1, R, W2[0], b, xdv, npd)

    @njit(cache=True, error_model="numpy", fastmath=FAST, parallel=True)
    def _run(WT, WdT, FB, X, T, widths, wpad, woff, foff, voff, c, Cr, dr, scale, act_s, act_u, pairs, mode,
             beta):
        """All episodes (prange over b), all samples; W and Ẇ updated in place. Per-layer vectors are stacked
        as rows (0 primal, 1..R tangents) and zero-padded to the padded widths, so every loop is whole SIMD.
        c … pairs: the rule's coefficients as `_coefficients` gives them."""
        Bn, S = X.shape[0], X.shape[1]
        R = WdT.shape[1]                            # tangent directions (0: primal only)
        L = widths.shape[0] - 1
        V = voff[L] + wpad[L]
        zero = np.zeros(1, dtype=WT.dtype)[0]       # a typed 0 (numba: float32 * 0 is float64, halving SIMD width)
        npmax = 0
        for k in range(L + 1):
            npmax = max(npmax, wpad[k])
        for bi in prange(Bn):
            U = np.zeros((2 * R + 3, V), dtype=WT.dtype)     # rows: y, ẏ_1..ẏ_R, e, ė_1..ė_R, 1 (one base
            Un = np.zeros((2 * R + 3, V), dtype=WT.dtype)    # pointer: the vectorizer's alias checks stay few)
            for li in range(L + 1):
                for i in range(widths[li]):
                    U[2 * R + 2, voff[li] + i] = 1.0
                    Un[2 * R + 2, voff[li] + i] = 1.0
            Z = np.zeros((R + 1, npmax), dtype=WT.dtype)
            G = np.zeros(2 * R + 2, dtype=WT.dtype)
            red = np.zeros(2 * R + 2, dtype=WT.dtype)
            vals = np.zeros(N_SLOTS, dtype=WT.dtype)
            vd = np.zeros((max(R, 1), N_SLOTS), dtype=WT.dtype)
            au = np.zeros(3, dtype=WT.dtype)
            aud = np.zeros((max(R, 1), 3), dtype=WT.dtype)
            xdv = np.zeros(max(R, 1), dtype=WT.dtype)
            # the episode's state is copied into arrays of this thread's own: views of the shared inputs would
            # share one reference count, whose atomic updates on every slice bounce a cache line between cores
            W1 = WT[bi].copy()
            W2 = W1.reshape((1, W1.shape[0]))
            Wd = WdT[bi].copy()
            F2 = FB[bi].copy().reshape((1, FB.shape[1]))
            for j in range(widths[0]):
                U[0, j] = X[bi, 0, j]
            _forward0(W1, woff, widths, wpad, U, voff, beta)
            for st in range(S):
                _errors(U, F2, foff, W2, Wd, woff, widths, wpad, voff, T[bi, st], mode, beta, R, G, zero)
                has_next = st + 1 < S
                if has_next:
                    for j in range(widths[0]):
                        Un[0, j] = X[bi, st + 1, j]
                for li in range(L):
                    n, m, npd = widths[li + 1], widths[li], wpad[li + 1]
                    on, om = voff[li + 1], voff[li]
                    for k in range(R + 1):
                        for i in range(npd):
                            Z[k, i] = 0.0
                    _sweep(W2, Wd, woff[li], npd, m, R, c, Cr, dr, scale, act_s, act_u, pairs, U, Un, on, om,
                           Z, has_next, zero, red, vals, vd, au, aud, xdv)
                    if has_next:
                        for i in range(n):
                            if li == L - 1:
                                Un[0, on + i] = Z[0, i]
                                for r in range(R):
                                    Un[r + 1, on + i] = Z[r + 1, i]
                            else:
                                Un[0, on + i] = _softplus(Z[0, i], beta)
                                sg = 1.0 / (1.0 + math.exp(-beta * Z[0, i]))
                                for r in range(R):
                                    Un[r + 1, on + i] = sg * Z[r + 1, i]
                if has_next:
                    U, Un = Un, U
            WT[bi] = W1
            WdT[bi] = Wd


# --------------------------------------------------------------------------------------------- torch wrapper

PAD = 16   # per-layer vectors and weight rows are zero-padded to a multiple of 16 floats: every loop is whole SIMD


def _padded(n: int) -> int:
    return -(-n // PAD) * PAD


def _pack_transposed(mats: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (…, n, m) matrices as transposed (m × n̄) blocks, n̄ = n padded with zeros, in one flat trailing
    dim; block offsets."""
    blocks = [torch.nn.functional.pad(m.transpose(-1, -2), (0, _padded(m.shape[-2]) - m.shape[-2]))
              .reshape(*m.shape[:-2], -1) for m in mats]
    offs = np.cumsum([0] + [b.shape[-1] for b in blocks[:-1]]).astype(np.int64)
    return torch.cat(blocks, dim=-1).contiguous().numpy(), offs


def _pack_rowmajor(mats: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    blocks = [m.reshape(m.shape[0], -1) for m in mats]
    offs = np.cumsum([0] + [b.shape[-1] for b in blocks[:-1]]).astype(np.int64)
    return torch.cat(blocks, dim=-1).contiguous().numpy(), offs


def _coefficients(p: FusedPlan, theta: np.ndarray, R: int) -> tuple[np.ndarray, ...]:
    """c_{u,s} = Σ_t θ_t C[t,u,s], C_r (tangent r's own table), d_r, s = 1 + Σ_t θ_t d_t, the active slots and
    u-vectors, and the (u, s) pairs some term uses, in θ's precision (shared by the C and the numba kernel)."""
    dt = theta.dtype
    c = np.einsum("t,tus->us", theta.astype(np.float64), p.coef).astype(dt)
    Cr = np.ascontiguousarray(p.coef[:R], dtype=dt) if R else np.zeros((1, 3, N_SLOTS), dtype=dt)
    dr = np.ascontiguousarray(p.decay[:R], dtype=dt) if R else np.zeros(1, dtype=dt)
    scale = 1.0 + float(theta.astype(np.float64) @ p.decay)
    active = p.coef != 0
    pairs = np.ascontiguousarray(np.argwhere(active.any(axis=0)), dtype=np.int32)   # (u, s) used by some term
    return (c, Cr, dr, scale, active.any(axis=(0, 1)).astype(np.int8), active.any(axis=(0, 2)).astype(np.int8),
            pairs)


def _run_c(kernel, p: FusedPlan, theta: np.ndarray, WT: np.ndarray, WdT: np.ndarray, FB: np.ndarray, X: np.ndarray,
           T: np.ndarray, widths: np.ndarray, wpad: np.ndarray, woff: np.ndarray, foff: np.ndarray,
           voff: np.ndarray, mode: int, beta: float) -> None:
    """The C kernel, one episode per call, episodes spread over torch's thread count (ctypes drops the GIL)."""
    Bn, R = WT.shape[0], WdT.shape[1]
    c, Cr, dr, scale, act_s, act_u, pairs = _coefficients(p, theta, R)
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (widths, wpad, woff, foff, voff)]
    th = np.ascontiguousarray(theta, dtype=np.float64)
    atoms, kap, gates = (np.ascontiguousarray(p.atoms, dtype=np.int32), np.ascontiguousarray(p.atom_coef),
                         np.ascontiguousarray(p.gates, dtype=np.int32))
    shared = [a.ctypes.data for a in ints] + [WT.shape[1], c.ctypes.data, Cr.ctypes.data, dr.ctypes.data,
                                              float(scale), float(beta), act_s.ctypes.data, act_u.ctypes.data,
                                              len(pairs), pairs.ctypes.data, th.ctypes.data, len(atoms),
                                              atoms.ctypes.data, kap.ctypes.data, len(gates), gates.ctypes.data]
    L = len(widths) - 1

    def one(b: int) -> int:
        return kernel(WT[b].ctypes.data, WdT[b].ctypes.data, FB[b].ctypes.data, X[b].ctypes.data,
                      T[b].ctypes.data, X.shape[1], L, R, mode, *shared)

    threads = max(1, min(torch.get_num_threads(), Bn))
    if threads == 1:
        codes = [one(b) for b in range(Bn)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(one, range(Bn)))
    if any(codes):
        raise MemoryError("the fused C kernel could not allocate its work memory")


def _run_packed(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                x_train: Tensor, y_train: Tensor, feedback: str, beta: float,
                tangents: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Pack W, Ẇ = 0 and the feedback as transposed flat blocks, run the kernel, unpack as torch views."""
    p = plan(rule)
    if p is None or not available() or feedback not in FEEDBACK_CODES or (Bs is None and feedback != "bp"):
        raise ValueError("rule/feedback not fusable; use discovery.inner.run_online_forward")
    dtype = Ws[0].dtype
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    widths = np.array([Ws[0].shape[2]] + [W.shape[1] for W in Ws], dtype=np.int64)
    wpad = np.array([_padded(int(n)) for n in widths], dtype=np.int64)
    voff = np.cumsum(np.concatenate([[0], wpad[:-1]])).astype(np.int64)
    WT, woff = _pack_transposed([W.detach().cpu() for W in Ws])
    Bn, R = WT.shape[0], (len(rule) if tangents else 0)
    WdT = np.zeros((Bn, R, WT.shape[1]), dtype=np_dtype)
    if feedback == "bp":                                  # the feedback is W itself (read from the W blocks)
        FB, foff = np.zeros((Bn, 1), dtype=np_dtype), np.zeros(len(Ws), dtype=np.int64)
    elif feedback == "fa":
        FB, foff = _pack_transposed([b.detach().cpu() for b in Bs])
    else:
        FB, foff = _pack_rowmajor([b.detach().cpu() for b in Bs])
        foff = np.concatenate([[0], foff]).astype(np.int64)  # D for hidden layer ℓ sits at block ℓ (1-based)
    X = np.ascontiguousarray(x_train.detach().cpu().numpy(), dtype=np_dtype)
    T = np.ascontiguousarray(y_train.detach().cpu().numpy(), dtype=np.int64)
    th = theta.detach().cpu().numpy().astype(np_dtype)
    FB = np.ascontiguousarray(FB, dtype=np_dtype)
    kernel = ckernel.load(np_dtype)
    if p.gated and kernel is None:
        raise ValueError("scalar-gated rules need the C kernel (the numba fallback runs ungated rules only)")
    if kernel is not None:
        _run_c(kernel, p, th, WT, WdT, FB, X, T, widths, wpad, woff, foff, voff, FEEDBACK_CODES[feedback], beta)
    else:
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
        with _KERNEL_LOCK:
            c, Cr, dr, scale, act_s, act_u, pairs = _coefficients(p, th, WdT.shape[1])
            _run(WT, WdT, FB, X, T, widths, wpad, woff, foff, voff, c, Cr, dr, np_dtype(scale), act_s, act_u, pairs,
                 FEEDBACK_CODES[feedback], float(beta))
    Wt, Wdt = torch.from_numpy(WT), torch.from_numpy(WdT)
    out_W, out_D = [], []
    for li in range(len(Ws)):
        n, m, npd = int(widths[li + 1]), int(widths[li]), int(wpad[li + 1])
        o = int(woff[li])
        out_W.append(Wt[:, o:o + npd * m].reshape(Bn, m, npd)[..., :n].transpose(1, 2))
        if tangents:
            out_D.append(Wdt[:, :, o:o + npd * m].reshape(Bn, R, m, npd)[..., :n].permute(1, 0, 3, 2))
    return out_W, out_D


def run_online_forward_fused(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                             x_train: Tensor, y_train: Tensor, feedback: str,
                             beta: float) -> tuple[list[Tensor], list[Tensor]]:
    """Drop-in for discovery.inner.run_online_forward on CPU: adapted W (B, n, m) and Ẇ (R, B, n, m)."""
    return _run_packed(rule, theta, Ws, Bs, x_train, y_train, feedback, beta, tangents=True)


def run_online_fused(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                     x_train: Tensor, y_train: Tensor, feedback: str, beta: float) -> list[Tensor]:
    """Primal-only online pass (held-out evaluation): adapted W (B, n, m)."""
    return _run_packed(rule, theta, Ws, Bs, x_train, y_train, feedback, beta, tangents=False)[0]
