/* The reverse-mode (adjoint) meta-gradient of the fused inner loop: ∂L_query/∂θ for one episode in one backward
 * pass whose cost does not grow with the number of terms R (docs/kernels.md, "The adjoint kernel").
 *
 * Primal step t (the same functions as the forward kernel, fused_kernel.c, with R = 0 tangents):
 *   forward pass z_ℓ = W_ℓ y_{ℓ−1} with W^t, errors e (fa, dfa or bp), per layer the slots P_a = Wᵀa, the gates, and
 *   W^{t+1} = s W^t + Σ_u u a_uᵀ,  a_u = Σ_s c_{u,s} v_s  (c from θ, or per atom θ_t κ G₁G₂ for gated rules).
 * Backward step t, given Ḡ' = ∂L/∂W^{t+1} (per layer):
 *   A_u = Ḡ'ᵀu, M_{u,s} = A_u·v_s → θ̄_t += Σ_atoms κ G₁G₂ M_{u,s} + d_t ⟨Ḡ', W^t⟩ and the gates' adjoints;
 *   ū += Ḡ' a_u, v̄_s = Σ_u c_{u,s} A_u (slots Wᵀa: W̄ += a v̄ᵀ, ā += W v̄); then the vector adjoints run back through
 *   the error pass (softmax at the top, s = 1 − e^{−βy}, bp reads W) and the forward pass (σ(βz), Wᵀz̄), and
 *   Ḡ = sḠ' + a v̄ᵀ + z̄ yᵀ + [bp] e ḡᵀ + [bilinear gates] Ḡ_k a bᵀ.
 * The rank-1 terms are not added at once: they are kept as (α, β) pairs per layer and added to each row of Ḡ when
 * the next (earlier) backward step reads it, so every backward step reads and writes Ḡ once.
 *
 * Memory: W^t is checkpointed every `seg` steps in the first pass; the backward pass rebuilds one segment at a time
 * from its checkpoint, keeping W^t and the step's vectors (the tape) for the seg steps of the segment. Peak work
 * memory ≈ (⌈S/seg⌉ + seg + 3) · |W| per episode; the last segment's tape is written by the first pass itself.
 */
#ifdef FUSED_SOURCE
#include FUSED_SOURCE                  /* ckernel.py passes the forward kernel's path (a variant in experiments) */
#else
#include "fused_kernel.c"
#endif

typedef struct {
    real *W, *U, *Z, *G, *P, *cg;   /* per step: W^t, rows y/p and e, z, g = eB (errors), slots, c_{u,s} (gated) */
    double *g;                      /* gate values per layer */
} Tape;

typedef struct {
    real *Ybar, *Ebar, *Zbar, *row, *uy, *ue, *sa0, *sa1, *wb, *hb, *zq;
    real *aold, *bold, *anew, *bnew;   /* deferred rank-1 terms of Ḡ: per layer Kmax pairs (α: npmax, β: mmax) */
    int *nold, *nnew;
    double *gbar;
    int Kmax;
} Adj;

/* Per-layer coefficients (docs/kernels.md, "Per-layer θ"): with `on`, layer ℓ's c_{u,s}, s and θ are rows ℓ of
 * c (L × 3 × NS), scale (L) and theta (L × R), and θ̄ goes to grad row ℓ; off, every layer uses the Plan's own. */
typedef struct {
    int on, R;
    const real *c, *scale;
    const double *theta;
} Lay;

/* The Plan and c_{u,s} of layer li: p itself when θ is shared, else a copy in buf with layer li's c, s and θ. */
static inline const Plan *layer_plan(const Plan *p, const Lay *ly, int li, Plan *buf, const real **c) {
    if (!ly->on) return p;
    *buf = *p;
    buf->c = ly->c + (long)li * 3 * NS;
    buf->scale = ly->scale[li];
    buf->theta = ly->theta + (long)li * ly->R;
    *c = buf->c;
    return buf;
}

static long tape_sizes(const Plan *p, long *sW, long *sU, long *sP, long *scg, long *sg) {
    *sW = p->Wtot;
    *sU = 2 * p->V;
    *sP = (long)p->L * 3 * p->mmax;
    *scg = (long)p->L * 3 * NS;
    *sg = (long)p->L * (p->ngates + 1);
    return 0;
}

/* Primal sweep of layer li with no tangents, out of place: rows of W^{t+1} (Wn) from rows of W^t (Wo). In the same
 * pass over each row: the slots v_a = (aᵀW)_j that the gates did not need before the sweep (into P), and, when the
 * next sample xn is given, its pre-activation z += W^{t+1}_{:,j} xn_j (as the forward kernel's sweep). */
static void primal_sweep(const Plan *p, int li, const real *Wo, real *Wn, const real *U, const real *c, real *P,
                         const real *xn, real *z) {
    long V = p->V, mm = p->mmax, m = p->widths[li], npd = p->wpad[li + 1], on = p->voff[li + 1], om = p->voff[li];
    const real *y = U + on, *e = U + V + on, *one = U + 2 * V + on, *x = U + om, *ep = U + V + om;
    int d0 = p->act_s[3] && !p->need_pre[0], d1 = p->act_s[4] && !p->need_pre[1], d2 = p->act_s[5] && !p->need_pre[2];
    vec vs = vbc(p->scale);
    for (long j = 0; j < m; j++) {
        const real *wj = Wo + p->woff[li] + j * npd;
        real *nj = Wn + p->woff[li] + j * npd;
        if (d0 || d1 || d2) {
            vec s0 = vbc(0), s1 = vbc(0), s2 = vbc(0);
            for (long i = 0; i < npd; i += VL) {
                vec wv = vld(wj + i);
                s0 += wv * vld(y + i);
                s1 += wv * vld(e + i);
                s2 += wv * vld(one + i);
            }
            if (d0) P[j] = vsum(s0);
            if (d1) P[mm + j] = vsum(s1);
            if (d2) P[2 * mm + j] = vsum(s2);
        }
        real vals[NS] = {x[j], ep[j], 1, P[j], P[mm + j], P[2 * mm + j]}, au[3] = {0, 0, 0};
        for (int q = 0; q < p->npairs; q++) au[p->pairs[2 * q]] += c[p->pairs[2 * q] * NS + p->pairs[2 * q + 1]]
                                                                 * vals[p->pairs[2 * q + 1]];
        vec ay = vbc(au[0]), ae = vbc(au[1]), a1 = vbc(au[2]);
        if (xn) {
            vec xv = vbc(xn[j]);
            for (long i = 0; i < npd; i += VL) {
                vec nw = vld(wj + i) * vs + vld(y + i) * ay + vld(e + i) * ae + vld(one + i) * a1;
                vst(nj + i, nw);
                vst(z + i, vld(z + i) + nw * xv);
            }
        } else {
            for (long i = 0; i < npd; i += VL)
                vst(nj + i, vld(wj + i) * vs + vld(y + i) * ay + vld(e + i) * ae + vld(one + i) * a1);
        }
    }
}

/* One primal step st: W^t (Wo) → W^{t+1} (Wn); U row 0 and ZP hold the forward pass of sample st on entry and of
 * sample st+1 on return (when has_next). With k ≥ 0 the step's vectors go to tape slot k (whose W is Wo). */
__attribute__((noinline)) static void primal_step(const Plan *p, Work *w, const real *Wo, real *Wn, const real *FB,
                                                  const real *X, long target, long st, int has_next, const real *c,
                                                  Tape *tp, long k, const Lay *ly) {
    long sW, sU, sP, scg, sg, V = p->V, mm = p->mmax;
    tape_sizes(p, &sW, &sU, &sP, &scg, &sg);
    w->gtape = k >= 0 ? tp->G + k * V : NULL;
    errors(p, w->U, FB, Wo, Wo, target, w);
    w->gtape = NULL;
    if (k >= 0) {
        memcpy(tp->U + k * sU, w->U, sizeof(real) * sU);
        memcpy(tp->Z + k * V, w->ZP, sizeof(real) * V);
    }
    if (has_next) memcpy(w->Un, X + (st + 1) * p->widths[0], sizeof(real) * p->widths[0]);
    const Plan *p0 = p;
    for (int li = 0; li < p0->L; li++) {
        Plan pbuf;
        const real *cl = c;
        const Plan *p = layer_plan(p0, ly, li, &pbuf, &cl);
        long n = p->widths[li + 1], m = p->widths[li], npd = p->wpad[li + 1], on = p->voff[li + 1];
        real *P = k >= 0 ? tp->P + k * sP + (long)li * 3 * mm : w->P;
        for (int a = 0; a < 3; a++)            /* slots a bilinear gate needs: all of Wᵀa before the sweep */
            if (p->need_pre[a])
                gemm_nt(w->U + (long)a * V + on, V, 1, Wo + p->woff[li], npd, m, npd, w->P + (long)a * mm, mm);
        if (p->ngates) {
            layer_coefficients(p, li, w->U, w->ZP, w);
            if (k >= 0) {
                memcpy(tp->cg + k * scg + (long)li * 3 * NS, w->cg, sizeof(real) * 3 * NS);
                memcpy(tp->g + k * sg + (long)li * (p->ngates + 1), w->g, sizeof(double) * p->ngates);
            }
        }
        if (P != w->P)
            for (int a = 0; a < 3; a++)
                if (p->need_pre[a]) memcpy(P + (long)a * mm, w->P + (long)a * mm, sizeof(real) * m);
        if (has_next) memset(w->Z, 0, sizeof(real) * p->npmax);
        primal_sweep(p, li, Wo, Wn, w->U, p->ngates ? w->cg : cl, P, has_next ? w->Un + p->voff[li] : NULL, w->Z);
        if (!has_next) continue;
        for (long i = 0; i < n; i++) {
            w->ZPn[on + i] = w->Z[i];
            w->Un[on + i] = li == p->L - 1 ? w->Z[i] : softplus(w->Z[i], p->beta);
        }
    }
    if (has_next) {
        memcpy(w->U, w->Un, sizeof(real) * V);
        memcpy(w->ZP, w->ZPn, sizeof(real) * V);
    }
}

static void load_sample(const Plan *p, Work *w, const real *W, const real *X, long st) {
    memcpy(w->U, X + st * p->widths[0], sizeof(real) * p->widths[0]);
    forward0(p, W, w->U, w->ZP, w->Z);
}

static inline real sigm(real z, real beta) { return (real)(1 / (1 + exp(-(double)(beta * z)))); }

/* ∂(mean_q CE)/∂W of the adapted network on the Q query samples, added into Gbar (layout of W). */
__attribute__((noinline)) static void query_gradient(const Plan *p, Work *w, Adj *a, const real *W, const real *XQ, const long *TQ, long Q,
                           real *Gbar) {
    int L = p->L;
    long oL = p->voff[L], nL = p->widths[L];
    for (long q = 0; q < Q; q++) {
        load_sample(p, w, W, XQ, q);
        const real *U = w->U;
        double mx = -INFINITY, tot = 0;
        for (long i = 0; i < nL; i++) mx = fmax(mx, (double)U[oL + i]);
        for (long i = 0; i < nL; i++) tot += exp((double)U[oL + i] - mx);
        memset(a->zq, 0, sizeof(real) * p->npmax);
        for (long i = 0; i < nL; i++)
            a->zq[i] = (real)((exp((double)U[oL + i] - mx) / tot - (i == TQ[q] ? 1 : 0)) / (double)Q);
        for (int li = L - 1; li >= 0; li--) {
            long m = p->widths[li], npd = p->wpad[li + 1], om = p->voff[li];
            real *G = Gbar + p->woff[li];
            const real *Wl = W + p->woff[li];
            for (long j = 0; j < m; j++) {
                vec h = vbc(U[om + j]);
                for (long i = 0; i < npd; i += VL) vst(G + j * npd + i, vld(G + j * npd + i) + h * vld(a->zq + i));
            }
            if (li == 0) break;
            for (long j = 0; j < m; j++) {
                vec s = vbc(0);
                for (long i = 0; i < npd; i += VL) s += vld(Wl + j * npd + i) * vld(a->zq + i);
                a->hb[j] = vsum(s) * sigm(w->ZP[om + j], p->beta);
            }
            memset(a->zq, 0, sizeof(real) * p->npmax);
            memcpy(a->zq, a->hb, sizeof(real) * m);
        }
    }
}

/* Pointers to the post (codes y/p, e, 1) and pre (x, e_pre, 1) vectors of layer li at tape step U. */
static inline const real *post_vec(const Plan *p, const Work *w, const real *U, int li, int code) {
    long on = p->voff[li + 1];
    return code == 2 ? w->U + 2 * p->V + on : U + code * p->V + on;
}
static inline const real *pre_vec(const Plan *p, const Work *w, const real *U, int li, int code) {
    long om = p->voff[li];
    return code == 2 ? w->U + 2 * p->V + om : U + code * p->V + om;
}
/* Adjoint rows: post y/p → Ybar, e → Ebar; pre x → Ybar (hidden layers only: the input has none), e_pre → Ebar. */
static inline real *post_adj(const Plan *p, Adj *a, int li, int code) {
    long on = p->voff[li + 1];
    return code == 0 ? a->Ybar + on : code == 1 ? a->Ebar + on : NULL;
}
static inline real *pre_adj(const Plan *p, Adj *a, int li, int code) {
    long om = p->voff[li];
    return code == 0 ? (li > 0 ? a->Ybar + om : NULL) : code == 1 ? a->Ebar + om : NULL;
}

static inline void axpy(real *restrict y, real s, const real *restrict x, long n) {
    for (long i = 0; i < n; i++) y[i] += s * x[i];
}

static real *push_deferred(const Plan *p, Adj *a, int li, real **beta) {
    int k = a->nnew[li]++;
    real *al = a->anew + ((long)li * a->Kmax + k) * p->npmax;
    *beta = a->bnew + ((long)li * a->Kmax + k) * p->mmax;
    memset(al, 0, sizeof(real) * p->npmax);
    memset(*beta, 0, sizeof(real) * p->mmax);
    return al;
}

/* The backward sweep over layer li's rows at tape step k: reads Ḡ' (plus its deferred rank-1 terms), writes
 * sḠ' + slot terms back, accumulates θ̄ (atoms, decay) and the vector and gate adjoints. */
__attribute__((noinline)) static void sweep_adjoint(const Plan *p, Work *w, Adj *a, const Tape *tp, long k, int li, real *Gbar, const real *c,
                          const double *decay, double *grad) {
    long sW, sU, sP, scg, sg, V = p->V, mm = p->mmax;
    tape_sizes(p, &sW, &sU, &sP, &scg, &sg);
    const real *W = tp->W + k * sW + p->woff[li], *U = tp->U + k * sU;
    const real *P = tp->P + k * sP + (long)li * 3 * mm;
    const real *cus = p->ngates ? tp->cg + k * scg + (long)li * 3 * NS : c;
    const double *gv = tp->g + k * sg + (long)li * (p->ngates + 1);
    long m = p->widths[li], n = p->widths[li + 1], npd = p->wpad[li + 1], on = p->voff[li + 1], om = p->voff[li];
    real *G = Gbar + p->woff[li];
    const real *y = U + on, *e = U + V + on, *one = w->U + 2 * V + on, *x = U + om, *ep = U + V + om;
    int K = a->nold[li];
    const real *al[K + 1], *be[K + 1];
    for (int q = 0; q < K; q++) {
        al[q] = a->aold + ((long)li * a->Kmax + q) * p->npmax;
        be[q] = a->bold + ((long)li * a->Kmax + q) * mm;
    }
    int bil[p->ngates + 1], nbil = 0;                  /* bilinear gates aᵀW b with b ≠ x: W b accumulated in the sweep */
    for (int q = 0; q < p->ngates; q++)
        if (p->gates[3 * q] == 2 && p->gates[3 * q + 2] != 0) bil[nbil++] = q;
    memset(a->uy, 0, sizeof(real) * npd);
    memset(a->ue, 0, sizeof(real) * npd);
    memset(a->sa0, 0, sizeof(real) * npd);
    memset(a->sa1, 0, sizeof(real) * npd);
    memset(a->wb, 0, sizeof(real) * (long)(nbil + 1) * p->npmax);
    const real *bvec[p->ngates + 1];
    for (int q = 0; q < nbil; q++) bvec[q] = pre_vec(p, w, U, li, p->gates[3 * bil[q] + 2]);
    double M[3 * NS] = {0}, dw = 0;
    int any_decay = 0;
    for (int t = 0; t < p->R; t++) any_decay |= decay[t] != 0;
    real *row = a->row;
    vec vs = vbc(p->scale);
    for (long j = 0; j < m; j++) {
        real *gj = G + j * npd;
        const real *wj = W + j * npd;
        vec Ay = vbc(0), Ae = vbc(0), A1 = vbc(0), Dw = vbc(0);
        vec bk[K + 1];
        for (int q = 0; q < K; q++) bk[q] = vbc(be[q][j]);
        for (long i = 0; i < npd; i += VL) {
            vec g = vld(gj + i);
            for (int q = 0; q < K; q++) g += bk[q] * vld(al[q] + i);
            vst(row + i, g);
            Ay += g * vld(y + i);
            Ae += g * vld(e + i);
            A1 += g * vld(one + i);
            Dw += g * vld(wj + i);
        }
        real A[3] = {vsum(Ay), vsum(Ae), vsum(A1)};
        if (any_decay) dw += vsum(Dw);
        real vals[NS] = {x[j], ep[j], 1, P[j], P[mm + j], P[2 * mm + j]};
        real au[3] = {0, 0, 0}, vbar[NS] = {0, 0, 0, 0, 0, 0};
        for (int q = 0; q < p->npairs; q++) {
            int u = p->pairs[2 * q], s = p->pairs[2 * q + 1];
            real cv = cus[u * NS + s];
            au[u] += cv * vals[s];
            vbar[s] += cv * A[u];
            M[u * NS + s] += (double)A[u] * vals[s];
        }
        if (li > 0) a->Ybar[om + j] += vbar[0];
        a->Ebar[om + j] += vbar[1];
        vec cy = vbc(au[0]), ce = vbc(au[1]), s3 = vbc(vbar[3]), s4 = vbc(vbar[4]), s5 = vbc(vbar[5]);
        vec bb[p->ngates + 1];
        for (int q = 0; q < nbil; q++) bb[q] = vbc(bvec[q][j]);
        for (long i = 0; i < npd; i += VL) {
            vec g = vld(row + i), wv = vld(wj + i), yv = vld(y + i), ev = vld(e + i);
            vst(a->uy + i, vld(a->uy + i) + g * cy);
            vst(a->ue + i, vld(a->ue + i) + g * ce);
            vst(a->sa0 + i, vld(a->sa0 + i) + wv * s3);
            vst(a->sa1 + i, vld(a->sa1 + i) + wv * s4);
            for (int q = 0; q < nbil; q++) vst(a->wb + q * p->npmax + i, vld(a->wb + q * p->npmax + i) + wv * bb[q]);
            vst(gj + i, g * vs + yv * s3 + ev * s4 + vld(one + i) * s5);
        }
    }
    for (long i = 0; i < n; i++) {
        a->Ybar[on + i] += a->uy[i] + a->sa0[i];
        a->Ebar[on + i] += a->ue[i] + a->sa1[i];
    }
    if (any_decay)
        for (int t = 0; t < p->R; t++) grad[t] += decay[t] * dw;
    double *gb = a->gbar;
    for (int q = 0; q < p->ngates; q++) gb[q] = 0;
    for (int q = 0; q < p->natoms; q++) {
        const int *at = p->atoms + 5 * q;
        int t = at[0], g1 = at[3], g2 = at[4];
        double Mq = M[at[1] * NS + at[2]], kap = p->atom_coef[q];
        double G1 = g1 >= 0 ? gv[g1] : 1, G2 = g2 >= 0 ? gv[g2] : 1;
        if (t < p->R) grad[t] += kap * G1 * G2 * Mq;
        if (g1 >= 0) gb[g1] += p->theta[t] * kap * G2 * Mq;
        if (g2 >= 0) gb[g2] += p->theta[t] * kap * G1 * Mq;
    }
    int ib = 0;
    for (int q = 0; q < p->ngates; q++) {
        int kind = p->gates[3 * q], ca = p->gates[3 * q + 1], cb = p->gates[3 * q + 2];
        real gq = (real)gb[q];
        if (kind == 0 || kind == 1) {          /* aᵀb: ā += Ḡ b, b̄ += Ḡ a */
            long len = kind == 0 ? n : m;
            const real *va = kind == 0 ? post_vec(p, w, U, li, ca) : pre_vec(p, w, U, li, ca);
            const real *vb = kind == 0 ? post_vec(p, w, U, li, cb) : pre_vec(p, w, U, li, cb);
            real *da = kind == 0 ? post_adj(p, a, li, ca) : pre_adj(p, a, li, ca);
            real *db = kind == 0 ? post_adj(p, a, li, cb) : pre_adj(p, a, li, cb);
            if (da) axpy(da, gq, vb, len);
            if (db) axpy(db, gq, va, len);
        } else if (cb == 0) {                  /* aᵀz: ā += Ḡ z, z̄ += Ḡ a */
            const real *va = post_vec(p, w, U, li, ca), *z = tp->Z + k * V + on;
            real *da = post_adj(p, a, li, ca);
            if (da) axpy(da, gq, z, n);
            axpy(a->Zbar + on, gq, va, n);
        } else {                               /* aᵀW b: ā += Ḡ W b, b̄ += Ḡ Wᵀa, W̄ += Ḡ a bᵀ (deferred) */
            const real *va = post_vec(p, w, U, li, ca), *vb = pre_vec(p, w, U, li, cb);
            real *da = post_adj(p, a, li, ca), *db = pre_adj(p, a, li, cb), *bt;
            if (da) axpy(da, gq, a->wb + ib * p->npmax, n);
            if (db) axpy(db, gq, P + (long)ca * mm, m);
            real *at = push_deferred(p, a, li, &bt);
            axpy(at, gq, va, n);
            memcpy(bt, vb, sizeof(real) * m);
            ib++;
        }
    }
}

/* One backward step at tape slot k: Ḡ ← ∂L/∂W^t from Ḡ = ∂L/∂W^{t+1}; θ̄ accumulated into grad. */
__attribute__((noinline)) static void backward_step(const Plan *p, Work *w, Adj *a, const Tape *tp, long k, real *Gbar, const real *FB,
                          const real *c, const double *decay, double *grad, const Lay *ly) {
    int L = p->L;
    long sW, sU, sP, scg, sg, V = p->V, mm = p->mmax;
    tape_sizes(p, &sW, &sU, &sP, &scg, &sg);
    const real *Wt = tp->W + k * sW, *U = tp->U + k * sU, *Z = tp->Z + k * V, *Gt = tp->G + k * V;
    memset(a->Ybar, 0, sizeof(real) * V);
    memset(a->Ebar, 0, sizeof(real) * V);
    memset(a->Zbar, 0, sizeof(real) * V);
    for (int li = 0; li < L; li++) a->nnew[li] = 0;
    for (int li = 0; li < L; li++) {
        Plan pbuf;
        const real *cl = c;
        const Plan *pl = layer_plan(p, ly, li, &pbuf, &cl);
        sweep_adjoint(pl, w, a, tp, k, li, Gbar, cl, decay, ly->on ? grad + (long)li * ly->R : grad);
    }
    /* the error pass, backwards: e_li = g ⊙ (1 − e^{−βy_li}), g = e_{li+1}F (fa, bp) or e_L D (dfa) */
    long oL = p->voff[L], nL = p->widths[L];
    for (int li = 0; li < L; li++) {
        long m = p->widths[li], npd = p->wpad[li + 1], om = p->voff[li], on = p->voff[li + 1];
        if (p->mode == 1 && li == 0) continue;
        real *gbar = a->hb, *bt = NULL;
        if (p->mode == 2) {
            real *at = push_deferred(p, a, li, &bt);
            memcpy(at, U + V + on, sizeof(real) * npd);      /* W̄ += e_{li+1} ḡᵀ */
        }
        for (long j = 0; j < m; j++) {
            real yj = U[om + j], ex = (real)exp(-(double)(p->beta * yj)), eb = a->Ebar[om + j];
            gbar[j] = eb * (1 - ex);
            if (li > 0) a->Ybar[om + j] += eb * Gt[om + j] * p->beta * ex;
            if (bt) bt[j] = gbar[j];
        }
        if (p->mode == 1) {
            const real *D = FB + p->foff[li];
            for (long i = 0; i < nL; i++) {
                real s = 0;
                for (long j = 0; j < m; j++) s += D[i * m + j] * gbar[j];
                a->Ebar[oL + i] += s;
            }
        } else {
            const real *F = p->mode == 0 ? FB + p->foff[li] : Wt + p->woff[li];
            real *eb = a->Ebar + on;
            for (long j = 0; j < m; j++) {
                vec s = vbc(gbar[j]);
                const real *fj = F + j * npd;
                for (long i = 0; i < npd; i += VL) vst(eb + i, vld(eb + i) + s * vld(fj + i));
            }
        }
    }
    /* e_L = p − onehot, p = softmax(z_L) */
    const real *pv = U + oL;
    double dot = 0;
    for (long i = 0; i < nL; i++) {
        a->Ybar[oL + i] += a->Ebar[oL + i];
        dot += (double)pv[i] * a->Ybar[oL + i];
    }
    for (long i = 0; i < nL; i++) a->Zbar[oL + i] += pv[i] * (a->Ybar[oL + i] - (real)dot);
    /* the forward pass, backwards: y = softplus(z), z = W y_prev */
    for (int l = L; l >= 1; l--) {
        long n = p->widths[l], on = p->voff[l], m = p->widths[l - 1], npd = p->wpad[l], om = p->voff[l - 1];
        if (l < L)
            for (long i = 0; i < n; i++) a->Zbar[on + i] += a->Ybar[on + i] * sigm(Z[on + i], p->beta);
        real *bt, *at = push_deferred(p, a, l - 1, &bt);
        memcpy(at, a->Zbar + on, sizeof(real) * npd);
        memcpy(bt, U + om, sizeof(real) * m);
        if (l - 1 == 0) continue;
        const real *Wl = Wt + p->woff[l - 1];
        real *zb = a->Zbar + on;
        for (long j = 0; j < m; j++) {
            vec s = vbc(0);
            for (long i = 0; i < npd; i += VL) s += vld(Wl + j * npd + i) * vld(zb + i);
            a->Ybar[om + j] += vsum(s);
        }
    }
    (void)mm;
    real *t = a->aold; a->aold = a->anew; a->anew = t;
    t = a->bold; a->bold = a->bnew; a->bnew = t;
    int *ti = a->nold; a->nold = a->nnew; a->nnew = ti;
}

/* One episode: W (in: W^0, out: W^S), grad (out) = ∂ mean_q CE(query)/∂θ: R doubles, or L × R with per-layer θ
 * (ly->on). seg: checkpoint interval. primal_only: W^S alone (no tape, no checkpoints, grad untouched).
 * Returns 0, or −1 when the work memory cannot be allocated. */
static int adjoint_run(real *W, const real *FB, const real *X, const long *T, long S, const real *XQ, const long *TQ,
                       long Q, int L, int mode, const long *widths, const long *wpad, const long *woff,
                       const long *foff, const long *voff, long Wtot, const real *c, real scale, real beta,
                       const char *act_s, int npairs, const int *pairs, const double *theta, int natoms,
                       const int *atoms, const double *atom_coef, int ngates, const int *gates, const double *decay,
                       int R, long seg, double *grad, const Lay *ly, int primal_only) {
    long V = voff[L] + wpad[L], npmax = 0, mmax = 0;
    for (int k = 0; k <= L; k++) npmax = wpad[k] > npmax ? wpad[k] : npmax;
    for (int k = 0; k < L; k++) mmax = widths[k] > mmax ? widths[k] : mmax;
    mmax = (mmax + 15) / 16 * 16;
    real zero_cr[3 * NS] = {0};
    /* the primal runs with no tangents (R = 0 in the forward kernel's Plan); the adjoint reads R and the atoms */
    Plan p = {L, 0, mode, V, Wtot, npmax, mmax, widths, wpad, woff, foff, voff, c, zero_cr, NULL, scale, beta,
              act_s, NULL, npairs, pairs, theta, natoms, ngates, atoms, atom_coef, gates, {0, 0, 0}, {0, 0, 0}};
    for (int k = 0; k < ngates; k++)
        if (gates[3 * k] == 2 && gates[3 * k + 2] != 0) p.need_pre[gates[3 * k + 1]] = 1;
    for (int a = 0; a < 3; a++) p.need_P[a] = p.need_pre[a] || act_s[3 + a];
    if (seg < 1 || primal_only) seg = 1;
    if (seg > S) seg = S > 0 ? S : 1;
    long nseg = S > 0 ? (S + seg - 1) / seg : 0;
    long nck = primal_only || nseg <= 1 ? 1 : nseg - 1;
    long sW, sU, sP, scg, sg;
    tape_sizes(&p, &sW, &sU, &sP, &scg, &sg);
    int Kmax = ngates + 2;
    Work w = {0};
    Adj a = {0};
    Tape tp = {0};
    real *ck = NULL, *Gbar = NULL, *Wk = NULL;
    w.U = calloc(3 * V, sizeof(real));
    w.ZP = calloc(V, sizeof(real));
    w.Un = calloc(V, sizeof(real));
    w.ZPn = calloc(V, sizeof(real));
    w.Z = calloc(npmax, sizeof(real));
    w.P = calloc(3 * mmax, sizeof(real));
    w.Gb = calloc(mmax, sizeof(real));
    w.post = calloc(3 * npmax, sizeof(real));
    w.Q = calloc(3, sizeof(real));
    w.vd = calloc(NS, sizeof(real));
    w.aud = calloc(3, sizeof(real));
    w.wnew = calloc(npmax, sizeof(real));
    w.cg = calloc(3 * NS, sizeof(real));
    w.Crg = calloc(3 * NS, sizeof(real));
    w.g = calloc(ngates + 1, sizeof(double));
    w.gd = calloc(ngates + 1, sizeof(double));
    tp.W = malloc(sizeof(real) * seg * sW);
    tp.U = calloc(seg * sU, sizeof(real));
    tp.Z = calloc(seg * V, sizeof(real));
    tp.G = calloc(seg * V, sizeof(real));
    tp.P = calloc(seg * sP, sizeof(real));
    tp.cg = calloc(seg * scg, sizeof(real));
    tp.g = calloc(seg * sg, sizeof(double));
    ck = malloc(sizeof(real) * nck * Wtot);
    Gbar = calloc(Wtot, sizeof(real));
    Wk = malloc(sizeof(real) * Wtot);
    a.Ybar = calloc(V, sizeof(real));
    a.Ebar = calloc(V, sizeof(real));
    a.Zbar = calloc(V, sizeof(real));
    a.row = calloc(npmax, sizeof(real));
    a.uy = calloc(npmax, sizeof(real));
    a.ue = calloc(npmax, sizeof(real));
    a.sa0 = calloc(npmax, sizeof(real));
    a.sa1 = calloc(npmax, sizeof(real));
    a.wb = calloc((ngates + 1) * npmax, sizeof(real));
    a.hb = calloc(npmax > mmax ? npmax : mmax, sizeof(real));
    a.zq = calloc(npmax, sizeof(real));
    a.Kmax = Kmax;
    a.aold = calloc((long)L * Kmax * npmax, sizeof(real));
    a.anew = calloc((long)L * Kmax * npmax, sizeof(real));
    a.bold = calloc((long)L * Kmax * mmax, sizeof(real));
    a.bnew = calloc((long)L * Kmax * mmax, sizeof(real));
    a.nold = calloc(L, sizeof(int));
    a.nnew = calloc(L, sizeof(int));
    a.gbar = calloc(ngates + 1, sizeof(double));
    int ok = w.U && w.ZP && w.Un && w.ZPn && w.Z && w.P && w.Gb && w.post && w.Q && w.vd && w.aud && w.wnew && w.cg && w.Crg && w.g
             && w.gd && tp.W && tp.U && tp.Z && tp.G && tp.P && tp.cg && tp.g && ck && Gbar && Wk && a.Ybar && a.Ebar
             && a.Zbar && a.row && a.uy && a.ue && a.sa0 && a.sa1 && a.wb && a.hb && a.zq && a.aold && a.anew
             && a.bold && a.bnew && a.nold && a.nnew && a.gbar;
    if (ok && primal_only) {                   /* W ping-pongs between W and Wk */
        for (int li = 0; li <= L; li++)
            for (long i = 0; i < widths[li]; i++) w.U[2 * V + voff[li] + i] = 1;
        real *cur = W, *nxt = Wk;
        if (S > 0) load_sample(&p, &w, W, X, 0);
        for (long st = 0; st < S; st++) {
            primal_step(&p, &w, cur, nxt, FB, X, T[st], st, st + 1 < S, c, &tp, -1, ly);
            real *t = cur; cur = nxt; nxt = t;
        }
        if (cur != W) memcpy(W, cur, sizeof(real) * Wtot);
    } else if (ok) {
        p.R = 0;
        for (int li = 0; li <= L; li++)
            for (long i = 0; i < widths[li]; i++) w.U[2 * V + voff[li] + i] = 1;
        for (long r = 0; r < (ly->on ? (long)L * R : R); r++) grad[r] = 0;
        /* first pass: checkpoints at the start of every segment but the last, whose tape it writes itself
         * (W^t in tape slot k, W^{t+1} into slot k + 1); before that, W ping-pongs between W and Wk */
        long last0 = (nseg - 1) * seg;
        real *cur = W, *nxt = Wk;
        if (S > 0) load_sample(&p, &w, W, X, 0);
        for (long st = 0; st < S; st++) {
            if (st % seg == 0 && st < last0) memcpy(ck + (st / seg) * Wtot, cur, sizeof(real) * Wtot);
            long k = st >= last0 ? st - last0 : -1;
            if (k == 0) memcpy(tp.W, cur, sizeof(real) * Wtot);
            const real *src = k >= 0 ? tp.W + k * sW : cur;
            real *dst = k >= 0 ? (st + 1 < S ? tp.W + (k + 1) * sW : Wk) : nxt;
            primal_step(&p, &w, src, dst, FB, X, T[st], st, st + 1 < S, c, &tp, k, ly);
            if (k < 0) { real *t = cur; cur = nxt; nxt = t; }
        }
        if (S > 0) memcpy(W, Wk, sizeof(real) * Wtot);
        query_gradient(&p, &w, &a, W, XQ, TQ, Q, Gbar);
        Plan pa = p;
        pa.R = R;
        for (long sgi = nseg - 1; sgi >= 0; sgi--) {
            long t0 = sgi * seg, t1 = t0 + seg < S ? t0 + seg : S;
            if (sgi < nseg - 1) {              /* rebuild the segment's tape from its checkpoint */
                memcpy(tp.W, ck + sgi * Wtot, sizeof(real) * Wtot);
                load_sample(&p, &w, tp.W, X, t0);
                for (long st = t0; st < t1; st++) {
                    long k = st - t0;
                    primal_step(&p, &w, tp.W + k * sW, st + 1 < t1 ? tp.W + (k + 1) * sW : Wk, FB, X, T[st], st,
                                st + 1 < t1, c, &tp, k, ly);
                }
            }
            for (long st = t1 - 1; st >= t0; st--) backward_step(&pa, &w, &a, &tp, st - t0, Gbar, FB, c, decay, grad, ly);
        }
    }
    free(w.U); free(w.ZP); free(w.Un); free(w.ZPn); free(w.Z); free(w.P); free(w.Gb); free(w.post); free(w.Q); free(w.vd); free(w.aud);
    free(w.wnew); free(w.cg); free(w.Crg); free(w.g); free(w.gd);
    free(tp.W); free(tp.U); free(tp.Z); free(tp.G); free(tp.P); free(tp.cg); free(tp.g);
    free(ck); free(Gbar); free(Wk);
    free(a.Ybar); free(a.Ebar); free(a.Zbar); free(a.row); free(a.uy); free(a.ue); free(a.sa0); free(a.sa1);
    free(a.wb); free(a.hb); free(a.zq); free(a.aold); free(a.anew); free(a.bold); free(a.bnew); free(a.nold);
    free(a.nnew); free(a.gbar);
    return ok ? 0 : -1;
}

/* Shared θ: every layer uses c, scale and theta (R), grad has R entries. */
int adjoint_episode(real *W, const real *FB, const real *X, const long *T, long S, const real *XQ, const long *TQ,
                    long Q, int L, int mode, const long *widths, const long *wpad, const long *woff, const long *foff,
                    const long *voff, long Wtot, const real *c, real scale, real beta, const char *act_s,
                    int npairs, const int *pairs, const double *theta, int natoms, const int *atoms,
                    const double *atom_coef, int ngates, const int *gates, const double *decay, int R, long seg,
                    double *grad) {
    Lay ly = {0, R, NULL, NULL, NULL};
    return adjoint_run(W, FB, X, T, S, XQ, TQ, Q, L, mode, widths, wpad, woff, foff, voff, Wtot, c, scale, beta,
                       act_s, npairs, pairs, theta, natoms, atoms, atom_coef, ngates, gates, decay, R, seg, grad,
                       &ly, 0);
}

/* Per-layer θ (docs/kernels.md, "Per-layer θ"): layer ℓ uses row ℓ of c (L × 3 × NS), scale (L) and theta (L × R);
 * grad (L × R, out) = ∂ mean_q CE(query)/∂θ_ℓ. primal_only: the adapted W alone (grad and the query unused). */
int adjoint_episode_layered(real *W, const real *FB, const real *X, const long *T, long S, const real *XQ,
                            const long *TQ, long Q, int L, int mode, const long *widths, const long *wpad,
                            const long *woff, const long *foff, const long *voff, long Wtot, const real *c,
                            const real *scale, real beta, const char *act_s, int npairs, const int *pairs,
                            const double *theta, int natoms, const int *atoms, const double *atom_coef, int ngates,
                            const int *gates, const double *decay, int R, long seg, int primal_only, double *grad) {
    Lay ly = {1, R, c, scale, theta};
    return adjoint_run(W, FB, X, T, S, XQ, TQ, Q, L, mode, widths, wpad, woff, foff, voff, Wtot, c, scale[0], beta,
                       act_s, npairs, pairs, theta, natoms, atoms, atom_coef, ngates, gates, decay, R, seg, grad,
                       &ly, primal_only);
}
