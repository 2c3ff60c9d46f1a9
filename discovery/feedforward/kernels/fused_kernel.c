/* The fused forward-mode inner loop of discovery/fused.py in C (compiled at first use with the system's C
 * compiler; the numba kernel there is the fallback and the same mathematics, loop for loop).
 *
 * One episode per call: W_ℓ ← s W_ℓ + Σ_u u a_uᵀ (u ∈ {y, e, 1}, a_u = Σ_s c_{u,s} v_s, v_s ∈ {x, e_pre, 1, Wᵀy,
 * Wᵀe, Wᵀ1}) sample by sample, with the R tangents Ẇ_r = ∂W/∂θ_r carried in closed form
 *   Ẇ_r ← s Ẇ_r + d_r W + Σ_u (u̇_r a_uᵀ + u ȧ_{u,r}ᵀ),  ȧ_{u,r} = Σ_s C_{r,u,s} v_s + c_{u,s} v̇_{r,s}.
 * Weights are stored transposed (row j = input unit j, padded to a multiple of 16), so one sweep over the rows
 * reduces Oja's yᵀW, updates the column of W and of its tangents, and accumulates the next sample's forward
 * pass while the row is in L1. Every loop is a plain unit-stride loop over restrict pointers: the compiler
 * vectorizes all of them (the numba version cannot prove the arrays distinct, and leaves the updates scalar).
 *
 * Scalar gates (F5–F8 and the generated gated terms): an atom may carry up to two 1×1 gates g (post dot aᵀb, pre
 * dot aᵀb, or bilinear aᵀW b). Then c_{u,s} = Σ_atoms θ_t κ G and C_{r,u,s} = Σ_{atoms of r} κ G + Σ_atoms θ_t κ Ġ_r
 * are recomputed per layer and sample from the gates' values G and tangents Ġ_r (ȧ_{u,r} then picks up Ċ's part);
 * a bilinear gate aᵀW b = Σ_j (aᵀW)_j b_j needs every column of W before any is updated, so its reductions (the
 * same as Oja's slot v = Wᵀa) run in a pre-pass over the layer and the sweep reuses them.
 *
 * Layout (all per episode): U rows 0..R = y, ẏ_1..ẏ_R; rows R+1..2R+1 = e, ė_r; row 2R+2 = ones (zero pads);
 * each row holds every layer's vector at offset voff[ℓ]. REAL is float or double (-DREAL=...).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef REAL real;
#define NS 6

static inline real softplus(real z, real beta) {
    real bz = beta * z;
    return bz > 20 ? z : (real)(log1p(exp((double)bz)) / beta);
}

/* out[k] = Σ_i A[k·lda + i] · b[i] for k < cnt, four rows per pass (b is loaded once per four rows). */
static void dots(const real *A, long lda, int cnt, const real *restrict b, long n, real *restrict out) {
    int k = 0;
    for (; k + 4 <= cnt; k += 4) {
        const real *restrict a0 = A + k * lda, *restrict a1 = a0 + lda, *restrict a2 = a1 + lda,
                   *restrict a3 = a2 + lda;
        real s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (long i = 0; i < n; i++) {
            real x = b[i];
            s0 += a0[i] * x; s1 += a1[i] * x; s2 += a2[i] * x; s3 += a3[i] * x;
        }
        out[k] = s0; out[k + 1] = s1; out[k + 2] = s2; out[k + 3] = s3;
    }
    for (; k + 2 <= cnt; k += 2) {
        const real *restrict a0 = A + k * lda, *restrict a1 = a0 + lda;
        real s0 = 0, s1 = 0;
        for (long i = 0; i < n; i++) { real x = b[i]; s0 += a0[i] * x; s1 += a1[i] * x; }
        out[k] = s0; out[k + 1] = s1;
    }
    for (; k < cnt; k++) {
        const real *restrict a0 = A + k * lda;
        real s0 = 0;
        for (long i = 0; i < n; i++) s0 += a0[i] * b[i];
        out[k] = s0;
    }
}

typedef struct {
    int L, R, mode;            /* layers, tangents, feedback: 0 fa, 1 dfa, 2 bp */
    long V, Wtot, npmax, mmax;
    const long *widths, *wpad, *woff, *foff, *voff;
    const real *c, *Cr, *dr;   /* c[u][s] = Σ_t θ_t C[t,u,s]; Cr[r][u][s] = C[r,u,s]; dr[r] = d_r */
    real scale, beta;          /* s = 1 + Σ_t θ_t d_t */
    const char *act_s, *act_u;
    int npairs;                /* the (u, s) pairs with a nonzero coefficient in some term */
    const int *pairs;
    const double *theta;       /* θ_t (gated rules: c and C_r are recomputed from the atoms every sample) */
    int natoms, ngates;
    const int *atoms;          /* natoms × 5: term t, u, s, gate 1, gate 2 (−1: none) */
    const double *atom_coef;   /* κ of each atom */
    const int *gates;          /* ngates × 3: kind (0 post dot aᵀb, 1 pre dot aᵀb, 2 aᵀW b), a, b */
    int need_pre[3];           /* a ∈ {y, e, 1} whose reductions aᵀW run in the pre-pass (bilinear gates) */
} Plan;

static inline real vdot(const real *restrict a, const real *restrict b, long n) {
    real s = 0;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Row of U holding vector code a (0 y/x, 1 e/e_pre, 2 ones): primal, and tangent r (−1: none, the ones). */
static inline long prow(const Plan *p, int a) { return a == 0 ? 0 : a == 1 ? p->R + 1 : 2L * p->R + 2; }
static inline long trow(const Plan *p, int a, int r) { return a == 0 ? r + 1 : a == 1 ? p->R + 2 + r : -1; }

/* Gated rules, layer li, before its sweep: the pre-pass reductions T_a = aᵀW (and Ṫ_{a,r} = ȧ_rᵀW + aᵀẆ_r) for
 * the a of bilinear gates, the gates G_k and Ġ_{k,r}, then c_{u,s} and C_{r,u,s} from the atoms. */
static void layer_coefficients(const Plan *p, int li, const real *W, const real *Wd, const real *U, real *T,
                               real *red, double *g, double *gd, real *c, real *Cr) {
    int R = p->R;
    long V = p->V, m = p->widths[li], npd = p->wpad[li + 1], on = p->voff[li + 1], om = p->voff[li];
    long mmax = p->mmax;
    for (int a = 0; a < 3; a++) {
        if (!p->need_pre[a]) continue;
        const real *av = U + prow(p, a) * V + on;
        real *Ta = T + (long)a * (R + 1) * mmax;
        for (long j = 0; j < m; j++) {
            long b = p->woff[li] + j * npd;
            if (a < 2) dots(av, V, R + 1, W + b, npd, red);
            else {
                dots(av, V, 1, W + b, npd, red);
                for (int r = 0; r < R; r++) red[r + 1] = 0;
            }
            dots(Wd + b, p->Wtot, R, av, npd, red + R + 1);
            Ta[j] = red[0];
            for (int r = 0; r < R; r++) Ta[(long)(1 + r) * mmax + j] = red[r + 1] + red[R + 1 + r];
        }
    }
    for (int k = 0; k < p->ngates; k++) {
        int kind = p->gates[3 * k], a = p->gates[3 * k + 1], b = p->gates[3 * k + 2];
        if (kind < 2) {                        /* aᵀb on the post (kind 0) or the pre (kind 1) side */
            long off = kind == 0 ? on : om, len = kind == 0 ? p->widths[li + 1] : m;
            const real *pa = U + prow(p, a) * V + off, *pb = U + prow(p, b) * V + off;
            g[k] = vdot(pa, pb, len);
            for (int r = 0; r < R; r++) {
                double s = 0;
                if (a < 2) s += vdot(U + trow(p, a, r) * V + off, pb, len);
                if (b < 2) s += vdot(pa, U + trow(p, b, r) * V + off, len);
                gd[(long)k * R + r] = s;
            }
        } else {                               /* aᵀW b = Σ_j T_a[j] b_j */
            const real *Ta = T + (long)a * (R + 1) * mmax, *pb = U + prow(p, b) * V + om;
            g[k] = vdot(Ta, pb, m);
            for (int r = 0; r < R; r++) {
                double s = vdot(Ta + (long)(1 + r) * mmax, pb, m);
                if (b < 2) s += vdot(Ta, U + trow(p, b, r) * V + om, m);
                gd[(long)k * R + r] = s;
            }
        }
    }
    double cd[3 * NS] = {0};
    for (long i = 0; i < (long)R * 3 * NS; i++) Cr[i] = 0;
    for (int q = 0; q < p->natoms; q++) {
        const int *at = p->atoms + 5 * q;
        int t = at[0], u = at[1], s = at[2], g1 = at[3], g2 = at[4], us = u * NS + s;
        double G1 = g1 >= 0 ? g[g1] : 1, G2 = g2 >= 0 ? g[g2] : 1, kap = p->atom_coef[q];
        cd[us] += p->theta[t] * kap * G1 * G2;
        if (t < R) Cr[t * 3 * NS + us] += (real)(kap * G1 * G2);
        for (int r = 0; r < R; r++) {
            double dG = (g1 >= 0 ? gd[(long)g1 * R + r] * G2 : 0) + (g2 >= 0 ? G1 * gd[(long)g2 * R + r] : 0);
            Cr[r * 3 * NS + us] += (real)(p->theta[t] * kap * dG);
        }
    }
    for (int i = 0; i < 3 * NS; i++) c[i] = (real)cd[i];
}

/* Initial forward pass (all tangents are 0): row 0 of U for every layer from the input. */
static void forward0(const Plan *p, const real *W, real *U, real *z) {
    for (int li = 0; li < p->L; li++) {
        long n = p->widths[li + 1], m = p->widths[li], npd = p->wpad[li + 1];
        memset(z, 0, sizeof(real) * npd);
        for (long j = 0; j < m; j++) {
            real xj = U[p->voff[li] + j];
            const real *restrict w = W + p->woff[li] + j * npd;
            for (long i = 0; i < npd; i++) z[i] += w[i] * xj;
        }
        for (long i = 0; i < n; i++)
            U[p->voff[li + 1] + i] = li == p->L - 1 ? z[i] : softplus(z[i], p->beta);
    }
}

/* e_L = p − onehot (p = softmax, written into row 0 as the output post-activity), ė_L = ṗ;
 * e_ℓ = g ⊙ (1 − e^{−βy_ℓ}), g = e_{ℓ+1}B_{ℓ+1} (fa), e_{ℓ+1}W_{ℓ+1} (bp), e_L D_ℓ (dfa);
 * ė_ℓ = ġ ⊙ (1 − e^{−βy}) + g β e^{−βy} ẏ with ġ = ėB (fa), ėW + eẆ (bp), ė_L D (dfa). */
static void errors(const Plan *p, real *U, const real *FB, const real *W, const real *Wd, long target, real *G) {
    int L = p->L, R = p->R;
    long V = p->V, nL = p->widths[L], oL = p->voff[L];
    real *E = U + (long)(R + 1) * V;
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
        for (long j = 0; j < m; j++) {
            if (p->mode == 0) {
                dots(E + on, V, R + 1, FB + p->foff[li] + j * npd, npd, G);
            } else if (p->mode == 2) {
                long b = p->woff[li] + j * npd;
                dots(E + on, V, R + 1, W + b, npd, G);
                dots(Wd + b, p->Wtot, R, E + on, npd, G + R + 1);
                for (int r = 0; r < R; r++) G[r + 1] += G[R + 1 + r];
            } else {
                const real *D = FB + p->foff[li];
                for (int k = 0; k <= R; k++) G[k] = 0;
                for (long i = 0; i < nL; i++) {
                    real dv = D[i * m + j];
                    for (int k = 0; k <= R; k++) G[k] += dv * E[(long)k * V + oL + i];
                }
            }
            real g = G[0], y = U[om + j];
            real ex = (real)exp(-(double)(p->beta * y)), s = 1 - ex;
            E[om + j] = g * s;
            for (int r = 1; r <= R; r++)
                E[(long)r * V + om + j] = G[r] * s + g * p->beta * ex * U[(long)r * V + om + j];
        }
    }
}

/* One pass over the m rows of layer block li: reductions v_s = (aᵀW)_j (and tangents), then the tangent and
 * primal column updates with the next sample's forward accumulation z += W_{:,j} x_{t+1,j} in the same loop. */
static void sweep(const Plan *p, int li, real *W, real *Wd, const real *U, const real *Un, real *Z, int has_next,
                  real *red, real *vals, real *vd, real *au, real *aud, const real *c, const real *Cr,
                  const real *T) {
    int R = p->R;
    long V = p->V, Wtot = p->Wtot, zs = p->npmax;
    long m = p->widths[li], npd = p->wpad[li + 1], on = p->voff[li + 1], om = p->voff[li];
    const long urow[3] = {0, R + 1, 2 * R + 2};
    const real *yv = U + on, *ev = U + (long)(R + 1) * V + on, *one = U + (long)(2 * R + 2) * V + on;
    for (long j = 0; j < m; j++) {
        long b = p->woff[li] + j * npd;
        real *restrict w = W + b;
        vals[0] = U[om + j];
        vals[1] = U[(long)(R + 1) * V + om + j];
        vals[2] = 1;
        for (int r = 0; r < R; r++) {
            vd[r * NS + 0] = U[(long)(r + 1) * V + om + j];
            vd[r * NS + 1] = U[(long)(R + 2 + r) * V + om + j];
            vd[r * NS + 2] = 0;
        }
        for (int a = 0; a < 3; a++) {          /* v = Wᵀa: aᵀW_{:,j}, and ȧ_rᵀW_{:,j} + aᵀẆ_r{:,j} */
            int s = 3 + a;
            if (!p->act_s[s]) continue;
            if (T && p->need_pre[a]) {         /* computed by the pre-pass of a bilinear gate */
                const real *Ta = T + (long)a * (R + 1) * p->mmax;
                vals[s] = Ta[j];
                for (int r = 0; r < R; r++) vd[r * NS + s] = Ta[(long)(1 + r) * p->mmax + j];
                continue;
            }
            const real *av = U + urow[a] * V + on;
            if (a < 2) dots(av, V, R + 1, w, npd, red);
            else {
                dots(av, V, 1, w, npd, red);
                for (int r = 0; r < R; r++) red[r + 1] = 0;
            }
            dots(Wd + b, Wtot, R, av, npd, red + R + 1);
            vals[s] = red[0];
            for (int r = 0; r < R; r++) vd[r * NS + s] = red[r + 1] + red[R + 1 + r];
        }
        for (int u = 0; u < 3; u++) {
            au[u] = 0;
            for (int r = 0; r < R; r++) aud[r * 3 + u] = 0;
        }
        for (int k = 0; k < p->npairs; k++) {  /* a_u = Σ_s c_{u,s} v_s ; ȧ_{u,r} = Σ_s C_{r,u,s} v_s + c_{u,s} v̇_{r,s} */
            int u = p->pairs[2 * k], s = p->pairs[2 * k + 1];
            real cus = c[u * NS + s], v = vals[s];
            au[u] += cus * v;
            for (int r = 0; r < R; r++)
                aud[r * 3 + u] += Cr[(r * 3 + u) * NS + s] * v + cus * vd[r * NS + s];
        }
        real xn = has_next ? Un[om + j] : 0, ay = au[0], ae = au[1], a1 = au[2];
        for (int r = 0; r < R; r++) {          /* Ẇ_r ← sẆ_r + d_r W + ẏ_r a_y + ė_r a_e + y ȧ_y + e ȧ_e + 1 ȧ_1 */
            real *restrict wd = Wd + (long)r * Wtot + b, *restrict zd = Z + (long)(r + 1) * zs;
            const real *restrict ydv = U + (long)(r + 1) * V + on, *restrict edv = U + (long)(R + 2 + r) * V + on;
            real by = aud[r * 3], be = aud[r * 3 + 1], b1 = aud[r * 3 + 2], d = p->dr[r];
            if (p->scale != 1 || d != 0)
                for (long i = 0; i < npd; i++) wd[i] = wd[i] * p->scale + w[i] * d;
            if (p->act_u[2] && b1 != 0)
                for (long i = 0; i < npd; i++) wd[i] += one[i] * b1;
            for (long i = 0; i < npd; i++) {    /* … and ż_r += Ẇ_r{:,j} x_{t+1,j} */
                real nw = wd[i] + ydv[i] * ay + edv[i] * ae + yv[i] * by + ev[i] * be;
                wd[i] = nw;
                zd[i] += nw * xn;
            }
        }
        real *restrict z0 = Z;
        if (p->scale != 1)                     /* W ← sW + y a_y + e a_e + 1 a_1, and z += W_{:,j} x_{t+1,j} */
            for (long i = 0; i < npd; i++) w[i] *= p->scale;
        if (p->act_u[2] && a1 != 0)
            for (long i = 0; i < npd; i++) w[i] += one[i] * a1;
        for (long i = 0; i < npd; i++) {
            real nw = w[i] + yv[i] * ay + ev[i] * ae;
            w[i] = nw;
            z0[i] += nw * xn;
        }
        if (has_next && li > 0)                /* ż_r += W_{:,j} ẋ_{r,t+1,j} (the input has no tangent) */
            for (int r = 0; r < R; r++) {
                real xd = Un[(long)(r + 1) * V + om + j];
                real *restrict zd = Z + (long)(r + 1) * zs;
                for (long i = 0; i < npd; i++) zd[i] += w[i] * xd;
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
              act_u, npairs, pairs, theta, natoms, ngates, atoms, atom_coef, gates, {0, 0, 0}};
    for (int k = 0; k < ngates; k++)
        if (gates[3 * k] == 2) p.need_pre[gates[3 * k + 1]] = 1;
    long rows = 2L * R + 3;
    real *U = calloc(rows * V, sizeof(real)), *Un = calloc(rows * V, sizeof(real));
    real *Z = calloc((R + 1) * npmax, sizeof(real));
    real *G = calloc(2 * R + 2, sizeof(real)), *red = calloc(2 * R + 2, sizeof(real));
    real *vals = calloc(NS, sizeof(real)), *vd = calloc((R + 1) * NS, sizeof(real));
    real *au = calloc(3, sizeof(real)), *aud = calloc((R + 1) * 3, sizeof(real));
    real *Tp = calloc(3L * (R + 1) * mmax, sizeof(real)), *cg = calloc(3 * NS, sizeof(real));
    real *Crg = calloc((R + 1) * 3 * NS, sizeof(real));
    double *g = calloc(ngates + 1, sizeof(double)), *gd = calloc((long)(ngates + 1) * (R + 1), sizeof(double));
    int ok = U && Un && Z && G && red && vals && vd && au && aud && Tp && cg && Crg && g && gd;
    if (ok) {
        for (int li = 0; li <= L; li++)
            for (long i = 0; i < widths[li]; i++) {
                U[(rows - 1) * V + voff[li] + i] = 1;
                Un[(rows - 1) * V + voff[li] + i] = 1;
            }
        for (long j = 0; j < widths[0]; j++) U[j] = X[j];
        forward0(&p, W, U, Z);
        for (long st = 0; st < S; st++) {
            errors(&p, U, FB, W, Wd, T[st], G);
            int has_next = st + 1 < S;
            if (has_next)
                for (long j = 0; j < widths[0]; j++) Un[j] = X[(st + 1) * widths[0] + j];
            for (int li = 0; li < L; li++) {
                long n = widths[li + 1], on = voff[li + 1];
                memset(Z, 0, sizeof(real) * (R + 1) * npmax);
                if (ngates) {
                    layer_coefficients(&p, li, W, Wd, U, Tp, red, g, gd, cg, Crg);
                    sweep(&p, li, W, Wd, U, Un, Z, has_next, red, vals, vd, au, aud, cg, Crg, Tp);
                } else {
                    sweep(&p, li, W, Wd, U, Un, Z, has_next, red, vals, vd, au, aud, c, Cr, NULL);
                }
                if (!has_next) continue;
                for (long i = 0; i < n; i++) {
                    real z = Z[i];
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
            if (has_next) { real *t = U; U = Un; Un = t; }
        }
    }
    free(U); free(Un); free(Z); free(G); free(red); free(vals); free(vd); free(au); free(aud);
    free(Tp); free(cg); free(Crg); free(g); free(gd);
    return ok ? 0 : -1;
}
