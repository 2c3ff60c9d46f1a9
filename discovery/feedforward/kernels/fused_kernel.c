/* The fused forward-mode inner loop of discovery/fused.py in C (compiled at first use with the system's C
 * compiler; the numba kernel there is the fallback and the same mathematics).
 *
 * One episode per call: W_ℓ ← s W_ℓ + Σ_u u a_uᵀ (u ∈ {y, e, 1}, a_u = Σ_s c_{u,s} v_s, v_s ∈ {x, e_pre, 1, Wᵀy,
 * Wᵀe, Wᵀ1}) sample by sample, with the R tangents Ẇ_r = ∂W/∂θ_r carried in closed form
 *   Ẇ_r ← s Ẇ_r + d_r W + Σ_u (u̇_r a_uᵀ + u ȧ_{u,r}ᵀ),  ȧ_{u,r} = Σ_s C_{r,u,s} v_s + c_{u,s} v̇_{r,s}.
 * Weights are stored transposed (row j = input unit j, padded to a multiple of 16), so one sweep over the rows
 * updates the column of W and of all its tangents and accumulates the next sample's forward pass z += W_{:,j} x_j
 * while the row is in L1. The cost is in two kinds of loop, both written over explicit SIMD vectors (GCC/clang
 * vector extensions; 64-byte vectors where AVX-512 is present):
 *  - reductions: Oja's slots v = Wᵀa (a ∈ {y, e, 1}) and their tangents ȧ_rᵀW + aᵀẆ_r, and the error pass eB.
 *    The parts against W are one register-blocked product (A Wᵀ over the layer, 4 × 3 tiles) before the sweep
 *    (columns are independent, so the pre-update W is the same for every column); the parts against Ẇ_r are the
 *    same tiles over the row's R tangents, each tangent row loaded once for every slot;
 *  - the update: one pass per tangent row, Ẇ_r ← sẆ_r + d_r W + ẏ_r a_y + ė_r a_e + y ȧ_y + e ȧ_e + 1 ȧ_1 and
 *    ż_r += Ẇ_r x + W ẋ_r in the same loop.
 *
 * Scalar gates (F5–F8 and the generated gated terms): an atom may carry up to two 1×1 gates g (post dot aᵀb, pre
 * dot aᵀb, or bilinear aᵀW b). Then c_{u,s} = Σ_atoms θ_t κ G and C_{r,u,s} = Σ_{atoms of r} κ G + Σ_atoms θ_t κ Ġ_r
 * are recomputed per layer and sample from the gates' values G and tangents Ġ_r. A bilinear gate aᵀW x is aᵀz
 * (z = W x, the layer's pre-activation, kept from the forward pass with its tangent ż = Ẇ x + W ẋ); any other
 * aᵀW b = Σ_j (aᵀW)_j b_j needs every column of W and Ẇ before any is updated, so its reductions (the same as
 * Oja's slot v = Wᵀa) run in a pre-pass over the layer and the sweep reuses them.
 *
 * Layout (all per episode): U rows 0..R = y, ẏ_1..ẏ_R; rows R+1..2R+1 = e, ė_r; row 2R+2 = ones (zero pads);
 * each row holds every layer's vector at offset voff[ℓ]; ZP rows 0..R = z, ż_r. Tangent tables are [u][s][r].
 * REAL is float or double (-DREAL=...).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef REAL real;
#define NS 6
#ifndef VB
#if defined(__AVX512F__)
#define VB 64
#else
#define VB 32
#endif
#endif
typedef real vec __attribute__((vector_size(VB)));
#define VL ((long)(VB / sizeof(real)))   /* divides the padding (16 floats, 8 doubles) */
#define INLINE static inline __attribute__((always_inline))
#ifndef RBLK
#define RBLK 4
#endif

INLINE vec vld(const real *p) { vec v; memcpy(&v, p, sizeof v); return v; }
INLINE void vst(real *p, vec v) { memcpy(p, &v, sizeof v); }
INLINE vec vbc(real s) { return (vec){0} + s; }
INLINE real vsum(vec v) {
    real s = 0;
    for (int l = 0; l < VL; l++) s += v[l];
    return s;
}

static inline real softplus(real z, real beta) {
    real bz = beta * z;
    return bz > 20 ? z : (real)(log1p(exp((double)bz)) / beta);
}

/* out[k·ldo + j] = Σ_i A[k·lda + i] B[j·ldb + i] for k < KT ≤ 4, j < JT ≤ 3 (n a multiple of VL). */
INLINE void tile(const real *A, long lda, int KT, const real *B, long ldb, int JT, long n, real *out, long ldo) {
    vec acc[4][3];
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 3; j++) acc[k][j] = vbc(0);
    for (long i = 0; i < n; i += VL) {
        vec b[3];
        for (int j = 0; j < JT; j++) b[j] = vld(B + j * ldb + i);
        for (int k = 0; k < KT; k++) {
            vec a = vld(A + k * lda + i);
            for (int j = 0; j < JT; j++) acc[k][j] += a * b[j];
        }
    }
    for (int k = 0; k < KT; k++)
        for (int j = 0; j < JT; j++) out[k * ldo + j] = vsum(acc[k][j]);
}

#define TILE_CASE(KT, JT) case 4 * (KT) + (JT): tile(a, lda, KT, b, ldb, JT, n, o, ldo); break;

/* out[k·ldo + j] = A_k · B_j for k < K, j < M: the rows of A against the rows of B (row lengths n). B's rows are
 * the outer loop (three at a time), so each is loaded once and A's rows stay in L1. */
static void gemm_nt(const real *A, long lda, int K, const real *B, long ldb, long M, long n, real *out, long ldo) {
    for (long j = 0; j < M; j += 3) {
        int jt = M - j < 3 ? (int)(M - j) : 3;
        for (int k = 0; k < K; k += 4) {
            int kt = K - k < 4 ? K - k : 4;
            const real *a = A + k * lda, *b = B + j * ldb;
            real *o = out + k * ldo + j;
            switch (4 * kt + jt) {
                TILE_CASE(4, 3) TILE_CASE(4, 2) TILE_CASE(4, 1) TILE_CASE(3, 3) TILE_CASE(3, 2) TILE_CASE(3, 1)
                TILE_CASE(2, 3) TILE_CASE(2, 2) TILE_CASE(2, 1) TILE_CASE(1, 3) TILE_CASE(1, 2) TILE_CASE(1, 1)
            }
        }
    }
}

typedef struct {
    int L, R, mode;            /* layers, tangents, feedback: 0 fa, 1 dfa, 2 bp */
    long V, Wtot, npmax, mmax;
    const long *widths, *wpad, *woff, *foff, *voff;
    const real *c, *Cr, *dr;   /* c[u][s] = Σ_t θ_t C[t,u,s]; Cr[u][s][r] = C[r,u,s]; dr[r] = d_r */
    real scale, beta;          /* s = 1 + Σ_t θ_t d_t */
    const char *act_s, *act_u;
    int npairs;                /* the (u, s) pairs with a nonzero coefficient in some term */
    const int *pairs;
    const double *theta;       /* θ_t (gated rules: c and C_r are recomputed from the atoms every sample) */
    int natoms, ngates;
    const int *atoms;          /* natoms × 5: term t, u, s, gate 1, gate 2 (−1: none) */
    const double *atom_coef;   /* κ of each atom */
    const int *gates;          /* ngates × 3: kind (0 post dot aᵀb, 1 pre dot aᵀb, 2 aᵀW b), a, b */
    int need_pre[3];           /* a ∈ {y, e, 1} of a bilinear gate aᵀW b, b ≠ x: its slot runs in the pre-pass */
    int need_P[3];             /* a whose reductions against W are needed (an active slot Wᵀa or need_pre) */
} Plan;

/* Work memory of one episode (sizes in fused_episode). */
typedef struct {
    real *U, *Un, *ZP, *ZPn, *Z, *P, *Gb, *post, *Q, *vd, *aud, *wnew, *cg, *Crg;
    double *g, *gd;
    real *gtape;               /* the adjoint's primal pass (adjoint_kernel.c): where errors() keeps g = eB */
} Work;

static inline real vdot(const real *restrict a, const real *restrict b, long n) {
    real s = 0;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Row of U holding vector code a (0 y/x, 1 e/e_pre, 2 ones): primal, and tangent r (−1: none, the ones). */
static inline long prow(const Plan *p, int a) { return (long)a * (p->R + 1); }
static inline long trow(const Plan *p, int a, int r) { return a == 2 ? -1 : (long)a * (p->R + 1) + 1 + r; }

/* Copy the post vectors a of the slots selected by `want` (and not by `skip`) into rows of `post`. */
static int gather_post(const Plan *p, const real *U, long on, long npd, const int *want, const int *skip,
                       real *post, int *slot) {
    int n = 0;
    for (int a = 0; a < 3; a++) {
        if (!want[a] || (skip && skip[a])) continue;
        memcpy(post + n * p->npmax, U + prow(p, a) * p->V + on, sizeof(real) * npd);
        slot[n++] = a;
    }
    return n;
}

/* Before layer li's sweep: P_a = [a; ȧ_1..ȧ_R] Wᵀ for the a in need_P (P_a[k][j], the pre-update W), and for the
 * a of bilinear pre-pass gates the Ẇ part P_a[1+r][j] += aᵀẆ_r{:,j}. */
static void layer_reductions(const Plan *p, int li, const real *W, const real *Wd, const real *U, Work *w) {
    int R = p->R;
    long m = p->widths[li], npd = p->wpad[li + 1], on = p->voff[li + 1], mm = p->mmax;
    for (int a = 0; a < 3; a++) {
        if (!p->need_P[a]) continue;
        real *Pa = w->P + (long)a * (R + 1) * mm;
        gemm_nt(U + prow(p, a) * p->V + on, p->V, a < 2 ? R + 1 : 1, W + p->woff[li], npd, m, npd, Pa, mm);
        if (a == 2) memset(Pa + mm, 0, sizeof(real) * R * mm);
    }
    int slot[3], npre = gather_post(p, U, on, npd, p->need_pre, NULL, w->post, slot);
    if (!npre || !R) return;
    for (long j = 0; j < m; j++) {
        gemm_nt(Wd + p->woff[li] + j * npd, p->Wtot, R, w->post, p->npmax, npre, npd, w->Q, npre);
        for (int q = 0; q < npre; q++) {
            real *Pa = w->P + (long)slot[q] * (R + 1) * mm;
            for (int r = 0; r < R; r++) Pa[(long)(1 + r) * mm + j] += w->Q[r * npre + q];
        }
    }
}

/* Gated rules, layer li: the gates G_k and Ġ_{k,r}, then c_{u,s} and C_{r,u,s} from the atoms. */
static void layer_coefficients(const Plan *p, int li, const real *U, const real *ZP, Work *w) {
    int R = p->R;
    long V = p->V, m = p->widths[li], n = p->widths[li + 1], on = p->voff[li + 1], om = p->voff[li];
    long mm = p->mmax;
    double *g = w->g, *gd = w->gd;
    for (int k = 0; k < p->ngates; k++) {
        int kind = p->gates[3 * k], a = p->gates[3 * k + 1], b = p->gates[3 * k + 2];
        if (kind < 2) {                        /* aᵀb on the post (kind 0) or the pre (kind 1) side */
            long off = kind == 0 ? on : om, len = kind == 0 ? n : m;
            const real *pa = U + prow(p, a) * V + off, *pb = U + prow(p, b) * V + off;
            g[k] = vdot(pa, pb, len);
            for (int r = 0; r < R; r++) {
                double s = 0;
                if (a < 2) s += vdot(U + trow(p, a, r) * V + off, pb, len);
                if (b < 2) s += vdot(pa, U + trow(p, b, r) * V + off, len);
                gd[(long)k * R + r] = s;
            }
        } else if (b == 0) {                   /* aᵀW x = aᵀz, tangent ȧᵀz + aᵀż */
            const real *pa = U + prow(p, a) * V + on, *z = ZP + on;
            g[k] = vdot(pa, z, n);
            for (int r = 0; r < R; r++) {
                double s = vdot(pa, ZP + (long)(1 + r) * V + on, n);
                if (a < 2) s += vdot(U + trow(p, a, r) * V + on, z, n);
                gd[(long)k * R + r] = s;
            }
        } else {                               /* aᵀW b = Σ_j (aᵀW)_j b_j, from the pre-pass */
            const real *Ta = w->P + (long)a * (R + 1) * mm, *pb = U + prow(p, b) * V + om;
            g[k] = vdot(Ta, pb, m);
            for (int r = 0; r < R; r++) {
                double s = vdot(Ta + (long)(1 + r) * mm, pb, m);
                if (b < 2) s += vdot(Ta, U + trow(p, b, r) * V + om, m);
                gd[(long)k * R + r] = s;
            }
        }
    }
    double cd[3 * NS] = {0};
    real *Cr = w->Crg;
    for (long i = 0; i < (long)R * 3 * NS; i++) Cr[i] = 0;
    for (int q = 0; q < p->natoms; q++) {
        const int *at = p->atoms + 5 * q;
        int t = at[0], u = at[1], s = at[2], g1 = at[3], g2 = at[4], us = u * NS + s;
        double G1 = g1 >= 0 ? g[g1] : 1, G2 = g2 >= 0 ? g[g2] : 1, kap = p->atom_coef[q];
        cd[us] += p->theta[t] * kap * G1 * G2;
        if (t < R) Cr[(long)us * R + t] += (real)(kap * G1 * G2);
        for (int r = 0; r < R; r++) {
            double dG = (g1 >= 0 ? gd[(long)g1 * R + r] * G2 : 0) + (g2 >= 0 ? G1 * gd[(long)g2 * R + r] : 0);
            Cr[(long)us * R + r] += (real)(p->theta[t] * kap * dG);
        }
    }
    for (int i = 0; i < 3 * NS; i++) w->cg[i] = (real)cd[i];
}

/* Initial forward pass (all tangents are 0): row 0 of U (and z in ZP) for every layer from the input. */
static void forward0(const Plan *p, const real *W, real *U, real *ZP, real *z) {
    for (int li = 0; li < p->L; li++) {
        long n = p->widths[li + 1], m = p->widths[li], npd = p->wpad[li + 1];
        memset(z, 0, sizeof(real) * npd);
        for (long j = 0; j < m; j++) {
            real xj = U[p->voff[li] + j];
            const real *restrict w = W + p->woff[li] + j * npd;
            for (long i = 0; i < npd; i++) z[i] += w[i] * xj;
        }
        for (long i = 0; i < n; i++) {
            ZP[p->voff[li + 1] + i] = z[i];
            U[p->voff[li + 1] + i] = li == p->L - 1 ? z[i] : softplus(z[i], p->beta);
        }
    }
}

/* e_L = p − onehot (p = softmax, written into row 0 as the output post-activity), ė_L = ṗ;
 * e_ℓ = g ⊙ (1 − e^{−βy_ℓ}), g = e_{ℓ+1}B_{ℓ+1} (fa), e_{ℓ+1}W_{ℓ+1} (bp), e_L D_ℓ (dfa);
 * ė_ℓ = ġ ⊙ (1 − e^{−βy}) + g β e^{−βy} ẏ with ġ = ėB (fa), ėW + eẆ (bp), ė_L D (dfa). */
static void errors(const Plan *p, real *U, const real *FB, const real *W, const real *Wd, long target, Work *w) {
    int L = p->L, R = p->R;
    long V = p->V, nL = p->widths[L], oL = p->voff[L], mm = p->mmax;
    real *E = U + (long)(R + 1) * V, *Gb = w->Gb;
    double mx = -INFINITY, tot = 0;
    for (long i = 0; i < nL; i++) mx = fmax(mx, (double)U[oL + i]);
    for (long i = 0; i < nL; i++) { U[oL + i] = (real)exp((double)U[oL + i] - mx); tot += U[oL + i]; }
    for (long i = 0; i < nL; i++) U[oL + i] = (real)(U[oL + i] / tot);
    for (int r = 1; r <= R; r++) {
        real *Yr = U + (long)r * V, dot = 0;
        for (long i = 0; i < nL; i++) dot += U[oL + i] * Yr[oL + i];
        for (long i = 0; i < nL; i++) Yr[oL + i] = U[oL + i] * (Yr[oL + i] - dot);
    }
    for (long i = 0; i < nL; i++) {
        E[oL + i] = U[oL + i] - (i == target ? 1 : 0);
        for (int r = 1; r <= R; r++) E[(long)r * V + oL + i] = U[(long)r * V + oL + i];
    }
    for (int li = L - 1; li >= 0; li--) {
        long m = p->widths[li], npd = p->wpad[li + 1], om = p->voff[li], on = p->voff[li + 1];
        if (p->mode == 1 && li == 0) {
            for (int r = 0; r <= R; r++) memset(E + (long)r * V + om, 0, sizeof(real) * m);
            break;
        }
        if (p->mode == 0) {                    /* G[k][j] = Σ_i E_k[i] B[i][j] */
            gemm_nt(E + on, V, R + 1, FB + p->foff[li], npd, m, npd, Gb, mm);
        } else if (p->mode == 2) {             /* Σ_i E_k[i] W[i][j], plus eᵀẆ_r */
            gemm_nt(E + on, V, R + 1, W + p->woff[li], npd, m, npd, Gb, mm);
            for (long j = 0; j < m && R; j++) {
                gemm_nt(Wd + p->woff[li] + j * npd, p->Wtot, R, E + on, V, 1, npd, w->Q, 1);
                for (int r = 0; r < R; r++) Gb[(long)(r + 1) * mm + j] += w->Q[r];
            }
        } else {
            const real *D = FB + p->foff[li];
            for (long j = 0; j < m; j++)
                for (int k = 0; k <= R; k++) {
                    real s = 0;
                    for (long i = 0; i < nL; i++) s += D[i * m + j] * E[(long)k * V + oL + i];
                    Gb[(long)k * mm + j] = s;
                }
        }
        if (w->gtape) memcpy(w->gtape + om, Gb, sizeof(real) * m);
        for (long j = 0; j < m; j++) {
            real g = Gb[j], y = U[om + j];
            real ex = (real)exp(-(double)(p->beta * y)), s = 1 - ex;
            E[om + j] = g * s;
            for (int r = 1; r <= R; r++)
                E[(long)r * V + om + j] = Gb[(long)r * mm + j] * s + g * p->beta * ex * U[(long)r * V + om + j];
        }
    }
}

/* a_u = Σ_s c_{u,s} v_s and ȧ_{u,r} = Σ_s C_{r,u,s} v_s + c_{u,s} v̇_{r,s} (vd[s][r], aud[u][r]). */
static void row_coefficients(const Plan *p, const real *vals, const real *vd, const real *c, const real *Cr,
                             real *au, real *aud) {
    int R = p->R;
    for (int u = 0; u < 3; u++) au[u] = 0;
    memset(aud, 0, sizeof(real) * 3 * R);
    for (int k = 0; k < p->npairs; k++) {
        int u = p->pairs[2 * k], s = p->pairs[2 * k + 1];
        real cus = c[u * NS + s], v = vals[s];
        const real *restrict C = Cr + (long)(u * NS + s) * R, *restrict vs = vd + (long)s * R;
        real *restrict ad = aud + (long)u * R;
        au[u] += cus * v;
        for (int r = 0; r < R; r++) ad[r] += C[r] * v + cus * vs[r];
    }
}

/* Tangent rows r0..r0+RB−1 of column j: Ẇ_r ← sẆ_r + d_r W + ẏ_r a_y + ė_r a_e + y ȧ_{y,r} + e ȧ_{e,r} + 1 ȧ_{1,r}
 * and ż_r += Ẇ_r{:,j} x_{t+1,j} + W_new{:,j} ẋ_{r,t+1,j}; RB tangents per pass share the loads of W, y, e, 1. */
INLINE void tangent_rows(const Plan *p, int li, long j, int r0, const int RB, real *wdb, const real *U,
                         const real *Un, real *Z, const real *w0, const real *wnew, const real *aud, const int xdot,
                         vec vs, vec ay, vec ae, vec vxn) {
    int R = p->R;
    long V = p->V, npd = p->wpad[li + 1], on = p->voff[li + 1], om = p->voff[li];
    const real *yv = U + on, *ev = U + (long)(R + 1) * V + on, *one = U + (long)(2 * R + 2) * V + on;
    real *wd[4], *zd[4];
    const real *ydv[4], *edv[4];
    vec d[4], by[4], be[4], b1[4], xd[4];
    for (int k = 0; k < RB; k++) {
        int r = r0 + k;
        wd[k] = wdb + (long)r * p->Wtot;
        zd[k] = Z + (long)(r + 1) * p->npmax;
        ydv[k] = U + (long)(r + 1) * V + on;
        edv[k] = U + (long)(R + 2 + r) * V + on;
        d[k] = vbc(p->dr[r]);
        by[k] = vbc(aud[r]);
        be[k] = vbc(aud[R + r]);
        b1[k] = vbc(aud[2 * R + r]);
        xd[k] = vbc(xdot ? Un[(long)(r + 1) * V + om + j] : 0);
    }
    for (long i = 0; i < npd; i += VL) {
        vec w = vld(w0 + i), yy = vld(yv + i), ee = vld(ev + i), oo = vld(one + i), wn = vld(wnew + i);
        for (int k = 0; k < RB; k++) {
            vec nd = vld(wd[k] + i) * vs + w * d[k] + vld(ydv[k] + i) * ay + vld(edv[k] + i) * ae + yy * by[k]
                     + ee * be[k] + oo * b1[k];
            vst(wd[k] + i, nd);
            vec zn = vld(zd[k] + i) + nd * vxn;
            vst(zd[k] + i, xdot ? zn + wn * xd[k] : zn);
        }
    }
}

/* All R tangent rows of column j, RBLK per pass (the last 1–3 in one pass too). */
INLINE void tangent_block(const Plan *p, int li, long j, real *wdb, const real *U, const real *Un, real *Z,
                          const real *w0, const real *wnew, const real *aud, const int xdot, vec vs, vec ay, vec ae,
                          vec vxn) {
    int r = 0, R = p->R;
    for (; r + RBLK <= R; r += RBLK) tangent_rows(p, li, j, r, RBLK, wdb, U, Un, Z, w0, wnew, aud, xdot, vs, ay, ae, vxn);
    switch (R - r) {
    case 3: tangent_rows(p, li, j, r, 3, wdb, U, Un, Z, w0, wnew, aud, xdot, vs, ay, ae, vxn); break;
    case 2: tangent_rows(p, li, j, r, 2, wdb, U, Un, Z, w0, wnew, aud, xdot, vs, ay, ae, vxn); break;
    case 1: tangent_rows(p, li, j, r, 1, wdb, U, Un, Z, w0, wnew, aud, xdot, vs, ay, ae, vxn); break;
    }
}

/* One pass over the m rows of layer block li: the row's slot values v_s (and tangents), then the tangent and
 * primal column updates with the next sample's forward accumulation z += W_{:,j} x_{t+1,j} in the same loop. */
static void sweep(const Plan *p, int li, real *W, real *Wd, const real *U, const real *Un, real *Z, int has_next,
                  const real *c, const real *Cr, Work *w) {
    int R = p->R;
    long V = p->V, Wtot = p->Wtot, zs = p->npmax, mm = p->mmax;
    long m = p->widths[li], npd = p->wpad[li + 1], on = p->voff[li + 1], om = p->voff[li];
    const real *yv = U + on, *ev = U + (long)(R + 1) * V + on, *one = U + (long)(2 * R + 2) * V + on;
    int want[3] = {p->act_s[3], p->act_s[4], p->act_s[5]}, slot[3];
    int npost = R ? gather_post(p, U, on, npd, want, p->need_pre, w->post, slot) : 0;
    real vals[NS], au[3], *vd = w->vd, *aud = w->aud, *wnew = w->wnew;
    vec vs = vbc(p->scale);
    for (long j = 0; j < m; j++) {
        long b = p->woff[li] + j * npd;
        real *w0 = W + b;
        vals[0] = U[om + j];
        vals[1] = U[(long)(R + 1) * V + om + j];
        vals[2] = 1;
        for (int r = 0; r < R; r++) {
            vd[r] = U[(long)(r + 1) * V + om + j];
            vd[R + r] = U[(long)(R + 2 + r) * V + om + j];
            vd[2 * R + r] = 0;
        }
        for (int a = 0; a < 3; a++) {          /* v = Wᵀa: (aᵀW)_j, and (ȧ_rᵀW)_j (+ (aᵀẆ_r)_j from the pre-pass) */
            int s = 3 + a;
            if (!p->act_s[s]) continue;
            const real *Pa = w->P + (long)a * (R + 1) * mm;
            vals[s] = Pa[j];
            for (int r = 0; r < R; r++) vd[(long)s * R + r] = Pa[(long)(1 + r) * mm + j];
        }
        if (npost) {                           /* (aᵀẆ_r)_j for the slots not in the pre-pass */
            gemm_nt(Wd + b, Wtot, R, w->post, p->npmax, npost, npd, w->Q, npost);
            for (int q = 0; q < npost; q++)
                for (int r = 0; r < R; r++) vd[(long)(3 + slot[q]) * R + r] += w->Q[r * npost + q];
        }
        row_coefficients(p, vals, vd, c, Cr, au, aud);
        real xn = has_next ? Un[om + j] : 0;
        vec ay = vbc(au[0]), ae = vbc(au[1]), a1 = vbc(au[2]), vxn = vbc(xn);
        for (long i = 0; i < npd; i += VL)     /* W_new = sW + y a_y + e a_e + 1 a_1 */
            vst(wnew + i, vld(w0 + i) * vs + vld(yv + i) * ay + vld(ev + i) * ae + vld(one + i) * a1);
        int xdot = has_next && li > 0;         /* the input has no tangent */
        if (xdot) tangent_block(p, li, j, Wd + b, U, Un, Z, w0, wnew, aud, 1, vs, ay, ae, vxn);
        else tangent_block(p, li, j, Wd + b, U, Un, Z, w0, wnew, aud, 0, vs, ay, ae, vxn);
        for (long i = 0; i < npd; i += VL) {   /* W ← W_new, z += W_{:,j} x_{t+1,j} */
            vec nw = vld(wnew + i);
            vst(w0 + i, nw);
            vst(Z + i, vld(Z + i) + nw * vxn);
        }
    }
}

/* One episode: S samples X (S × widths[0]) with targets T; W (Wtot) and Wd (R × Wtot) updated in place.
 * Returns 0, or −1 when the work memory cannot be allocated. */
int fused_episode(real *W, real *Wd, const real *FB, const real *X, const long *T, long S, int L, int R, int mode,
                  const long *widths, const long *wpad, const long *woff, const long *foff, const long *voff,
                  long Wtot, const real *c, const real *Cr, const real *dr, real scale, real beta,
                  const char *act_s, const char *act_u, int npairs, const int *pairs, const double *theta,
                  int natoms, const int *atoms, const double *atom_coef, int ngates, const int *gates) {
    long V = voff[L] + wpad[L], npmax = 0, mmax = 0;
    for (int k = 0; k <= L; k++) npmax = wpad[k] > npmax ? wpad[k] : npmax;
    for (int k = 0; k < L; k++) mmax = widths[k] > mmax ? widths[k] : mmax;
    Plan p = {L, R, mode, V, Wtot, npmax, mmax, widths, wpad, woff, foff, voff, c, Cr, dr, scale, beta, act_s,
              act_u, npairs, pairs, theta, natoms, ngates, atoms, atom_coef, gates, {0, 0, 0}, {0, 0, 0}};
    for (int k = 0; k < ngates; k++) {
        if (gates[3 * k] != 2) continue;
        if (gates[3 * k + 2] != 0) p.need_pre[gates[3 * k + 1]] = 1;   /* aᵀW x = aᵀz needs no pre-pass */
    }
    for (int a = 0; a < 3; a++) p.need_P[a] = p.need_pre[a] || act_s[3 + a];
    long rows = 2L * R + 3;
    Work w = {0};
    w.U = calloc(rows * V, sizeof(real));
    w.Un = calloc(rows * V, sizeof(real));
    w.ZP = calloc((R + 1) * V, sizeof(real));
    w.ZPn = calloc((R + 1) * V, sizeof(real));
    w.Z = calloc((R + 1) * npmax, sizeof(real));
    w.P = calloc(3L * (R + 1) * mmax, sizeof(real));
    w.Gb = calloc((R + 1) * mmax, sizeof(real));
    w.post = calloc(3 * npmax, sizeof(real));
    w.Q = calloc(3L * (R + 1), sizeof(real));
    w.vd = calloc((long)NS * (R + 1), sizeof(real));
    w.aud = calloc(3L * (R + 1), sizeof(real));
    w.wnew = calloc(npmax, sizeof(real));
    w.cg = calloc(3 * NS, sizeof(real));
    w.Crg = calloc((R + 1) * 3 * NS, sizeof(real));
    w.g = calloc(ngates + 1, sizeof(double));
    w.gd = calloc((long)(ngates + 1) * (R + 1), sizeof(double));
    int ok = w.U && w.Un && w.ZP && w.ZPn && w.Z && w.P && w.Gb && w.post && w.Q && w.vd && w.aud && w.wnew
             && w.cg && w.Crg && w.g && w.gd;
    if (ok) {
        for (int li = 0; li <= L; li++)
            for (long i = 0; i < widths[li]; i++) {
                w.U[(rows - 1) * V + voff[li] + i] = 1;
                w.Un[(rows - 1) * V + voff[li] + i] = 1;
            }
        for (long j = 0; j < widths[0]; j++) w.U[j] = X[j];
        forward0(&p, W, w.U, w.ZP, w.Z);
        for (long st = 0; st < S; st++) {
            real *U = w.U, *Un = w.Un, *Z = w.Z;
            errors(&p, U, FB, W, Wd, T[st], &w);
            int has_next = st + 1 < S;
            if (has_next)
                for (long j = 0; j < widths[0]; j++) Un[j] = X[(st + 1) * widths[0] + j];
            for (int li = 0; li < L; li++) {
                long n = widths[li + 1], on = voff[li + 1];
                memset(Z, 0, sizeof(real) * (R + 1) * npmax);
                layer_reductions(&p, li, W, Wd, U, &w);
                if (ngates) {
                    layer_coefficients(&p, li, U, w.ZP, &w);
                    sweep(&p, li, W, Wd, U, Un, Z, has_next, w.cg, w.Crg, &w);
                } else {
                    sweep(&p, li, W, Wd, U, Un, Z, has_next, c, Cr, &w);
                }
                if (!has_next) continue;
                for (long i = 0; i < n; i++) {
                    real z = Z[i];
                    w.ZPn[on + i] = z;
                    for (int r = 0; r < R; r++) w.ZPn[(long)(r + 1) * V + on + i] = Z[(r + 1) * npmax + i];
                    if (li == L - 1) {
                        Un[on + i] = z;
                        for (int r = 0; r < R; r++) Un[(long)(r + 1) * V + on + i] = Z[(r + 1) * npmax + i];
                    } else {
                        Un[on + i] = softplus(z, beta);
                        real sg = (real)(1 / (1 + exp(-(double)(beta * z))));
                        for (int r = 0; r < R; r++) Un[(long)(r + 1) * V + on + i] = sg * Z[(r + 1) * npmax + i];
                    }
                }
            }
            if (has_next) {
                real *t = w.U; w.U = w.Un; w.Un = t;
                t = w.ZP; w.ZP = w.ZPn; w.ZPn = t;
            }
        }
    }
    free(w.U); free(w.Un); free(w.ZP); free(w.ZPn); free(w.Z); free(w.P); free(w.Gb); free(w.post); free(w.Q);
    free(w.vd); free(w.aud); free(w.wnew); free(w.cg); free(w.Crg); free(w.g); free(w.gd);
    return ok ? 0 : -1;
}
