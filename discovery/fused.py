"""Fused CPU inner loop: the forward-mode online pass of discovery.inner, compiled per episode with numba.

Same mathematics as `run_online_forward` (W_ℓ ← W_ℓ + Σ_r θ_r F^r_ℓ and Ẇ_ℓ ← Ẇ_ℓ + d(ΔW_ℓ)/dθ in closed form), but
each step touches every weight once: W_ℓ is stored transposed (row j = input unit j), so one sweep over the rows

    v_j = (aᵀW)_j (Oja's yᵀW),  W_{:,j} ← (1+d) W_{:,j} + Σ_s U_s v_{s,j},  z_{t+1} += W_{:,j} x_{t+1,j}

updates column j of W and of its R tangents and accumulates the next sample's forward pass while the row sits in
L1: each weight and tangent is read and written once per step (the batched torch loop streams them four times).
Episodes run in parallel (numba prange), one episode per thread, so its state (W and R tangents, ~3 MB for the S3
network) is streamed from L2/L3 rather than from DRAM; the sweep is bound by that cache bandwidth.

A rule is fusable when every atom is u vᵀ with u ∈ {y, e, 1} and v ∈ {x, e_pre, 1, Wᵀy, Wᵀe, Wᵀ1} (F0, F1, F2,
F4, F9, hebb) plus decay (F3), and the feedback is fa, dfa or bp (bp reads W_{ℓ+1} and Ẇ_{ℓ+1} in the error pass,
before the sweep updates them). Otherwise (F5–F8, sign feedback, CUDA) the caller uses the batched torch loop.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rules.compiler import CompiledRule

U_CODES = {"y": 0, "e": 1, "one": 2}
#: v slots: 0 x, 1 e_pre, 2 one, 3 Wᵀy, 4 Wᵀe, 5 Wᵀ1 (slot 3 + u-code of a)
V_DIRECT = {"x": 0, "e_pre": 1, "one": 2}
N_SLOTS = 6
FEEDBACK_CODES = {"fa": 0, "dfa": 1, "bp": 2}
_KERNEL_LOCK = threading.Lock()   # numba's default 'workqueue' threading layer must not be entered concurrently

try:  # numba is a runtime dependency; a missing or broken install only disables the fast path
    import numba
    from numba import njit, prange
except Exception:  # noqa: BLE001  # pragma: no cover
    numba = None


@dataclass(frozen=True)
class FusedPlan:
    """ΔW = Σ_t θ_t (Σ_{u,s} C[t,u,s] u v_sᵀ + d_t W): the rule as a dense coefficient table."""

    coef: np.ndarray    # (R, 3, 6)
    decay: np.ndarray   # (R,)


def plan(rule: CompiledRule) -> FusedPlan | None:
    """The coefficient table of a fusable rule, or None when some atom has another shape."""
    R = len(rule)
    coef = np.zeros((R, 3, N_SLOTS))
    for t, term in enumerate(rule.terms):
        for a in term.atoms:
            if len(a.prefix) != 1 or a.prefix[0][1] or a.prefix[0][0] not in U_CODES:
                return None
            u = U_CODES[a.prefix[0][0]]
            if len(a.suffix) == 1 and a.suffix[0][1] and a.suffix[0][0] in V_DIRECT:
                slot = V_DIRECT[a.suffix[0][0]]
            elif (len(a.suffix) == 2 and a.suffix[0][1] and a.suffix[0][0] in U_CODES
                  and a.suffix[1] == ("W", False)):
                slot = 3 + U_CODES[a.suffix[0][0]]
            else:
                return None
            coef[t, u, slot] += a.coef
    return FusedPlan(coef, np.array(rule.decays, dtype=np.float64))


def available() -> bool:
    return numba is not None


def fusable(rule: CompiledRule, feedback: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused loop can run this rule: CPU, fa/dfa/bp feedback, supported atoms, numba present."""
    return (available() and device.type == "cpu" and feedback in FEEDBACK_CODES
            and dtype in (torch.float32, torch.float64) and plan(rule) is not None)


# --------------------------------------------------------------------------------------------- the kernel

#: reassociation (vectorized reductions) and FMA contraction, but not no-NaN/no-inf: divergence must stay visible
FAST = {"reassoc", "contract", "arcp"}

if numba is not None:

    @njit(cache=True, error_model="numpy", fastmath=FAST, inline="always")
    def _softplus(z, beta):
        bz = beta * z
        return z if bz > 20.0 else math.log1p(math.exp(bz)) / beta

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _forward0(WT, woff, widths, ys, voff, beta):
        """Initial forward pass (Ẇ = 0 so all tangents are 0): ys[ℓ] from ys[0]."""
        L = widths.shape[0] - 1
        for li in range(L):
            n, m = widths[li + 1], widths[li]
            z = np.zeros(n, dtype=ys.dtype)
            for j in range(m):
                xj = ys[voff[li] + j]
                base = woff[li] + j * n
                for i in range(n):
                    z[i] += WT[base + i] * xj
            for i in range(n):
                ys[voff[li + 1] + i] = z[i] if li == L - 1 else _softplus(z[i], beta)

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _errors(ys, yd, es, ed, FB, foff, WT, WdT, woff, widths, voff, target, mode, beta):
        """e_L = p − onehot (p = softmax, written into ys[L] as the output post-activity), ė_L = ṗ;
        e_ℓ = g ⊙ s, s = 1 − e^{−β y_ℓ}, g = e_{ℓ+1} B_{ℓ+1} (fa), e_{ℓ+1} W_{ℓ+1} (bp) or e_L D_ℓ (dfa);
        ė_ℓ = ġ ⊙ s + g β e^{−β y} ẏ with ġ = ė B (fa), ė W + e Ẇ (bp), ė_L D (dfa)."""
        L = widths.shape[0] - 1
        R = yd.shape[0]
        zero = np.zeros(1, dtype=ys.dtype)[0]     # typed 0: keeps the dot products in the activities' precision
        nL, oL = widths[L], voff[L]
        mx = -1e300
        for i in range(nL):
            mx = max(mx, ys[oL + i])
        tot = 0.0
        for i in range(nL):
            ys[oL + i] = math.exp(ys[oL + i] - mx)
            tot += ys[oL + i]
        for i in range(nL):
            ys[oL + i] /= tot
        for r in range(R):
            dot = 0.0
            for i in range(nL):
                dot += ys[oL + i] * yd[r, oL + i]
            for i in range(nL):
                yd[r, oL + i] = ys[oL + i] * (yd[r, oL + i] - dot)
        for i in range(nL):
            es[oL + i] = ys[oL + i] - (1.0 if i == target else 0.0)
            for r in range(R):
                ed[r, oL + i] = yd[r, oL + i]
        for li in range(L - 1, -1, -1):          # layer li's error from layer li+1 (weight block li)
            n, m = widths[li + 1], widths[li]
            om, on = voff[li], voff[li + 1]
            if mode == 1 and li == 0:
                for j in range(m):
                    es[om + j] = 0.0
                    for r in range(R):
                        ed[r, om + j] = 0.0
                break
            G = np.zeros(R + 1, dtype=ys.dtype)    # [g_j, ġ_{1,j}, …, ġ_{R,j}] in the activities' precision
            for j in range(m):
                if mode != 1:                      # transposed block li: row j = column j of B_{li+1} or W_{li+1}
                    row = FB[foff[li] + j * n:foff[li] + (j + 1) * n] if mode == 0 else \
                        WT[woff[li] + j * n:woff[li] + (j + 1) * n]
                    acc = zero
                    for i in range(n):
                        acc += row[i] * es[on + i]
                    G[0] = acc
                    for r in range(R):
                        acc = zero
                        edr = ed[r, on:on + n]
                        for i in range(n):
                            acc += row[i] * edr[i]
                        if mode == 2:              # bp: the feedback is W itself, so it has a tangent e Ẇ_r
                            wdr = WdT[r, woff[li] + j * n:woff[li] + (j + 1) * n]
                            for i in range(n):
                                acc += wdr[i] * es[on + i]
                        G[r + 1] = acc
                else:                              # D_li (nL × m) row-major
                    for k in range(R + 1):
                        G[k] = 0.0
                    for i in range(nL):
                        dv = FB[foff[li] + i * m + j]
                        G[0] += dv * es[oL + i]
                        for r in range(R):
                            G[r + 1] += dv * ed[r, oL + i]
                g = G[0]
                ex = math.exp(-beta * ys[om + j])
                s = 1.0 - ex
                es[om + j] = g * s
                for r in range(R):
                    gd = G[r + 1]
                    ed[r, om + j] = gd * s + g * beta * ex * yd[r, om + j]

    @njit(cache=True, error_model="numpy", fastmath=FAST)
    def _sweep(WT, WdT, base_off, n, m, theta, coef, decay, u, ud, vx, vxd, vep, vepd, xn, xnd, has_next,
               z, zd, active, beta):
        """One pass over the rows j of layer block (m × n): reductions aᵀW_{:,j}, tangent then primal update of
        column j, and the next sample's forward accumulation z += W_{:,j} x_{t+1,j} (with tangents)."""
        R = theta.shape[0]                          # terms
        RT = WdT.shape[0]                           # tangent directions: R (meta-gradient) or 0 (evaluation)
        tmp = np.zeros(R + 1, dtype=WT.dtype)      # scalars in the weights' precision (float32 stays float32)
        zero = tmp[R]                               # a typed 0 (numba: float32 * 0 is float64, which halves the SIMD width)
        tmp[R] = 1.0
        for t in range(R):
            tmp[R] += theta[t] * decay[t]
            tmp[t] = decay[t]
        scale = tmp[R]
        # combined U_s = Σ_t θ_t Σ_u C[t,u,s] u ; U̇_{r,s} = Σ_t θ_t Σ_u C[t,u,s] u̇_r + Σ_u C[r,u,s] u
        Uc = np.zeros((N_SLOTS, n), dtype=WT.dtype)
        Udc = np.zeros((RT, N_SLOTS, n), dtype=WT.dtype)
        for s in range(N_SLOTS):
            if not active[s]:
                continue
            for uc in range(3):
                c = zero
                for t in range(R):
                    c += theta[t] * coef[t, uc, s]
                if c != 0.0:
                    for i in range(n):
                        Uc[s, i] += c * u[uc, i]
                    if uc < 2:
                        for r in range(RT):
                            for i in range(n):
                                Udc[r, s, i] += c * ud[r, uc, i]
                for r in range(RT):
                    cr = coef[r, uc, s]
                    if cr != 0.0:
                        for i in range(n):
                            Udc[r, s, i] += cr * u[uc, i]
        vals = np.zeros(N_SLOTS, dtype=WT.dtype)
        vd = np.zeros((RT, N_SLOTS), dtype=WT.dtype)
        vals[2] = 1.0
        for j in range(m):
            b = base_off + j * n
            w = WT[b:b + n]
            vals[0] = vx[j]
            vals[1] = vep[j]
            for r in range(RT):
                vd[r, 0] = vxd[r, j]
                vd[r, 1] = vepd[r, j]
            for a in range(3):                      # v = Wᵀa: (aᵀW)_j and its tangent ȧᵀW_{:,j} + aᵀẆ_{:,j}
                s = 3 + a
                if not active[s]:
                    continue
                acc = zero
                for i in range(n):
                    acc += u[a, i] * w[i]
                vals[s] = acc
                for r in range(RT):
                    wd = WdT[r, b:b + n]
                    acc = zero
                    if a < 2:
                        for i in range(n):
                            acc += ud[r, a, i] * w[i] + u[a, i] * wd[i]
                    else:
                        for i in range(n):
                            acc += wd[i]
                    vd[r, s] = acc
            for r in range(RT):                     # Ẇ ← (1+d)Ẇ + d_r W + Σ_s (U̇_{r,s} v_s + U_s v̇_{r,s})
                wd = WdT[r, b:b + n]
                dr = tmp[r]
                if scale != 1.0:
                    for i in range(n):
                        wd[i] *= scale
                if dr != 0.0:
                    for i in range(n):
                        wd[i] += dr * w[i]
                for s in range(N_SLOTS):
                    if not active[s]:
                        continue
                    v = vals[s]
                    dv = vd[r, s]
                    if dv != 0.0:
                        for i in range(n):
                            wd[i] += Udc[r, s, i] * v + Uc[s, i] * dv
                    else:                           # e.g. v = x on layer 1: the input has no tangent
                        for i in range(n):
                            wd[i] += Udc[r, s, i] * v
            if scale != 1.0:                        # W ← (1+d)W + Σ_s U_s v_s
                for i in range(n):
                    w[i] *= scale
            for s in range(N_SLOTS):
                if active[s]:
                    v = vals[s]
                    for i in range(n):
                        w[i] += Uc[s, i] * v
            if has_next:                            # z_{t+1} += W_{:,j} x_j, ż_r += Ẇ_r{:,j} x_j + W_{:,j} ẋ_{r,j}
                xj = xn[j]
                for i in range(n):
                    z[i] += w[i] * xj
                for r in range(RT):
                    wd = WdT[r, b:b + n]
                    xdj = xnd[r, j]
                    if xdj != 0.0:
                        for i in range(n):
                            zd[r, i] += wd[i] * xj + w[i] * xdj
                    else:
                        for i in range(n):
                            zd[r, i] += wd[i] * xj

    @njit(cache=True, error_model="numpy", fastmath=FAST, parallel=True)
    def _run(WT, WdT, FB, X, T, widths, woff, foff, voff, theta, coef, decay, mode, beta):
        """All episodes (prange over b), all samples; W and Ẇ updated in place."""
        Bn, S = X.shape[0], X.shape[1]
        R = WdT.shape[1]                            # tangent directions (0: primal only)
        NT = theta.shape[0]
        L = widths.shape[0] - 1
        V = voff[L] + widths[L]
        nmax = 0
        for k in range(L + 1):
            nmax = max(nmax, widths[k])
        active = np.zeros(N_SLOTS, dtype=np.bool_)
        for s in range(N_SLOTS):
            for t in range(NT):
                for uc in range(3):
                    if coef[t, uc, s] != 0.0:
                        active[s] = True
        for bi in prange(Bn):
            ys = np.zeros(V, dtype=WT.dtype)
            yd = np.zeros((R, V), dtype=WT.dtype)
            yn = np.zeros(V, dtype=WT.dtype)
            ydn = np.zeros((R, V), dtype=WT.dtype)
            es = np.zeros(V, dtype=WT.dtype)
            ed = np.zeros((R, V), dtype=WT.dtype)
            u = np.zeros((3, nmax), dtype=WT.dtype)
            ud = np.zeros((R, 3, nmax), dtype=WT.dtype)
            z = np.zeros(nmax, dtype=WT.dtype)
            zd = np.zeros((R, nmax), dtype=WT.dtype)
            zero_m = np.zeros((R, nmax), dtype=WT.dtype)
            Wb, Wdb, Fb = WT[bi], WdT[bi], FB[bi]
            for j in range(widths[0]):
                ys[j] = X[bi, 0, j]
            _forward0(Wb, woff, widths, ys, voff, beta)
            for st in range(S):
                _errors(ys, yd, es, ed, Fb, foff, Wb, Wdb, woff, widths, voff, T[bi, st], mode, beta)
                has_next = st + 1 < S
                if has_next:
                    for j in range(widths[0]):
                        yn[j] = X[bi, st + 1, j]
                for li in range(L):
                    n, m = widths[li + 1], widths[li]
                    on, om = voff[li + 1], voff[li]
                    for i in range(n):
                        u[0, i] = ys[on + i]
                        u[1, i] = es[on + i]
                        u[2, i] = 1.0
                        for r in range(R):
                            ud[r, 0, i] = yd[r, on + i]
                            ud[r, 1, i] = ed[r, on + i]
                    for i in range(n):
                        z[i] = 0.0
                        for r in range(R):
                            zd[r, i] = 0.0
                    xnd = zero_m if li == 0 else ydn[:, om:om + m]
                    _sweep(Wb, Wdb, woff[li], n, m, theta, coef, decay,
                           u, ud, ys[om:om + m], yd[:, om:om + m], es[om:om + m], ed[:, om:om + m],
                           yn[om:om + m], xnd, has_next, z, zd, active, beta)
                    if has_next:
                        for i in range(n):
                            if li == L - 1:
                                yn[on + i] = z[i]
                                for r in range(R):
                                    ydn[r, on + i] = zd[r, i]
                            else:
                                yn[on + i] = _softplus(z[i], beta)
                                sg = 1.0 / (1.0 + math.exp(-beta * z[i]))
                                for r in range(R):
                                    ydn[r, on + i] = sg * zd[r, i]
                if has_next:
                    ys, yn = yn, ys
                    yd, ydn = ydn, yd


# --------------------------------------------------------------------------------------------- torch wrapper

def _pack_transposed(mats: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (…, n, m) matrices as transposed (m × n) blocks in one flat trailing dim; block offsets."""
    blocks = [m.transpose(-1, -2).reshape(*m.shape[:-2], -1) for m in mats]
    offs = np.cumsum([0] + [b.shape[-1] for b in blocks[:-1]]).astype(np.int64)
    return torch.cat(blocks, dim=-1).contiguous().numpy(), offs


def _pack_rowmajor(mats: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    blocks = [m.reshape(m.shape[0], -1) for m in mats]
    offs = np.cumsum([0] + [b.shape[-1] for b in blocks[:-1]]).astype(np.int64)
    return torch.cat(blocks, dim=-1).contiguous().numpy(), offs


def _run_packed(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                x_train: Tensor, y_train: Tensor, feedback: str, beta: float,
                tangents: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Pack W, Ẇ = 0 and the feedback as transposed flat blocks, run the kernel, unpack as torch views."""
    p = plan(rule)
    if p is None or numba is None or feedback not in FEEDBACK_CODES or (Bs is None and feedback != "bp"):
        raise ValueError("rule/feedback not fusable; use discovery.inner.run_online_forward")
    dtype = Ws[0].dtype
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
    widths = np.array([Ws[0].shape[2]] + [W.shape[1] for W in Ws], dtype=np.int64)
    voff = np.cumsum(np.concatenate([[0], widths[:-1]])).astype(np.int64)
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
    X = x_train.detach().cpu().contiguous().numpy().astype(np_dtype, copy=False)
    T = y_train.detach().cpu().contiguous().numpy().astype(np.int64)
    th = theta.detach().cpu().numpy().astype(np_dtype)
    with _KERNEL_LOCK:
        _run(WT, WdT, FB.astype(np_dtype, copy=False), X, T, widths, woff, foff, voff, th,
             p.coef.astype(np_dtype), p.decay.astype(np_dtype), FEEDBACK_CODES[feedback], float(beta))
    Wt, Wdt = torch.from_numpy(WT), torch.from_numpy(WdT)
    out_W, out_D = [], []
    for li in range(len(Ws)):
        n, m = int(widths[li + 1]), int(widths[li])
        o = int(woff[li])
        out_W.append(Wt[:, o:o + n * m].reshape(Bn, m, n).transpose(1, 2))
        if tangents:
            out_D.append(Wdt[:, :, o:o + n * m].reshape(Bn, R, m, n).permute(1, 0, 3, 2))
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
