"""Scoring engine of the benchmark suites: online episodes, diagnostics, confidence intervals, fair tuning.

A learner (baseline or compiled rule, the ``Learner`` protocol) adapts a fresh Xavier-initialized net online,
one update per sample, on every episode of a meta-batch; the score of an episode is its query accuracy.
* Score ± CI: mean over E episodes ± t_{0.975, E−1} · s / √E (Student t-interval over episodes).
* Alignment α_ℓ (ℓ = 1..L−1): angle between the learner's teaching signal e_ℓ and backprop's δ_ℓ computed with the
  same W at the same sample, averaged over checkpoints of the online stream and over episodes (90° = unaligned).
* Orthonormality E1_ℓ = (1/N) ‖Z_ℓ − Y_ℓ W_ℓ W_ℓᵀ‖²_F on the N query samples after adaptation, with Y_{ℓ−1} (N ×
  n_{ℓ−1}) the layer inputs, Z_ℓ = Y_{ℓ−1} W_ℓᵀ the pre-activations and Y_ℓ the post-activities (softmax at the
  output): Z − Y W Wᵀ = (Y_{ℓ−1} − Y_ℓ W_ℓ) W_ℓᵀ is Oja's residual (input minus its reconstruction from the
  output) seen through W_ℓ, zero at Oja's fixed point with orthonormal rows. Also ‖I − W_ℓ W_ℓᵀ‖²_F / n_ℓ.
* Activation norms: mean over queries of ‖y_ℓ‖₂ per layer (ℓ = 1..L, logits last).
* Cost: wall time of ``learner.step`` only (diagnostics excluded), per sample per episode.
* Fair tuning: every baseline evaluates exactly the same number of hyperparameter points (a 9-point lr grid, or
  a 5 lr + 4 second-hyperparameter coordinate search), each on the same meta-train episodes (split="train",
  same episode and init seeds), and keeps the point with the best mean accuracy;
  scoring then uses held-out episodes, identical for every learner (paired comparison).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from discovery.feedforward.network import errors, forward, init_feedback, init_weights

Progress = Callable[[dict[str, Any]], None]


def _nanmean(t: Tensor, dim: int = 0) -> Tensor:
    return torch.nanmean(t, dim=dim)


# ------------------------------------------------------------------------------------------ diagnostics

def query_forward(Ws: Sequence[Tensor], xq: Tensor, beta: float) -> list[Tensor]:
    """Activities on a query set xq (B, N, D): [Y_0 = xq, Y_1, …, Y_{L−1}, logits], each (B, N, n_ℓ)."""
    hs = [xq]
    for i, W in enumerate(Ws):
        z = torch.bmm(hs[-1], W.transpose(1, 2))
        hs.append(z if i == len(Ws) - 1 else torch.nn.functional.softplus(z, beta=beta))
    return hs


def drive_reconstruction_error(Ws: Sequence[Tensor], hs: Sequence[Tensor]) -> Tensor:
    """The paper's E1_ℓ = (1/N)‖Z_ℓ − Y_ℓ W_ℓ W_ℓᵀ‖²_F per episode and layer, (B, L): how far the forward drive
    Z_ℓ = Y_{ℓ−1} W_ℓᵀ is from its reconstruction through the layer's output Y_ℓ (the suites' metric ``e1``); hs
    from :func:`query_forward`."""
    post = [*hs[:-1], torch.softmax(hs[-1], dim=-1)]
    out = []
    for i, W in enumerate(Ws):
        Wt = W.transpose(1, 2)
        Z = torch.bmm(hs[i], Wt)
        R = Z - torch.bmm(torch.bmm(post[i + 1], W), Wt)
        out.append(R.pow(2).sum((1, 2)) / hs[i].shape[1])
    return torch.stack(out, dim=1)


def orth_error(Ws: Sequence[Tensor]) -> Tensor:
    """‖I − W_ℓ W_ℓᵀ‖²_F / n_ℓ per episode and layer: (B, L)."""
    out = []
    for W in Ws:
        G = torch.bmm(W, W.transpose(1, 2))
        eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
        out.append((eye - G).pow(2).sum((1, 2)) / G.shape[-1])
    return torch.stack(out, dim=1)


def angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between rows of a and b (B, n): arccos(a·b / ‖a‖‖b‖); NaN where a norm is 0."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def teaching_signals(learner: Any, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor,
                     target: Tensor, beta: float) -> list[Tensor] | None:
    """[e_1, …, e_L] the learner's update uses: its own ``teaching_signals`` method if it has one, else the
    network errors for its ``feedback`` mode (rule learners), else None (no alignment reported)."""
    if hasattr(learner, "teaching_signals"):
        return learner.teaching_signals(Ws, Bs, x, target)
    fb = getattr(learner, "feedback", None)
    if fb is None:
        return None
    b = getattr(learner, "beta", beta)
    return errors(forward(Ws, x, b), target, Ws, Bs, fb, b)[1:]


# ------------------------------------------------------------------------------------------ online runs

@dataclass
class LearnerRun:
    """Per-episode outcomes of one learner on E episodes, and its diagnostics (means over episodes)."""

    accuracy: list[float]
    loss: list[float]
    diverged: int
    alignment_deg: list[float] | None = None
    e1: list[float] | None = None
    orth_error: list[float] | None = None
    activation_norms: list[float] | None = None
    step_seconds: float = 0.0
    samples: int = 0  # Σ over chunks of B × steps
    steps: int = 0  # online steps per episode
    calls: int = 0  # batched learner.step calls
    batch: int = 0

    @property
    def cost_per_sample_ms(self) -> float:
        """Wall time of learner.step per online sample per episode (ms)."""
        return 1000.0 * self.step_seconds / max(self.samples, 1)

    @property
    def cost_per_step_ms(self) -> float:
        """Wall time of one batched learner.step (B episodes at once, ms)."""
        return 1000.0 * self.step_seconds / max(self.calls, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_learner(learner: Any, new_sampler: Callable[[], Any], *, widths: Sequence[int], beta: float, episodes: int,
                init_seed: int, init_scale: float = 1.0, chunk: int = 100, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", diagnostics: bool = True, diag_every: int = 25,
                progress: Callable[[int, int], None] | None = None) -> LearnerRun:
    """Adapt fresh nets online on ``episodes`` episodes (in meta-batches of ≤ ``chunk``) and score the queries.

    ``new_sampler()`` returns a freshly seeded episode sampler (``.sample(b, device=, dtype=)``), and chunk c's
    nets are drawn from a generator seeded with init_seed + c, so every learner sees the same episodes and the
    same initial W (B drawn after W)."""
    device = torch.device(device)
    sampler = new_sampler()
    fb = getattr(learner, "feedback", "bp")
    n_out = widths[-1]
    accs: list[Tensor] = []
    losses: list[Tensor] = []
    ang_sum: Tensor | None = None
    ang_cnt: Tensor | None = None
    e1s, orths, norms = [], [], []
    step_s, samples, steps, calls, diverged = 0.0, 0, 0, 0, 0
    done, c = 0, 0
    while done < episodes:
        b = min(chunk, episodes - done)
        ep = sampler.sample(b, device=device, dtype=dtype)
        gen = torch.Generator().manual_seed(int(init_seed) + c)
        Ws = init_weights(widths, b, gen, init_scale, device, dtype)
        Bs = init_feedback(widths, fb, b, gen, device, dtype)
        targets = torch.nn.functional.one_hot(ep.y_train, n_out).to(dtype)
        S = ep.x_train.shape[1]
        for s in range(S):
            x, tgt = ep.x_train[:, s], targets[:, s]
            if diagnostics and len(widths) > 2 and (s % diag_every == 0 or s == S - 1):
                with torch.no_grad():
                    mine = teaching_signals(learner, Ws, Bs, x, tgt, beta)
                    if mine is not None:
                        ref = errors(forward(Ws, x, beta), tgt, Ws, None, "bp", beta)[1:]
                        a = torch.stack([angle_deg(mine[i], ref[i]) for i in range(len(Ws) - 1)], 1)  # (b, L−1)
                        ok = torch.isfinite(a)
                        a = torch.where(ok, a, torch.zeros_like(a)).sum(0).double()
                        n_ok = ok.sum(0).double()
                        ang_sum = a if ang_sum is None else ang_sum + a
                        ang_cnt = n_ok if ang_cnt is None else ang_cnt + n_ok
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                Ws = learner.step(Ws, Bs, x, tgt)
            _sync(device)
            step_s += time.perf_counter() - t0
        samples += b * S
        steps, calls = S, calls + S
        with torch.no_grad():
            hs = query_forward(Ws, ep.x_query, beta)
            logits = hs[-1]
            finite = torch.isfinite(logits).all(-1).all(-1) & torch.stack(
                [torch.isfinite(W).all(-1).all(-1) for W in Ws], 0).all(0)
            acc = (logits.argmax(-1) == ep.y_query).to(torch.float64).mean(-1)
            acc = torch.where(finite, acc, torch.full_like(acc, 1.0 / ep.ways))  # diverged: chance level
            logp = torch.log_softmax(logits.double(), -1)
            loss = -logp.gather(-1, ep.y_query.unsqueeze(-1)).squeeze(-1).mean(-1)
            loss = torch.where(finite, loss, torch.full_like(loss, float("nan")))
            diverged += int((~finite).sum())
            accs.append(acc.cpu())
            losses.append(loss.cpu())
            if diagnostics:
                nan = torch.tensor(float("nan"), dtype=torch.float64)
                keep = finite.cpu().unsqueeze(1)
                e1s.append(torch.where(keep, drive_reconstruction_error(Ws, hs).double().cpu(), nan))
                orths.append(torch.where(keep, orth_error(Ws).double().cpu(), nan))
                nrm = torch.stack([h.norm(dim=-1).mean(-1) for h in hs[1:]], 1).double().cpu()
                norms.append(torch.where(keep, nrm, nan))
        done += b
        c += 1
        if progress is not None:
            progress(done, episodes)
    run = LearnerRun(accuracy=torch.cat(accs).tolist(), loss=torch.cat(losses).tolist(), diverged=diverged,
                     step_seconds=step_s, samples=samples, steps=steps, calls=calls, batch=min(chunk, episodes))
    if diagnostics:
        if ang_sum is not None and ang_cnt is not None:
            run.alignment_deg = (ang_sum / ang_cnt).tolist()
        run.e1 = _nanmean(torch.cat(e1s)).tolist()
        run.orth_error = _nanmean(torch.cat(orths)).tolist()
        run.activation_norms = _nanmean(torch.cat(norms)).tolist()
    return run


def mean_finite(xs: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none)."""
    v = [x for x in xs if math.isfinite(x)]
    return sum(v) / len(v) if v else float("nan")


# ------------------------------------------------------------------------------------------ tuning

@dataclass
class TuningResult:
    """The chosen point and the whole table (meta-train accuracy per evaluated point, with its stage)."""

    best: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    split: str = "train"
    episodes: int = 0

    def on_edge(self) -> list[str]:
        """Hyperparameters whose chosen value is the smallest or largest value evaluated (widen the grid?)."""
        out = []
        for k, v in self.best.items():
            vals = {row["hyperparameters"].get(k) for row in self.table} - {None}
            if len(vals) > 1 and isinstance(v, (int, float)) and v in (min(vals), max(vals)):
                out.append(k)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "episodes": self.episodes, "grid_points": len(self.table),
                "best": dict(self.best), "best_on_grid_edge": self.on_edge(), "grid": self.table}


def tune(make: Callable[..., Any], stages: Sequence[Sequence[Mapping[str, Any]]], new_sampler: Callable[[], Any],
         *, widths: Sequence[int], beta: float, episodes: int, init_seed: int, init_scale: float = 1.0,
         chunk: int = 100, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         progress: Callable[[int, int], None] | None = None) -> TuningResult:
    """Coordinate search on the same meta-train episodes: stage 0's points are full hyperparameter sets, each
    later stage's points are merged onto the best so far; keep the best mean accuracy (first on ties)."""
    table: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_acc = -1.0
    total = sum(len(s) for s in stages)
    for k, stage in enumerate(stages):
        base = dict(best)
        for delta in stage:
            hp = {**base, **delta}
            run = run_learner(make(**hp), new_sampler, widths=widths, beta=beta, episodes=episodes,
                              init_seed=init_seed, init_scale=init_scale, chunk=chunk, dtype=dtype, device=device,
                              diagnostics=False)
            acc = sum(run.accuracy) / len(run.accuracy)
            table.append({"stage": k, "hyperparameters": hp, "accuracy": acc, "diverged": run.diverged})
            if acc > best_acc:
                best, best_acc = hp, acc
            if progress is not None:
                progress(len(table), total)
    return TuningResult(best=dict(best), table=table, episodes=episodes)


# ------------------------------------------------------------------------------------------ rules

def is_learner(obj: Any) -> bool:
    """Duck-typed ``Learner``: has a callable ``step`` and a ``name``."""
    return callable(getattr(obj, "step", None)) and hasattr(obj, "name")


def rule_learner(rule: Any, feedback: str, beta: float, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Any:
    """A discovered rule as a Learner, scored as it is (coefficients inside the expression, θ = [1]).

    ``rule`` is a Learner (returned unchanged), a ``rules.Rule`` (``.expression``), a sympy expression, or the
    text of an expression (parsed by the safe parser)."""
    if is_learner(rule):
        return rule
    from discovery.feedforward.inner import RuleLearner
    from rules.compiler import compile_expression

    name = getattr(rule, "name", None)
    if isinstance(rule, str):
        from rules.parser import parse_expression

        expr, name = parse_expression(rule), name or rule
    else:
        expr = getattr(rule, "expression", rule)
    compiled = compile_expression(expr)
    theta = torch.ones(1, dtype=dtype, device=torch.device(device))
    return RuleLearner(compiled, theta, feedback=feedback, beta=beta, name=str(name or "rule"))


def rule_description(rule: Any) -> dict[str, Any]:
    """Expression text (and hash when available) of a rule for the report."""
    out: dict[str, Any] = {}
    if isinstance(rule, str):
        out["expression"] = rule
        return out
    expr = getattr(rule, "expression", None)
    if expr is not None:
        out["expression"] = str(expr)
    for attr in ("hash", "canonical"):
        f = getattr(rule, attr, None)
        if callable(f):
            try:
                out[attr] = f()
            except Exception as exc:  # noqa: BLE001 - a report must not fail on a description
                out[f"{attr}_error"] = repr(exc)
    return out
