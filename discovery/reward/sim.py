"""A reservoir whose readout learns by a reward-modulated rule of the library (docs/reward.md), batched over
candidate rules × seeds.

The reservoir is the seed's (discovery.reservoir.model: x ← x + (dt/τ)(−x + J r + Q z), r = tanh(x) + ξ). Training:
z = W r + ζ, ζ ~ U(−β, β) with the seed's schedule β = amp(10ē)^pow; z̄ ← z̄ + (1 − k)(z − z̄); e = ‖Pos(z) − f‖²;
ē ← ē + α_R (e − ē) (α_R = 1/τ_R, the reward baseline's own time constant); R = −e, R − R̄ = ē − e, shaped as
Φ(u) = sign(u)|u|^{1/4} (the seed's shaping; ``shaping="none"`` keeps it linear); then

    ΔW = Σ_k θ_k M_k E_k,  E_k = post_k pre_kᵀ  (or its eligibility trace E ← E + (1/τ_E)(post preᵀ − E)).

Test phase (the seed's): weights frozen, no noise, z = W r, feedback teacher-forced with f (task 1) or the output
replayed from the last training periods (arms). Score: test-phase deviation, mean √(low-passed error)
(discovery.reservoir.model._deviation); a candidate whose weights diverge scores ``CAP``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from discovery.reservoir.model import (
    DT,
    NOISE,
    PROTOCOLS,
    TAU,
    _deviation,
    arm_position,
    block_diag_csr,
    butterfly,
    make_reservoir,
    task_config,
)
from rules.reward import POST, REWARD_TERMS, THIRD

CAP = 3.0                  # deviation of a diverged candidate (no learning: ≈ 0.6–1.2)
W_LIMIT = 1e3              # |W| beyond this counts as divergence
_THIRD = list(THIRD)
_POST = list(POST)


@dataclass(frozen=True)
class RewardEnv:
    """One motor task at one size: task (1 butterfly, 2 two-joint arm), reservoir size N, protocol (periods and
    period length), the reward baseline's time constant τ_R (steps; the seed's 5 = ē's 0.2 weight), the eligibility
    trace τ_E (steps; 0 = none), the shaping of R − R̄."""

    task: int = 1
    N: int = 1000
    protocol: str = "fast"
    periods_train: int | None = None
    periods_test: int | None = None
    period_steps: int | None = None
    reward_tau: float = 5.0
    trace_tau: float = 0.0
    shaping: str = "quartic"

    @property
    def sizes(self) -> tuple[int, int, int]:
        base = PROTOCOLS[self.protocol]
        return (self.periods_train or base["periods_train"], self.periods_test or base["periods_test"],
                self.period_steps or base["period_steps"])


@dataclass
class SimResult:
    """Per (candidate, seed) test-phase deviations (C, S), divergence flags, wall time and steps."""

    deviation: Tensor
    diverged: Tensor
    wall_s: float
    steps: int
    extra: dict = field(default_factory=dict)


def _plan(terms: Sequence[str]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Index tensors of the terms' third factor, post-factor and pre (1 = r, 0 = 1), and the posts in use."""
    ts = [REWARD_TERMS[t] for t in terms]
    mi = torch.tensor([_THIRD.index(t.third) for t in ts], dtype=torch.long)
    pi = torch.tensor([_POST.index(t.post) for t in ts], dtype=torch.long)
    pre_r = torch.tensor([t.pre == "r" for t in ts])
    return mi, pi, pre_r, sorted({t.post for t in ts})


def trace_rates(env: RewardEnv, n_candidates: int, trace_tau: Sequence[float] | Tensor | None) -> list[float]:
    """Per-candidate trace rate λ_c = min(1, 1/τ_E,c) (0 = no trace): ``trace_tau`` (C,) in steps, one time
    constant per candidate (a searched coordinate), or env.trace_tau for every candidate."""
    taus = [env.trace_tau] * n_candidates if trace_tau is None else [float(v) for v in trace_tau]
    if len(taus) != n_candidates or any(not math.isfinite(v) or v < 0 for v in taus):
        raise ValueError(f"trace_tau: {n_candidates} finite time constants ≥ 0 expected, got {taus}")
    return [min(1.0, 1.0 / v) if v > 0 else 0.0 for v in taus]


def simulate(env: RewardEnv, terms: Sequence[str], theta: Tensor, seeds: Sequence[int], *,
             chunk: int = 1000, dtype: torch.dtype = torch.float32, engine: str = "auto",
             progress: Callable[[int, int], None] | None = None,
             trace_tau: Sequence[float] | Tensor | None = None) -> SimResult:
    """Train and test every candidate θ (C, K) over ``terms`` on every seed (S): B = C·S reservoirs in one batch
    (b = c·S + s; candidates of one seed share J, Q, x₀ and the noise: common random numbers). ``trace_tau``
    (C,): each candidate's eligibility-trace time constant in steps (0: none; default env.trace_tau for all).
    ``engine``: "compiled" (discovery.reward.kernel, float64; "auto") or "torch" (this loop)."""
    if engine in ("compiled", "auto"):
        return _simulate_compiled(env, terms, theta, seeds, chunk=chunk, progress=progress, trace_tau=trace_tau)
    if env.task not in (1, 2):
        raise ValueError(f"the reward family runs motor tasks 1 and 2, not {env.task}")
    if env.task != 1 and any(REWARD_TERMS[t].supervised for t in terms):
        raise ValueError("the output error z − f needs the target output: only task 1 is supervised")
    cfg = task_config(env.task)
    pt, pe, ps = env.sizes
    theta = torch.as_tensor(theta, dtype=dtype).reshape(-1, len(terms))
    C, S, N, d = theta.shape[0], len(seeds), env.N, cfg.n_out
    B = C * S
    mi, pi, pre_r, posts_used = _plan(terms)
    parts = [make_reservoir(s, N, d) for s in seeds]
    Jcsr = block_diag_csr([parts[b % S][0] for b in range(B)]).to(dtype)
    Qt = torch.stack([parts[b % S][1].T for b in range(B)]).to(dtype)
    x = torch.stack([parts[b % S][2] for b in range(B)]).to(dtype)
    th = theta.repeat_interleave(S, 0)                                       # (B, K)
    r = torch.tanh(x)
    z = torch.zeros(B, d, dtype=dtype)
    W = torch.zeros(B, d, N, dtype=dtype)
    zbar = torch.zeros(B, d, dtype=dtype)
    ebar = torch.zeros(B, dtype=dtype)
    beta = torch.zeros(B, dtype=dtype)
    alive = torch.ones(B, dtype=dtype)
    rates = trace_rates(env, C, trace_tau)
    trace = any(v > 0 for v in rates)
    Er = torch.zeros(B, len(_POST), d, N, dtype=dtype) if trace else None
    E1 = torch.zeros(B, len(_POST), d, dtype=dtype) if trace else None
    lam = torch.tensor([v if v > 0 else 1.0 for v in rates], dtype=dtype).repeat_interleave(S)  # λ = 1: E = post preᵀ
    lengths = torch.tensor(cfg.arm, dtype=dtype) if cfg.arm else None
    a, keep, alpha_r = DT / TAU, cfg.zbar_keep, min(1.0, 1.0 / env.reward_tau)
    target = butterfly(ps, dtype)
    gens = [torch.Generator().manual_seed(1_000_003 * (s + 1)) for s in seeds]
    n_replay = min(pe, pt)
    replay = torch.zeros(n_replay, ps, B, d, dtype=dtype) if env.task > 1 else None
    total = (pt + pe) * ps
    errors = torch.empty(B, total, dtype=torch.float32)
    ones_d = torch.ones(B, d, dtype=dtype)
    mask_r, mask_1 = pre_r.to(dtype), (~pre_r).to(dtype)
    has_1 = bool((~pre_r).any())
    plan = [(REWARD_TERMS[t].third, REWARD_TERMS[t].post, REWARD_TERMS[t].pre == "r") for t in terms]
    used_third = {p[0] for p in plan}
    small = len(plan) <= 4
    first, t_global, t0 = True, 0, time.perf_counter()
    for period in range(pt + pe):
        train = period < pt
        rep_slot = period - (pt - n_replay) if train and replay is not None else -1
        for c0 in range(0, ps, chunk):
            K = min(chunk, ps - c0)
            if train:
                xi = torch.stack([torch.rand(K, N, generator=g) for g in gens], 1).to(dtype)
                xi = xi.mul_(2 * NOISE).sub_(NOISE).repeat(1, C, 1)
                zeta = torch.stack([torch.rand(K, d, generator=g) for g in gens], 1).to(dtype)
                zeta = zeta.mul_(2).sub_(1).repeat(1, C, 1)
            ebuf = torch.empty(K, B, dtype=dtype)
            for k in range(K):
                t = c0 + k
                f_t = target[t]
                if train:
                    fb = z
                elif replay is None:
                    fb = f_t.expand(B, d)
                else:
                    fb = replay[(period - pt) % n_replay, t]
                drive = torch.baddbmm(torch.mv(Jcsr, r.reshape(-1)).view(B, 1, N), fb.unsqueeze(1), Qt)
                x = torch.lerp(x, drive.squeeze(1), a)                            # x + (dt/τ)(J r + Q z − x)
                r = torch.tanh(x)
                if not train:
                    z = torch.bmm(W, r.unsqueeze(2)).squeeze(2)
                    diff = (z if lengths is None else arm_position(z, lengths)) - f_t
                    ebuf[k] = (diff * diff).sum(-1)
                    continue
                r.add_(xi[k])
                z = torch.baddbmm((beta.unsqueeze(1) * zeta[k]).unsqueeze(2), W, r.unsqueeze(2)).squeeze(2)
                zbar = z.clone() if first else zbar.lerp_(z, 1 - keep)
                diff = (z if lengths is None else arm_position(z, lengths)) - f_t
                err = (diff * diff).sum(-1)
                ebar = err.clone() if first else ebar.lerp_(err, alpha_r)
                first = False
                u = ebar - err                                                    # R − R̄
                if env.shaping == "quartic":
                    u = u.sign().mul_(u.abs().pow_(0.25))
                third = {"rpe": u, "rew": -err if "rew" in used_third else None, "one": None}
                post = {"fluct": z - zbar if "fluct" in posts_used else None, "z": z,
                        "err": z - f_t if "err" in posts_used else None, "one": ones_d}
                if trace:
                    P = torch.stack([post[p] if post[p] is not None else ones_d for p in _POST], 1)
                    Mst = torch.stack([u, -err, torch.ones_like(err)], 1)
                    coef = th * Mst[:, mi]
                    Er.add_((P.unsqueeze(3) * r[:, None, None, :] - Er) * lam[:, None, None, None])
                    E1.add_((P - E1) * lam[:, None, None])
                    W = W + torch.einsum("bk,bkdn->bdn", coef * mask_r, Er[:, pi]) \
                        + torch.einsum("bk,bkd->bd", coef * mask_1, E1[:, pi]).unsqueeze(2)
                elif small:                                                       # a few terms: one op each
                    ur = u1 = None
                    for kk, (tn, pn, on_r) in enumerate(plan):
                        c = th[:, kk] if tn == "one" else th[:, kk] * third[tn]
                        v = c.unsqueeze(1) * post[pn]
                        if on_r:
                            ur = v if ur is None else ur + v
                        else:
                            u1 = v if u1 is None else u1 + v
                    if ur is not None:
                        W.baddbmm_(ur.unsqueeze(2), r.unsqueeze(1))
                    if u1 is not None:
                        W.add_(u1.unsqueeze(2))
                else:                                                             # many terms: stacked
                    P = torch.stack([post[p] if post[p] is not None else ones_d for p in _POST], 1)[:, pi]
                    coef = th * torch.stack([u, -err, torch.ones_like(err)], 1)[:, mi]
                    W.baddbmm_(torch.bmm((coef * mask_r).unsqueeze(1), P).squeeze(1).unsqueeze(2), r.unsqueeze(1))
                    if has_1:
                        W.add_(torch.bmm((coef * mask_1).unsqueeze(1), P).squeeze(1).unsqueeze(2))
                beta = ebar.mul(10).pow_(cfg.beta_pow).mul_(cfg.beta_amp)
                ebuf[k] = err
                if rep_slot >= 0:
                    replay[rep_slot, t] = z
            if train:                                                             # divergence guard
                bad = ~torch.isfinite(W).all(2).all(1) | (W.abs().amax((1, 2)) > W_LIMIT) | ~torch.isfinite(x).all(1)
                if bad.any():
                    alive = alive * (~bad).to(dtype)
                    th = th * alive.unsqueeze(1)
                    W = torch.where(bad[:, None, None], torch.zeros((), dtype=dtype), W)
                    x = torch.where(bad[:, None], torch.zeros((), dtype=dtype), x)
                    z = torch.where(bad[:, None], torch.zeros((), dtype=dtype), z)
                    zbar = torch.where(bad[:, None], torch.zeros((), dtype=dtype), zbar)
                    ebar = torch.nan_to_num(ebar, nan=0.0, posinf=0.0)
                    beta = torch.nan_to_num(beta, nan=0.0, posinf=0.0)
                    if trace:
                        Er.mul_((~bad).to(dtype)[:, None, None, None])
                        E1.mul_((~bad).to(dtype)[:, None, None])
                    r = torch.tanh(x)
            errors[:, t_global:t_global + K] = torch.nan_to_num(ebuf.T.float(), nan=1e6, posinf=1e6)
            t_global += K
            if progress is not None:
                progress(t_global, total)
    _, dev = _deviation(errors, pt * ps, (pt + pe) * ps, ps)
    dead = alive == 0
    dev = torch.where(dead | ~torch.isfinite(dev), torch.full_like(dev, CAP), dev.clamp(max=CAP))
    return SimResult(dev.view(C, S).double(), dead.view(C, S), time.perf_counter() - t0, total,
                     {"periods_train": pt, "periods_test": pe, "period_steps": ps, "N": N,
                      "steps_per_s": total / max(time.perf_counter() - t0, 1e-9)})


def _simulate_compiled(env: RewardEnv, terms: Sequence[str], theta: Tensor, seeds: Sequence[int], *,
                       chunk: int = 1000, progress: Callable[[int, int], None] | None = None,
                       trace_tau: Sequence[float] | Tensor | None = None) -> SimResult:
    """``simulate`` with the numba inner loop (same noise streams, float64 state)."""
    import numpy as np

    from discovery.reward.kernel import run_steps

    if env.task not in (1, 2):
        raise ValueError(f"the reward family runs motor tasks 1 and 2, not {env.task}")
    if env.task != 1 and any(REWARD_TERMS[t].supervised for t in terms):
        raise ValueError("the output error z − f needs the target output: only task 1 is supervised")
    cfg = task_config(env.task)
    pt, pe, ps = env.sizes
    th = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(terms)).numpy()
    C, S, N, d = th.shape[0], len(seeds), env.N, cfg.n_out
    B = C * S
    parts = [make_reservoir(s, N, d) for s in seeds]
    indptr = np.zeros((S, N + 1), dtype=np.int64)
    idx, val, off = [], [], 0
    for i, (J, _, _) in enumerate(parts):
        Jc = J.double().to_sparse_csr()
        indptr[i] = Jc.crow_indices().numpy() + off
        idx.append(Jc.col_indices().numpy())
        val.append(Jc.values().numpy())
        off += val[-1].shape[0]
    indices, data = np.concatenate(idx).astype(np.int64), np.concatenate(val)
    Q = np.stack([p[1].double().numpy() for p in parts])                    # (S, N, d)
    seed_of = np.array([b % S for b in range(B)], dtype=np.int64)
    th = np.repeat(th, S, axis=0)                                            # (B, K)
    third = np.array([_THIRD.index(REWARD_TERMS[t].third) for t in terms], dtype=np.int64)
    post = np.array([_POST.index(REWARD_TERMS[t].post) for t in terms], dtype=np.int64)
    pre_r = np.array([REWARD_TERMS[t].pre == "r" for t in terms])
    lam = np.repeat(np.array(trace_rates(env, th.shape[0] // S, trace_tau)), S)
    used_r, used_1 = np.zeros(len(_POST), dtype=np.bool_), np.zeros(len(_POST), dtype=np.bool_)
    used_r[post[pre_r]], used_1[post[~pre_r]] = True, True
    traced = bool((lam > 0).any())
    Er = np.zeros((B, len(_POST), d, N) if traced else (1, 1, 1, 1))
    E1 = np.zeros((B, len(_POST), d) if traced else (1, 1, 1))
    x = np.stack([parts[b % S][2].double().numpy() for b in range(B)])
    r = np.tanh(x)
    z, zbar = np.zeros((B, d)), np.zeros((B, d))
    W = np.zeros((B, d, N))
    ebar, beta = np.zeros(B), np.zeros(B)
    alive = np.ones(B, dtype=bool)
    lengths = np.array(cfg.arm if cfg.arm else [0.0] * d, dtype=np.float64)
    target = butterfly(ps, torch.float64).numpy()
    gens = [torch.Generator().manual_seed(1_000_003 * (s + 1)) for s in seeds]
    n_replay = min(pe, pt)
    replay = np.zeros((n_replay, ps, B, d)) if env.task > 1 else None
    total = (pt + pe) * ps
    errors = np.empty((B, total), dtype=np.float64)
    empty3 = np.zeros((1, 1, 1))
    first, t_global, t0 = True, 0, time.perf_counter()
    args = (env.task,)
    consts = (DT / TAU, cfg.zbar_keep, min(1.0, 1.0 / env.reward_tau), env.shaping == "quartic", cfg.beta_amp,
              cfg.beta_pow)
    for period in range(pt + pe):
        train = period < pt
        rep_slot = period - (pt - n_replay) if train and replay is not None else -1
        for c0 in range(0, ps, chunk):
            K = min(chunk, ps - c0)
            if train:
                xi = torch.stack([torch.rand(K, N, generator=g) for g in gens], 1).mul_(2 * NOISE).sub_(NOISE)
                zeta = torch.stack([torch.rand(K, d, generator=g) for g in gens], 1).mul_(2).sub_(1)
                xi_np, zeta_np = xi.double().numpy(), zeta.double().numpy()
            else:
                xi_np, zeta_np = empty3, empty3
            use_replay = not train and replay is not None
            fb = replay[(period - pt) % n_replay, c0:c0 + K] if use_replay else empty3
            rec = replay[rep_slot, c0:c0 + K] if rep_slot >= 0 else empty3
            ebuf = np.empty((K, B))
            first = run_steps(train, first, *args, x, r, z, W, zbar, ebar, beta, th, third, post, pre_r, seed_of,
                              indptr, indices, data, Q, xi_np, zeta_np, target, c0, fb, use_replay, rec,
                              rep_slot >= 0, lengths, *consts, ebuf, lam, used_r, used_1, Er, E1)
            if train:                                                             # divergence guard
                bad = alive & (~np.isfinite(W).all((1, 2)) | (np.abs(W).max((1, 2)) > W_LIMIT)
                               | ~np.isfinite(x).all(1))
                if bad.any():
                    alive &= ~bad
                    th[bad] = 0.0
                    W[bad], x[bad], z[bad], zbar[bad], ebar[bad], beta[bad] = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
                    r[bad] = np.tanh(x[bad])
                    if traced:
                        Er[bad], E1[bad] = 0.0, 0.0
            errors[:, t_global:t_global + K] = np.nan_to_num(ebuf.T, nan=1e6, posinf=1e6)
            t_global += K
            if progress is not None:
                progress(t_global, total)
    _, dev = _deviation(torch.from_numpy(errors).float(), pt * ps, (pt + pe) * ps, ps)
    dead = torch.from_numpy(~alive)
    dev = torch.where(dead | ~torch.isfinite(dev), torch.full_like(dev, CAP), dev.clamp(max=CAP))
    wall = time.perf_counter() - t0
    return SimResult(dev.view(C, S).double(), dead.view(C, S), wall, total,
                     {"periods_train": pt, "periods_test": pe, "period_steps": ps, "N": N,
                      "steps_per_s": total / max(wall, 1e-9), "engine": "compiled"})


def score(env: RewardEnv, terms: Sequence[str], theta: Tensor, seeds: Sequence[int], **kw: object) -> Tensor:
    """Mean test-phase deviation over the seeds for each candidate (C,) (lower is better)."""
    return simulate(env, terms, theta, seeds, **kw).deviation.mean(1)  # type: ignore[arg-type]


def per_step_norms(env: RewardEnv, terms: Sequence[str], seeds: Sequence[int] = (0,), steps: int = 400
                   ) -> Tensor:
    """Typical size of each term at the start of learning: mean over ``steps`` training steps of a W = 0 readout
    driven by the seed's exploration of |M_k| ‖post_k‖ ‖pre_k‖ = ‖M_k post_k pre_kᵀ‖_F, (K,); the search scales θ_k
    by 1/norm so one step size fits every term."""
    cfg = task_config(env.task)
    S, N, d = len(seeds), env.N, cfg.n_out
    parts = [make_reservoir(s, N, d) for s in seeds]
    J = torch.stack([p[0] for p in parts])
    Q = torch.stack([p[1] for p in parts])
    x = torch.stack([p[2] for p in parts])
    gens = [torch.Generator().manual_seed(7 + s) for s in seeds]
    lengths = torch.tensor(cfg.arm) if cfg.arm else None
    target = butterfly(env.sizes[2])
    z = torch.zeros(S, d)
    zbar = torch.zeros(S, d)
    ebar = torch.zeros(S)
    beta = torch.full((S,), cfg.beta_amp)
    ts = [REWARD_TERMS[t] for t in terms]
    acc = torch.zeros(len(ts), dtype=torch.float64)
    for t in range(steps):
        x = x + (DT / TAU) * (torch.bmm(J, torch.tanh(x).unsqueeze(2)).squeeze(2)
                              + torch.bmm(Q, z.unsqueeze(2)).squeeze(2) - x)
        r = torch.tanh(x) + (torch.stack([torch.rand(N, generator=g) for g in gens]) * 2 - 1) * NOISE
        z = beta.unsqueeze(1) * (torch.stack([torch.rand(d, generator=g) for g in gens]) * 2 - 1)
        zbar = zbar + (1 - cfg.zbar_keep) * (z - zbar) if t else z.clone()
        pos = z if lengths is None else arm_position(z, lengths)
        err = ((pos - target[t % target.shape[0]]) ** 2).sum(-1)
        ebar = ebar + (err - ebar) / env.reward_tau if t else err.clone()
        u = ebar - err
        if env.shaping == "quartic":
            u = u.sign() * u.abs().pow(0.25)
        m = {"rpe": u.abs(), "rew": err, "one": torch.ones(S)}
        p = {"fluct": (z - zbar).norm(dim=1), "z": z.norm(dim=1), "err": (z - target[t % target.shape[0]]).norm(dim=1),
             "one": torch.full((S,), math.sqrt(d))}
        q = {"r": r.norm(dim=1), "one": torch.full((S,), math.sqrt(N))}
        acc += torch.stack([(m[tm.third] * p[tm.post] * q[tm.pre]).mean() for tm in ts]).double()
        beta = cfg.beta_amp * (10 * ebar).clamp(min=0).pow(cfg.beta_pow)
    return acc / steps
