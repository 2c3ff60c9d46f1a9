"""The numba version of the fused inner-loop kernel (same mathematics and layout as ``fused_kernel.c``; see
discovery.feedforward.kernels.fused), used where no C compiler works. ``numba`` is None when numba is missing or
broken, and ``run_numba`` is then None too."""

from __future__ import annotations

import math

import numpy as np

#: v slots per atom: 0 x, 1 e_pre, 2 one, 3 Wᵀy, 4 Wᵀe, 5 Wᵀ1
N_SLOTS = 6

try:  # numba is a runtime dependency; a missing or broken install only disables the fast path
    import numba
    from numba import njit, prange
except Exception:  # noqa: BLE001  # pragma: no cover
    numba = None


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


run_numba = _run if numba is not None else None
