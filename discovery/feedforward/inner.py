"""The online inner loop: apply a learner sample by sample (batch 1), vectorized over a meta-batch of episodes.

Rule learner: W_ℓ ← W_ℓ + Σ_r θ_r F^r_ℓ(x = y_{ℓ−1}, y = y_ℓ, e = e_ℓ, e_pre = e_{ℓ−1}, W_ℓ) each sample.
Forward mode carries Ẇ_ℓ = ∂W_ℓ/∂θ (R tangents as a leading dim) through the same loop in closed form, so the
exact meta-gradient ∂L_query/∂θ costs O(1) memory in the number of inner steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from discovery.feedforward.network import errors, feedback_matrices, forward, matvec, post_activities, vecmat
from rules.compiler import CompiledRule, mm

Weights = list[Tensor]


class Learner(Protocol):
    """One online update of all layers, batched over episodes: new W_ℓ from (W, B, x, one-hot target)."""

    name: str
    locality: str

    def step(self, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor, target: Tensor) -> Weights:
        ...


def rule_env(i: int, ys: Sequence[Tensor], post: Sequence[Tensor], es: Sequence[Tensor], W: Tensor) -> dict:
    """The primitives layer i+1 (0-based weight i) sees: x = y_i, y = post-activity y_{i+1}, e, e_pre, W."""
    return {"x": ys[i], "y": post[i + 1], "e": es[i + 1], "e_pre": es[i], "W": W}


def rule_step(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
              x: Tensor, target: Tensor, feedback: str, beta: float) -> Weights:
    """W_ℓ ← W_ℓ + Σ_r θ_r F^r_ℓ for one sample per episode (autograd-friendly: used by reverse mode)."""
    ys = forward(Ws, x, beta)
    es = errors(ys, target, Ws, Bs, feedback, beta)
    post = post_activities(ys)
    return [rule.update(theta, rule_env(i, ys, post, es, W)) for i, W in enumerate(Ws)]


@dataclass
class RuleLearner:
    """A compiled rule with fixed coefficients θ as a Learner (benchmarks, evaluation)."""

    rule: CompiledRule
    theta: Tensor
    feedback: str = "fa"
    beta: float = 10.0
    name: str = "rule"

    @property
    def locality(self) -> str:
        """'local' when no term reads an error; else what the feedback pathway needs."""
        if not self.rule.uses_error:
            return "local"
        if self.feedback in ("bp", "sign"):
            return "weight transport"
        return "global error"

    def step(self, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x: Tensor, target: Tensor) -> Weights:
        return rule_step(self.rule, self.theta, Ws, Bs, x, target, self.feedback, self.beta)


def onehot(labels: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(labels, n).to(dtype)


def run_online(learner: Learner, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x_train: Tensor,
               y_train: Tensor) -> Weights:
    """One pass over the (B, S, D) stream, one update per sample."""
    Ws = list(Ws)
    n_out = Ws[-1].shape[1]
    targets = onehot(y_train, n_out, Ws[0].dtype)
    for s in range(x_train.shape[1]):
        Ws = learner.step(Ws, Bs, x_train[:, s], targets[:, s])
    return Ws


def query_logits(Ws: Sequence[Tensor], xq: Tensor, beta: float) -> Tensor:
    """Logits (B, Q, n_L) of the adapted network on the query set xq (B, Q, D)."""
    h = xq
    for i, W in enumerate(Ws):
        z = torch.bmm(h, W.transpose(1, 2))
        h = z if i == len(Ws) - 1 else torch.nn.functional.softplus(z, beta=beta)
    return h


def per_episode_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per episode, averaged over its queries: (B,)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(-1)


def query_loss_accuracy(Ws: Sequence[Tensor], xq: Tensor, yq: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Query cross-entropy and fraction correct per episode of the adapted network: (B,), (B,)."""
    logits = query_logits(Ws, xq, beta)
    return per_episode_ce(logits, yq), (logits.argmax(-1) == yq).to(xq.dtype).mean(-1)


def query_accuracy(Ws: Sequence[Tensor], xq: Tensor, yq: Tensor, beta: float) -> Tensor:
    """Fraction of correct query predictions per episode: (B,)."""
    return (query_logits(Ws, xq, beta).argmax(-1) == yq).to(xq.dtype).mean(-1)


# ------------------------------------------------------------------------------------------ forward mode

def _tangent_forward(Ws: Sequence[Tensor], Wd: Sequence[Tensor], x: Tensor, beta: float):
    """Activities y_ℓ and tangents ẏ_ℓ: ż = Ẇ y + W ẏ, ẏ = sigmoid(βz) ż; output post-activity softmax p, ṗ."""
    ys, yd = [x], [None]
    L = len(Ws)
    for i, (W, D) in enumerate(zip(Ws, Wd)):
        h = ys[-1]
        z = matvec(W, h)
        zd = mm(D, h.unsqueeze(-1)).squeeze(-1)
        if yd[-1] is not None:
            zd = zd + mm(W, yd[-1].unsqueeze(-1)).squeeze(-1)
        if i == L - 1:
            ys.append(z)
            yd.append(zd)
        else:
            ys.append(torch.nn.functional.softplus(z, beta=beta))
            yd.append(torch.sigmoid(beta * z) * zd)
    p = torch.softmax(ys[-1], dim=-1)
    pd = p * (yd[-1] - (p * yd[-1]).sum(-1, keepdim=True))
    return ys, yd, p, pd


def _tangent_errors(ys, yd, p, pd, target, Ws, Wd, Bs, feedback: str, beta: float):
    """e_ℓ = (e_{ℓ+1} B_{ℓ+1}) ⊙ s_ℓ, s_ℓ = 1 − e^{−β y_ℓ}; ė_ℓ = (ė_{ℓ+1}B + [bp] e_{ℓ+1}Ẇ) ⊙ s + (e B) ⊙ ṡ."""
    L = len(Ws)
    es: list[Tensor | None] = [None] * (L + 1)
    ed: list[Tensor | None] = [None] * (L + 1)
    es[L], ed[L] = p - target, pd
    Fb = feedback_matrices(Ws, Bs, feedback)
    for j in range(L - 1, -1, -1):
        if feedback == "dfa":
            if j == 0:
                es[0] = torch.zeros_like(ys[0])
                ed[0] = torch.zeros((pd.shape[0], *ys[0].shape), dtype=pd.dtype, device=pd.device)
                break
            g = vecmat(es[L], Bs[j - 1])
            gd = mm(ed[L].unsqueeze(-2), Bs[j - 1]).squeeze(-2)
        else:
            g = vecmat(es[j + 1], Fb[j])
            gd = mm(ed[j + 1].unsqueeze(-2), Fb[j]).squeeze(-2)
            if feedback == "bp":
                gd = gd + mm(es[j + 1].unsqueeze(-2), Wd[j]).squeeze(-2)
        ex = torch.exp(-beta * ys[j])
        s = 1 - ex
        es[j] = g * s
        ed[j] = gd * s if yd[j] is None else gd * s + g * (beta * ex * yd[j])
    return es, ed


def rule_step_forward(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Wd: Sequence[Tensor],
                      Bs: Sequence[Tensor] | None, x: Tensor, target: Tensor, feedback: str,
                      beta: float) -> tuple[Weights, Weights]:
    """One online step of W and of its R tangents Ẇ = ∂W/∂θ (closed-form product rule), in place."""
    ys, yd, p, pd = _tangent_forward(Ws, Wd, x, beta)
    es, ed = _tangent_errors(ys, yd, p, pd, target, Ws, Wd, Bs, feedback, beta)
    post, post_d = [*ys[:-1], p], [*yd[:-1], pd]
    for i, (W, D) in enumerate(zip(Ws, Wd)):
        env = rule_env(i, ys, post, es, W)
        tan = {"y": post_d[i + 1], "e": ed[i + 1], "e_pre": ed[i], "W": D}
        if yd[i] is not None:
            tan["x"] = yd[i]
        rule.step_forward_(theta, env, tan)
    return list(Ws), list(Wd)


def query_loss_forward(Ws: Sequence[Tensor], Wd: Sequence[Tensor], xq: Tensor, yq: Tensor,
                       beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-episode query CE (B,), its θ-gradient (R, B) = mean_q (softmax − onehot)·ż_L, and accuracy (B,)."""
    h, hd = xq, None
    L = len(Ws)
    for i, (W, D) in enumerate(zip(Ws, Wd)):
        z = torch.bmm(h, W.transpose(1, 2))
        zd = torch.matmul(h.unsqueeze(0), D.transpose(-1, -2))
        if hd is not None:
            zd = zd + mm(hd, W.transpose(1, 2))
        if i < L - 1:
            h = torch.nn.functional.softplus(z, beta=beta)
            hd = torch.sigmoid(beta * z) * zd
        else:
            h, hd = z, zd
    loss = per_episode_ce(h, yq)
    resid = torch.softmax(h, -1) - onehot(yq, h.shape[-1], h.dtype)
    grad = (resid.unsqueeze(0) * hd).sum(-1).mean(-1)
    acc = (h.argmax(-1) == yq).to(h.dtype).mean(-1)
    return loss, grad, acc


def run_online_forward(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                       x_train: Tensor, y_train: Tensor, feedback: str, beta: float) -> tuple[Weights, Weights]:
    """The whole online pass with tangents; Ẇ starts at 0 (W_0 does not depend on θ)."""
    R = len(rule)
    Ws = [W.clone() for W in Ws]
    Wd = [torch.zeros((R, *W.shape), dtype=W.dtype, device=W.device) for W in Ws]
    targets = onehot(y_train, Ws[-1].shape[1], Ws[0].dtype)
    for s in range(x_train.shape[1]):
        Ws, Wd = rule_step_forward(rule, theta, Ws, Wd, Bs, x_train[:, s], targets[:, s], feedback, beta)
    return Ws, Wd
