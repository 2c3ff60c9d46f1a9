"""Reservoir motor learners: FORCE, RMHL and SUPERTREX (docs/science.md S5, Pyle & Rosenbaum 2019; Sankar et al. 2021).

Reservoir: x ← x + (dt/τ)(−x + J r + Q z), r = tanh(x) + ξ, ξ ~ U(−0.025, 0.025), J sparse (p = 0.1) with entries
N(0, λ²/(pN)), λ = 1.5, Q ~ U(−1, 1)^{N×d}, dt = 0.2, τ = 10. Output z = z_exp + z_mst.
Exploratory (RMHL): z_exp = W_exp r + ζ, ζ ~ U(−β_t, β_t), β_t = a(10 ē)^p; e = ‖Pos(z) − f‖² (+ Σ c_j|z_j − z̄_j|),
ē ← 0.8ē + 0.2e, z̄ ← k z̄ + (1 − k) z_exp, M = ē − e, ΔW_exp = 5κ Φ(M)(z_exp − z̄) rᵀ, Φ(M) = sign(M)|M|^{1/4}.
Mastery (FORCE/RLS every 10 steps): k = P r, c = 1/(1 + rᵀk), P ← P − s c k kᵀ, W_mst ← W_mst + γ s c z̄ kᵀ with the
gate s = ½ − ½ tanh(5·10⁵(ē − θ)) (the authors' and the replication's code use the filtered z̄ here); FORCE alone:
P ← P − c k kᵀ, W ← W − c (z − f) kᵀ. Metric: test-phase mean of √(ē_MSE), ē_MSE the error low-passed with
τ_e = period/10 (1000 time units in the published protocol); satisfactory < 0.5.

All seeds run as one batch: state (B, N), readouts (B, d, N), P (B, N, N), and J as one block-diagonal CSR matrix.
The `reservoir-motor` benchmark suite is defined in discovery.reservoir.suite.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

DT = 0.2
TAU = 10.0
P_CONNECT = 0.1
LAMBDA = 1.5
NOISE = 0.025
KAPPA = 5e-4
P0 = 0.1                      # P₀ = I/10
RLS_EVERY = 10
GATE_SLOPE = 5e5
SATISFACTORY = 0.5
BUTTERFLY_NORM = 14.4734
ARM_BASE_Y = -2.0

Learner = Literal["force", "rmhl", "supertrex"]
Setting = Literal["published", "fixed"]

# full: the published protocol (750k steps). shortened: fewer periods at the published time scale (250k steps;
# SUPERTREX still consolidates). fast: the butterfly drawn 10× faster (5,000-step periods, 60k steps): FORCE
# learns it, the reward-modulated pathways have too few updates per period to.
PROTOCOLS: dict[str, dict[str, int]] = {
    "full": {"periods_train": 10, "periods_test": 5, "period_steps": 50_000},
    "shortened": {"periods_train": 4, "periods_test": 1, "period_steps": 50_000},
    "fast": {"periods_train": 10, "periods_test": 2, "period_steps": 5_000},
}
Protocol = Literal["full", "shortened", "fast"]


@dataclass(frozen=True)
class TaskConfig:
    """Constants of one motor task (S5): outputs d, arm, cost, exploration β = amp(10ē)^pow, filters, κ, γ, θ."""

    task: int
    n_out: int
    arm: tuple[float, ...] | None
    cost: tuple[float, ...] | None
    beta_amp: float
    beta_pow: float
    zbar_keep: float
    exp_lr: float
    gamma: float
    theta: float
    reward_nonnegative_only: bool
    cost_on_total_output: bool


def task_config(task: int, setting: Setting = "published") -> TaskConfig:
    """Task 1 (butterfly), 2 (2-joint arm 1.8/1.8), 3 (3-joint arm 1.8/1.2/0.6, costs (0.1, 0.05, 0)).

    setting 'fixed' (task 3; tasks 1–2 are unchanged) applies the replication's fixes: exploratory lr
    κ × 0.5/n_segs instead of 0.5κ, θ = 1.5e-2 (already the published task-3 value), and the movement cost
    measured against the low-pass of the total output z (the replication's modified code) instead of that of z_exp.
    """
    if setting not in ("published", "fixed"):
        raise ValueError(f"unknown setting {setting!r}")
    if task == 1:
        return TaskConfig(1, 2, None, None, 0.025, 0.25, 0.8, KAPPA, 0.5, 1.5e-3, True, False)
    if task == 2:
        return TaskConfig(2, 2, (1.8, 1.8), None, 0.01, 0.2, 0.9, KAPPA, 0.5, 1.5e-3, False, False)
    if task == 3:
        cfg = TaskConfig(3, 3, (1.8, 1.2, 0.6), (0.1, 0.05, 0.0), 0.005, 0.25, 0.9, 0.5 * KAPPA, 0.9, 1.5e-2,
                         False, False)
        if setting == "fixed":
            cfg = replace(cfg, exp_lr=KAPPA * 0.5 / 3, cost_on_total_output=True)
        return cfg
    raise ValueError(f"unknown task {task!r}")


def butterfly(steps: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """f(θ) = ρ(θ)(cos θ, sin θ), ρ = (9 − sin θ + 2 sin 3θ + 2 sin 5θ − sin 7θ + 3 cos 2θ − 2 cos 4θ)/14.4734,
    θ = linspace(0, 2π, steps): one drawing per period, shape (steps, 2)."""
    th = torch.linspace(0, 2 * math.pi, steps, dtype=torch.float64)
    rho = (9 - torch.sin(th) + 2 * torch.sin(3 * th) + 2 * torch.sin(5 * th) - torch.sin(7 * th)
           + 3 * torch.cos(2 * th) - 2 * torch.cos(4 * th)) / BUTTERFLY_NORM
    return torch.stack([rho * torch.cos(th), rho * torch.sin(th)], -1).to(dtype)


def arm_position(z: Tensor, lengths: Tensor) -> Tensor:
    """End effector of a planar arm with joint angles z (units of π, (..., d)): φ = π cumsum z,
    Pos = (Σ l_j sin φ_j, Σ l_j cos φ_j − 2)."""
    phi = math.pi * torch.cumsum(z, -1)
    return torch.stack([(lengths * torch.sin(phi)).sum(-1), (lengths * torch.cos(phi)).sum(-1) + ARM_BASE_Y], -1)


def make_reservoir(seed: int, N: int, n_out: int, *, p: float = P_CONNECT, lam: float = LAMBDA
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """J (N × N, dense with zeros: each entry present w.p. p, N(0, λ²/(pN))), Q ~ U(−1, 1)^{N×d}, x₀ ~ U(−½, ½)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(N, N, generator=g) < p
    J = torch.randn(N, N, generator=g) * (lam / math.sqrt(p * N)) * mask
    Q = torch.rand(N, n_out, generator=g) * 2 - 1
    x0 = torch.rand(N, generator=g) - 0.5
    return J, Q, x0


def block_diag_csr(mats: Sequence[Tensor]) -> Tensor:
    """The block-diagonal CSR matrix diag(J_1, …, J_B), built without a dense (BN × BN) intermediate.

    int32 indices: the CPU kernel converts int64 indices on every product (measured 104 µs vs 63 µs, N = 1000).
    """
    crow, col, val = [torch.zeros(1, dtype=torch.int64)], [], []
    nnz, off = 0, 0
    for M in mats:
        rows, cols = M.nonzero(as_tuple=True)                              # row-major order
        crow.append(torch.bincount(rows, minlength=M.shape[0]).cumsum(0) + nnz)
        col.append(cols + off)
        val.append(M[rows, cols])
        nnz += rows.numel()
        off += M.shape[1]
    n = sum(M.shape[0] for M in mats)
    with warnings.catch_warnings():                                        # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.cat(crow).to(torch.int32), torch.cat(col).to(torch.int32),
                                       torch.cat(val), size=(n, off), check_invariants=False)


def lowpass(e: Tensor, c: float, chunk: int = 1024) -> Tensor:
    """y_t = y_{t−1} + c(e_t − y_{t−1}), y_0 = e_0, along the last axis (float64, chunked Toeplitz products)."""
    e = e.to(torch.float64)
    a = 1.0 - c
    i = torch.arange(chunk, dtype=torch.float64)
    lag = i[:, None] - i[None, :]
    T = torch.where(lag >= 0, c * a ** lag.clamp(min=0), torch.zeros(()))
    powers = a ** (i + 1)
    out = torch.empty_like(e)
    y_prev = e[..., 0]
    for s in range(0, e.shape[-1], chunk):
        blk = e[..., s:s + chunk]
        k = blk.shape[-1]
        y = blk @ T[:k, :k].T + y_prev.unsqueeze(-1) * powers[:k]
        out[..., s:s + k] = y
        y_prev = y[..., -1]
    return out


@dataclass
class _Run:
    errors: Tensor            # (B, total_steps) instantaneous error e_t
    gate: Tensor              # (B, periods) mean consolidation gate s per period (NaN where not applicable)
    wall_s: float
    steps: int


StepFn = Callable[..., tuple[Tensor, ...]]


def _make_step(cfg: TaskConfig, learner: Learner, train: bool, dtype: torch.dtype,
               lr_scale: Tensor | None = None) -> StepFn:
    """One Euler step of reservoir + readouts + exploratory (RMHL) learning, as a pure function of the state.

    (inp = J r, fb, x, W = [W_exp; W_mst], Q, ξ_t, ζ_t, f_t, β, exp_on, z̄, z̄_tot, ē, mix) ->
    (x, r, z, W, z̄, z̄_tot, ē, β, e_t); mix = (1 − k, 0.2) are the filter weights (1, 1 on the very first step).
    """
    d = cfg.n_out
    a = DT / TAU
    keep = cfg.zbar_keep
    kappa5 = 5.0 * cfg.exp_lr if lr_scale is None else 5.0 * cfg.exp_lr * lr_scale      # per-element κ (tuning)
    lengths = torch.tensor(cfg.arm, dtype=dtype) if cfg.arm else None
    costs = torch.tensor(cfg.cost, dtype=dtype) if cfg.cost else None
    explore = train and learner != "force"

    def step(inp: Tensor, fb: Tensor, x: Tensor, W: Tensor, Qt: Tensor, xi: Tensor, zeta: Tensor, f_t: Tensor,
             beta: Tensor, exp_on: Tensor, zbar: Tensor, zbar_tot: Tensor, ebar: Tensor, mix: Tensor
             ) -> tuple[Tensor, ...]:
        x = x + a * (inp + torch.bmm(fb.unsqueeze(1), Qt).squeeze(1) - x)
        r = torch.tanh(x)
        if train:
            r = r + xi
        out = torch.bmm(W, r.unsqueeze(2)).squeeze(2)                          # (B, 2d)
        z_exp = out[:, :d] + (beta * exp_on).unsqueeze(1) * zeta if explore else None
        if learner == "rmhl":
            z = out[:, :d] if z_exp is None else z_exp
        else:
            z = out[:, d:] if z_exp is None else z_exp + out[:, d:]
        if z_exp is not None:
            zbar = zbar + mix[0] * (z_exp - zbar)
        elif not train:                           # test: RMHL's output is its exploratory pathway; SUPERTREX's is 0
            zbar = zbar + mix[0] * (z - zbar) if learner == "rmhl" else keep * zbar
        if cfg.cost_on_total_output:
            zbar_tot = zbar_tot + mix[0] * (z - zbar_tot)
        pos = z if lengths is None else arm_position(z, lengths)
        err = ((pos - f_t) ** 2).sum(-1)
        if costs is not None:
            err = err + ((z - (zbar_tot if cfg.cost_on_total_output else zbar)).abs() * costs).sum(-1)
        if z_exp is not None:
            ebar = ebar + mix[1] * (err - ebar)
            M = ebar - err                                                      # reward M = ē − e
            phi = M.clamp(min=0).pow(0.25) if cfg.reward_nonnegative_only else M.sign() * M.abs().pow(0.25)
            u = (kappa5 * phi * exp_on).unsqueeze(1) * (z_exp - zbar)
            W = torch.cat([W[:, :d] + u.unsqueeze(2) * r.unsqueeze(1), W[:, d:]], 1)
            beta = cfg.beta_amp * (10 * ebar).clamp(min=0).pow(cfg.beta_pow)
        return x, r, z, W, zbar, zbar_tot, ebar, beta, err

    return step


def _simulate(cfg: TaskConfig, learner: Learner, seeds: Sequence[int], lesion: Sequence[int | None], *,
              periods_train: int, periods_test: int, period_steps: int, N: int, noise: float = NOISE,
              chunk: int = 1000, dtype: torch.dtype = torch.float32, test_feedback: str = "teacher",
              progress: Callable[[int, int], None] | None = None, lr_scale: Sequence[float] | None = None
              ) -> _Run:
    """Run B = len(seeds) independent reservoirs (batch element b uses seed b; lesion[b] = first training period
    with the exploratory pathway removed, or None) through periods_train training and periods_test test periods.
    lr_scale[b] multiplies element b's learning rate: the exploratory κ (RMHL, SUPERTREX) or P₀ (FORCE).
    test_feedback 'teacher' feeds f (task 1) or the replayed training output (arms) back in the test phase;
    'closed' feeds back the network's own output z (autonomous production)."""
    if test_feedback not in ("teacher", "closed"):
        raise ValueError(f"unknown test_feedback {test_feedback!r}")
    if learner not in ("force", "rmhl", "supertrex"):
        raise ValueError(f"unknown learner {learner!r}")
    if learner == "force" and cfg.task != 1:
        raise ValueError("FORCE needs the target output z, so it only applies to task 1")
    B, d = len(seeds), cfg.n_out
    parts = [make_reservoir(s, N, d) for s in seeds]
    Jcsr = block_diag_csr([p[0] for p in parts]).to(dtype)
    Qt = torch.stack([p[1].T for p in parts]).to(dtype)                  # (B, d, N)
    x = torch.stack([p[2] for p in parts]).to(dtype)                     # (B, N)
    r = torch.tanh(x)
    z = torch.zeros(B, d, dtype=dtype)
    W = torch.zeros(B, 2 * d, N, dtype=dtype)                            # rows [:d] = W_exp, [d:] = W_mst
    P = torch.eye(N, dtype=dtype).mul(P0).repeat(B, 1, 1)
    scale = None if lr_scale is None else torch.tensor(list(lr_scale), dtype=dtype)
    if scale is not None and learner == "force":
        P = P * scale[:, None, None]
    zbar = torch.zeros(B, d, dtype=dtype)                                # low-pass of z_exp
    zbar_tot = torch.zeros(B, d, dtype=dtype)                            # low-pass of z (fixed task-3 cost)
    ebar = torch.zeros(B, dtype=dtype)
    beta = torch.zeros(B, dtype=dtype)
    mix_first = torch.ones(2, dtype=dtype)
    mix = torch.tensor([1 - cfg.zbar_keep, 0.2], dtype=dtype)
    target = butterfly(period_steps, dtype)                              # (T, 2)
    gens = [torch.Generator().manual_seed(1_000_003 * (s + 1)) for s in seeds]
    steps = {tr: _make_step(cfg, learner, tr, dtype, scale if learner != "force" else None) for tr in (True, False)}
    n_replay = min(periods_test, periods_train)
    use_replay = cfg.task > 1 and test_feedback == "teacher"
    replay = torch.zeros(n_replay, period_steps, B, d, dtype=dtype) if use_replay else None
    total = (periods_train + periods_test) * period_steps
    errors = torch.empty(B, total, dtype=torch.float32)
    gate_hist = torch.full((B, periods_train + periods_test), math.nan, dtype=torch.float64)
    no_noise = (torch.zeros(B, N, dtype=dtype), torch.zeros(B, d, dtype=dtype))
    first = True
    t_global = 0
    t0 = time.perf_counter()
    for period in range(periods_train + periods_test):
        train = period < periods_train
        step = steps[train]
        exp_on = torch.tensor([learner != "force" and train and (les is None or period < les) for les in lesion],
                              dtype=dtype)
        if learner == "supertrex":
            W[:, :d][exp_on == 0] = 0.0                                  # lesion / test phase: W_exp = 0
        gate_sum, gate_n = torch.zeros(B, dtype=torch.float64), 0
        rep_slot = period - (periods_train - n_replay) if train and replay is not None else -1
        for c0 in range(0, period_steps, chunk):
            K = min(chunk, period_steps - c0)
            if train:
                xi = torch.stack([torch.rand(K, N, generator=g) for g in gens], 1).to(dtype)
                xi = xi.mul_(2 * noise).sub_(noise)                          # ξ ~ U(−0.025, 0.025)
                zeta = torch.stack([torch.rand(K, d, generator=g) for g in gens], 1).to(dtype).mul_(2).sub_(1)
            ebuf = torch.empty(K, B, dtype=dtype)
            for k in range(K):
                t = c0 + k
                f_t = target[t]
                if train or test_feedback == "closed":
                    fb = z
                elif replay is None:
                    fb = f_t.expand(B, d)                                  # teacher-forced feedback (task 1)
                else:
                    fb = replay[(period - periods_train) % n_replay, t]    # replayed training output (arms)
                inp = torch.mv(Jcsr, r.reshape(-1)).view(B, N)             # J r (block-diagonal CSR)
                noise_k = (xi[k], zeta[k]) if train else no_noise
                x, r, z, W, zbar, zbar_tot, ebar, beta, err = step(
                    inp, fb, x, W, Qt, noise_k[0], noise_k[1], f_t, beta, exp_on, zbar, zbar_tot, ebar,
                    mix_first if first else mix)
                first = False
                ebuf[k] = err
                if train and learner != "rmhl" and (t + 1) % RLS_EVERY == 0:
                    kv = torch.bmm(r.unsqueeze(1), P).squeeze(1)               # k = P r (P symmetric)
                    cc = 1.0 / (1.0 + (r * kv).sum(-1))                         # c = 1/(1 + rᵀk)
                    if learner == "force":
                        sc = cc
                        dz = (z - f_t).mul_(-cc.unsqueeze(1))                   # −c (z − f)
                    else:
                        s_gate = 0.5 - 0.5 * torch.tanh(GATE_SLOPE * (ebar - cfg.theta))
                        sc = s_gate * cc
                        dz = (cfg.gamma * sc).unsqueeze(1) * zbar               # γ s c z̄
                        gate_sum += s_gate.to(torch.float64)
                        gate_n += 1
                    ks = kv * sc.sqrt().unsqueeze(1)
                    P.baddbmm_(ks.unsqueeze(2), ks.unsqueeze(1), alpha=-1)      # P ← P − s c k kᵀ
                    W[:, d:].baddbmm_(dz.unsqueeze(2), kv.unsqueeze(1))         # W_mst update
                if rep_slot >= 0:
                    replay[rep_slot, t] = z
            errors[:, t_global:t_global + K] = ebuf.T.to(torch.float32)
            t_global += K
            if progress is not None:
                progress(t_global, total)
        if gate_n:
            gate_hist[:, period] = gate_sum / gate_n
    return _Run(errors, gate_hist, time.perf_counter() - t0, total)


def _resolve(protocol: str, periods_train: int | None, periods_test: int | None, period_steps: int | None
             ) -> tuple[int, int, int]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    base = PROTOCOLS[protocol]
    return (base["periods_train"] if periods_train is None else periods_train,
            base["periods_test"] if periods_test is None else periods_test,
            base["period_steps"] if period_steps is None else period_steps)


def _deviation(errors: Tensor, start: int, stop: int, period_steps: int) -> tuple[Tensor, Tensor]:
    """√(low-passed error) over the whole run and its mean over steps [start, stop); τ_e = period·dt/10, so the
    filter weight dt/τ_e is 10/period_steps (2·10⁻⁴ in the published protocol)."""
    dev = lowpass(errors, c=10.0 / period_steps).clamp(min=0).sqrt()
    return dev, dev[:, start:stop].mean(-1)


def run_reservoir(task: int, learner: Learner, seeds: Sequence[int], periods_train: int | None = None,
                  periods_test: int | None = None, period_steps: int | None = None, setting: Setting = "published",
                  N: int = 1000, *, protocol: Protocol = "full", noise: float = NOISE,
                  curve_points: int = 300, threads: int | None = None, dtype: torch.dtype = torch.float32,
                  test_feedback: Literal["teacher", "closed"] = "teacher",
                  progress: Callable[[int, int], None] | None = None,
                  lr_scale: Sequence[float] | None = None) -> dict:
    """Train `learner` on `task` for every seed (batched) and score the test phase; ``lr_scale`` (one per seed
    entry) multiplies the learning rate (κ of RMHL / SUPERTREX, P₀ of FORCE) for η tuning.

    protocol 'full' = 10 training + 5 test periods of 5·10⁴ steps (published); 'shortened' = 4 + 1 periods of
    5·10⁴ steps; 'fast' = 10 + 2 periods of 5·10³ steps (the butterfly drawn 10× faster); explicit periods_* /
    period_steps override the preset.
    Test phase: W_exp removed, weights frozen, no noise, feedback teacher-forced with f (task 1) or with the
    output z replayed from the last training periods (arms); test_feedback='closed' feeds back the network's own
    output instead (autonomous production). Returns per-seed deviations (test-phase mean of
    √(low-passed error)), their mean and population std, n_satisfactory (< 0.5), deviation curves downsampled to
    about `curve_points` points, the mean consolidation gate per period, wall time and steps/s.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    pt, pe, ps = _resolve(protocol, periods_train, periods_test, period_steps)
    cfg = task_config(task, setting)
    seeds = list(seeds)
    run = _simulate(cfg, learner, seeds, [None] * len(seeds), periods_train=pt, periods_test=pe,
                    period_steps=ps, N=N, noise=noise, dtype=dtype, test_feedback=test_feedback,
                    progress=progress, lr_scale=lr_scale)
    dev_curve, dev = _deviation(run.errors, pt * ps, (pt + pe) * ps, ps)
    stride = max(1, run.steps // curve_points)
    return {
        "task": task, "learner": learner, "setting": setting, "N": N, "seeds": seeds,
        "periods_train": pt, "periods_test": pe, "period_steps": ps,
        "deviation": dev.tolist(), "mean": float(dev.mean()),
        "std": float(dev.std(unbiased=False)) if len(seeds) > 1 else 0.0,
        "n_satisfactory": int((dev < SATISFACTORY).sum()),
        "curves": dev_curve[:, ::stride].tolist(), "curve_stride": stride,
        "gate_per_period": run.gate.tolist(),
        "wall_s": run.wall_s, "steps_per_s": run.steps / run.wall_s,
    }


def lesion_probe(task: int = 1, seeds: Sequence[int] = (0,), *, early: int = 1, late: int | None = None,
                 periods_train: int | None = None, periods_test: int | None = None,
                 period_steps: int | None = None, setting: Setting = "published", N: int = 1000,
                 protocol: Protocol = "full", test_feedback: Literal["teacher", "closed"] = "teacher",
                 dtype: torch.dtype = torch.float32, threads: int | None = None) -> dict:
    """SUPERTREX with the exploratory pathway removed from training period `early` (before consolidation) or
    `late` (default: the last training period, after consolidation), against the intact model; the three
    conditions share reservoirs and noise and run as one batch.

    Per condition: post_lesion_train_deviation = mean √(low-passed error) over the training periods from the
    lesion on (closed loop, the mastery pathway alone; for 'intact' from `early` on), test_deviation (the
    protocol's metric, whose filter carries the last training error into the test phase) and
    test_deviation_fresh (filter restarted at the test phase), and the mean consolidation gate s per period.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    pt, pe, ps = _resolve(protocol, periods_train, periods_test, period_steps)
    late = pt - 1 if late is None else late
    if not 0 <= early < late < pt:
        raise ValueError("need 0 ≤ early < late < periods_train")
    seeds = list(seeds)
    conds = {"intact": None, "lesion_early": early, "lesion_late": late}
    batch_seeds = [s for _ in conds for s in seeds]
    batch_lesion = [les for les in conds.values() for _ in seeds]
    run = _simulate(task_config(task, setting), "supertrex", batch_seeds, batch_lesion, periods_train=pt,
                    periods_test=pe, period_steps=ps, N=N, dtype=dtype, test_feedback=test_feedback)
    test_dev = _deviation(run.errors, pt * ps, (pt + pe) * ps, ps)[1]
    fresh_test = _deviation(run.errors[:, pt * ps:], 0, pe * ps, ps)[1]
    out: dict = {"task": task, "seeds": seeds, "early": early, "late": late, "periods_train": pt,
                 "periods_test": pe, "period_steps": ps, "N": N, "test_feedback": test_feedback,
                 "wall_s": run.wall_s, "conditions": {}}
    S = len(seeds)
    for i, (name, les) in enumerate(conds.items()):
        sl = slice(i * S, (i + 1) * S)
        start = (les if les is not None else early) * ps
        post = _deviation(run.errors[sl, start:pt * ps], 0, (pt * ps - start), ps)[1]
        out["conditions"][name] = {
            "lesion_period": les,
            "post_lesion_train_deviation": post.tolist(),
            "test_deviation": test_dev[sl].tolist(),
            "test_deviation_fresh": fresh_test[sl].tolist(),
            "test_mean": float(test_dev[sl].mean()),
            "gate_per_period": run.gate[sl].tolist(),
        }
    return out
