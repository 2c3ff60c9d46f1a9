"""The engine against the math: compiled terms vs hand-written torch, bp mode vs autograd, forward- vs
reverse-mode meta-gradients, divergence guard, seeds, checkpoint/resume."""

from __future__ import annotations

import pytest
import torch

from discovery.feedforward.inner import rule_step, run_online_forward
from discovery.feedforward.network import init_feedback, init_weights
from discovery.feedforward.trainer import MetaTrainer
from discovery.router import discover
from discovery.spec import DiscoverySpec
from rules.compiler import compile_expression, compile_terms, reference_function
from rules.terms import TERMS, term

D = torch.float64


def _env(B=3, n=5, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return {"x": r(B, m), "y": r(B, n), "e": r(B, n), "e_pre": r(B, m), "W": r(B, n, m)}


def _col(v):
    return v.unsqueeze(-1)


def _hand(tid: str, env: dict) -> torch.Tensor:
    """Hand-written references of the F0..F9 / hebb table (column-vector form)."""
    x, y, e, ep, W = (_col(env["x"]), _col(env["y"]), _col(env["e"]), _col(env["e_pre"]), env["W"])
    one = torch.ones_like(y)
    T = lambda a: a.transpose(-1, -2)
    s = lambda a: a.reshape(-1, 1, 1)
    table = {
        "F0": -e @ T(x),
        "F1": -y @ T(ep),
        "F2": -e @ T(ep),
        "F3": -W,
        "F4": -one @ T(ep),
        "F5": -s(T(one) @ y) * (e @ T(x)),
        "F6": -s(T(y) @ W @ ep) * (y @ T(ep)),
        "F7": -s(T(y) @ W @ ep) * (e @ T(x)),
        "F8": -s(T(x) @ T(W) @ e) * (y @ T(ep)),
        "F9": y @ T(x) - (y @ T(y)) @ W,
        "hebb": y @ T(x),
    }
    return table[tid]


@pytest.mark.parametrize("tid", sorted(t for t in TERMS if not t.startswith("T")))   # the named terms
def test_compiled_term_equals_hand_written(tid):
    env = _env()
    got = reference_function(term(tid).expr)(env)
    torch.testing.assert_close(got, _hand(tid, env), rtol=1e-12, atol=1e-12)


def _tiny(feedback="fa", widths=(6, 5, 4, 3), B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(widths, B, g, 1.0, "cpu", torch.float64)
    Bs = init_feedback(widths, feedback, B, g, "cpu", torch.float64)
    x = torch.rand(B, 7, widths[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, widths[-1], (B, 7), generator=g)
    xq = torch.rand(B, 4, widths[0], generator=g, dtype=torch.float64)
    yq = torch.randint(0, widths[-1], (B, 4), generator=g)
    return Ws, Bs, x, y, xq, yq


def test_bp_mode_update_equals_autograd():
    """θ0·F0 with B = W is exactly one SGD step on the per-sample cross-entropy: ΔW = −θ0 ∂ℓ/∂W."""
    Ws, _, x, y, _, _ = _tiny("bp")
    rule = compile_terms([term("F0").expr])
    theta = torch.tensor([0.1], dtype=D)
    target = torch.nn.functional.one_hot(y[:, 0], 3).double()
    new = rule_step(rule, theta, Ws, None, x[:, 0], target, "bp", 10.0)
    leaves = [w.clone().requires_grad_(True) for w in Ws]
    h = x[:, 0]
    for i, W in enumerate(leaves):
        z = torch.bmm(W, h.unsqueeze(-1)).squeeze(-1)
        h = z if i == len(leaves) - 1 else torch.nn.functional.softplus(z, beta=10.0)
    loss = torch.nn.functional.cross_entropy(h, y[:, 0], reduction="sum")
    grads = torch.autograd.grad(loss, leaves)
    for W, Wn, g in zip(Ws, new, grads):
        torch.testing.assert_close(Wn - W, -0.1 * g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("feedback", ["bp", "fa", "dfa", "sign"])
@pytest.mark.parametrize("pool", [["F0", "F2", "F9"], ["F0", "F1", "F3", "F5", "F6", "F7", "F8", "F4"]])
def test_forward_mode_equals_reverse_mode(feedback, pool):
    Ws, Bs, x, y, xq, yq = _tiny(feedback)
    rule = compile_terms([term(t).expr for t in pool])
    theta0 = torch.tensor([0.05, -0.03, 0.02, 0.01, -0.01, 0.004, 0.003, 0.002][: len(pool)], dtype=D)
    # forward mode
    from discovery.feedforward.inner import query_loss_forward
    Wf, Wd = run_online_forward(rule, theta0, Ws, Bs, x, y, feedback, 10.0)
    loss_f, grad_f, _ = query_loss_forward(Wf, Wd, xq, yq, 10.0)
    # reverse mode
    theta = theta0.clone().requires_grad_(True)
    Wt = list(Ws)
    targets = torch.nn.functional.one_hot(y, 3).double()
    for s in range(x.shape[1]):
        Wt = rule_step(rule, theta, Wt, Bs, x[:, s], targets[:, s], feedback, 10.0)
    from discovery.feedforward.inner import per_episode_ce, query_logits
    loss_r = per_episode_ce(query_logits(Wt, xq, 10.0), yq)
    grad_r = torch.stack([torch.autograd.grad(loss_r[b], theta, retain_graph=True)[0] for b in range(2)], 1)
    torch.testing.assert_close(loss_f, loss_r.detach(), rtol=1e-10, atol=1e-12)
    rel = (grad_f - grad_r).norm() / grad_r.norm()
    assert rel < 1e-4, f"relative error {rel:.2e}"


def test_whole_expression_compiles_and_fuses():
    """A rule written as one expression equals the sum of its terms' updates."""
    from rules.rule import Rule

    rule = Rule.parse("-0.012*e*x.T + 0.065*e*e_pre.T + 0.008*(y*x.T - y*(y.T*W))")
    env = _env()
    got = compile_expression(rule.expression).delta(torch.ones(1, dtype=D), env)
    want = 0.012 * _hand("F0", env) - 0.065 * _hand("F2", env) + 0.008 * _hand("F9", env)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _spec(**meta) -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [784, 32, 16, 5], "feedback": "fa"},
        "task": {"dataset": "synthetic", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"pool": "paper3"},
        "meta": {"episodes": 4, "meta_batch": 2, "eval_episodes": 6, "lr": 1e-2, **meta},
    })


def test_same_seed_same_theta_trajectory():
    a = discover(_spec(seed=3))
    b = discover(_spec(seed=3))
    c = discover(_spec(seed=4))
    assert a.theta_history == b.theta_history
    assert a.theta_history != c.theta_history


def test_checkpoint_resume_matches_straight_run(tmp_path):
    straight = discover(_spec(seed=1, checkpoint_every=1))
    stop_after = {"n": 0}

    def should_stop() -> bool:
        stop_after["n"] += 1
        return stop_after["n"] > 2

    partial = discover(_spec(seed=1, checkpoint_every=1), checkpoint_dir=tmp_path, should_stop=should_stop)
    assert partial.stopped and len(partial.history) == 2
    assert partial.resumed_from_episode is None and straight.resumed_from_episode is None
    resumed = discover(_spec(seed=1, checkpoint_every=1), checkpoint_dir=tmp_path)
    assert resumed.theta_history == straight.theta_history
    assert resumed.resumed_from_episode == 2


def test_short_run_moves_theta0_up():
    """On a learnable task the pseudo-gradient coefficient grows from its small start (learning helps)."""
    spec = _spec(episodes=8, lr=5e-3, eval_episodes=0)
    res = discover(spec)
    assert res.theta["F0"] > 1e-3 + 0.01


def test_absurd_learning_rate_records_divergence():
    spec = DiscoverySpec.model_validate({
        "network": {"widths": [784, 32, 16, 5], "feedback": "fa"},
        "task": {"dataset": "synthetic", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"pool": "paper3", "theta_init": {"F0": 1e4, "F9": 1e4}},
        "meta": {"episodes": 3, "meta_batch": 2, "eval_episodes": 2, "lr": 10.0},
    })
    res = discover(spec)
    assert res.diverged_episodes > 0
    assert res.skipped_steps > 0
    assert all(abs(v) < float("inf") for v in res.theta.values())


def test_trainer_rejects_mismatched_input_width():
    spec = DiscoverySpec.model_validate({"network": {"widths": [10, 5]}, "task": {"dataset": "digits"},
                                         "meta": {"episodes": 1}})
    with pytest.raises(ValueError, match="input width"):
        MetaTrainer(spec)


def test_backtracking_leaves_a_region_where_every_episode_diverges():
    """lr = 10 throws θ where every episode diverges; after 2 skipped steps θ returns to the last finite θ with
    Adam cleared and lr halved, so the run keeps learning instead of stalling for good."""
    spec = DiscoverySpec.model_validate({
        "network": {"widths": [784, 32, 16, 5], "feedback": "fa"},
        "task": {"dataset": "synthetic", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"pool": "paper3", "theta_init": {"F0": 1e-3}},
        "meta": {"episodes": 9, "meta_batch": 2, "eval_episodes": 0, "lr": 10.0, "backtrack_after": 2},
    })
    res = discover(spec)
    events = res.history
    back = [i for i, h in enumerate(events) if h.backtracked]
    assert back, "no backtrack happened"
    i = back[0]
    assert events[i - 1].skipped and events[i].skipped
    good = max(j for j in range(i) if not events[j].skipped)       # the last step with finite episodes
    used = events[good - 1].theta if good > 0 else spec.rule.initial_theta()   # the θ that step ran with
    assert events[i].theta == pytest.approx({k: float(v) for k, v in used.items()}, abs=1e-7)
    assert events[i].lr == pytest.approx(events[i - 1].lr / 2)
    assert all(abs(v) < float("inf") for v in res.theta.values())


def test_cosine_schedule_decays_lr_and_resumes_on_the_same_curve(tmp_path):
    """meta.lr_schedule 'cosine': η_t = η (f + (1 − f)(1 + cos(π t/T))/2) at each step, so the first step runs at η
    and the last near η·f; a run stopped and resumed from its checkpoint follows the same θ trajectory."""
    import math

    spec = _spec(seed=1, episodes=6, checkpoint_every=1, lr_schedule="cosine", lr_final=0.1, eval_episodes=0)
    straight = discover(spec)
    lrs = [h.lr for h in straight.history]
    want = [1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 6))) for t in range(6)]
    assert lrs == pytest.approx(want, rel=1e-12)
    stop_after = {"n": 0}

    def should_stop() -> bool:
        stop_after["n"] += 1
        return stop_after["n"] > 3

    discover(spec, checkpoint_dir=tmp_path, should_stop=should_stop)
    resumed = discover(spec, checkpoint_dir=tmp_path)
    assert resumed.theta_history == straight.theta_history
    constant = discover(_spec(seed=1, episodes=6, eval_episodes=0))
    assert [h.lr for h in constant.history] == [1e-2] * 6
    assert constant.theta_history != straight.theta_history


def test_cliff_guard_returns_to_the_lowest_loss_theta_with_half_the_lr():
    """meta.rollback ρ (window 1): the first step whose loss exceeds (1 + ρ)·min loss is marked backtracked, θ is
    the θ the lowest-loss step ran with and lr is halved; the run goes on from there. A guard that never fires
    (ρ huge) leaves the trajectory step for step as without it."""
    spec = _spec(seed=2, episodes=20, eval_episodes=0, lr=0.2, keep_window=1, rollback=0.05)
    res = discover(spec)
    back = [i for i, h in enumerate(res.history) if h.backtracked]
    assert back, "no cliff was caught"
    i = back[0]
    losses = [h.meta_loss for h in res.history[:i + 1]]
    assert losses[i] > 1.05 * min(losses)
    j = min(range(i), key=losses.__getitem__)
    ran_with = res.history[j - 1].theta if j > 0 else spec.rule.initial_theta()
    assert res.history[i].theta == pytest.approx({k: float(v) for k, v in ran_with.items()}, rel=1e-6)
    assert res.history[i].lr == pytest.approx(res.history[i - 1].lr / 2)
    upto = discover(spec.model_copy(update={"meta": spec.meta.model_copy(update={"episodes": i + 1})}))
    assert upto.theta == pytest.approx(res.history[i].theta, rel=1e-6)
    off = discover(spec.model_copy(update={"meta": spec.meta.model_copy(update={"rollback": 0.0})}))
    never = discover(spec.model_copy(update={"meta": spec.meta.model_copy(update={"rollback": 10.0, "lr": 0.05})}))
    base = discover(spec.model_copy(update={"meta": spec.meta.model_copy(update={"rollback": 0.0, "lr": 0.05})}))
    assert not any(h.backtracked for h in off.history + never.history)
    assert never.theta_history == base.theta_history


def test_keep_best_returns_the_theta_of_the_lowest_loss_average(tmp_path):
    """meta.keep 'best' with window 1: the returned θ is the one whose meta-step had the lowest meta-train loss
    (the θ that step ran with), not θ after the last step; with 'last' the run ends where Adam left it. A run
    stopped and resumed from its checkpoint keeps the same θ."""
    spec = _spec(seed=2, episodes=6, eval_episodes=0, lr=0.05, keep="best", keep_window=1, checkpoint_every=1)
    res = discover(spec)
    losses = [h.meta_loss for h in res.history]
    i = min(range(len(losses)), key=losses.__getitem__)
    ran_with = res.history[i - 1].theta if i > 0 else spec.rule.initial_theta()
    assert res.theta == pytest.approx({k: float(v) for k, v in ran_with.items()}, rel=1e-6)
    last = discover(spec.model_copy(update={"meta": spec.meta.model_copy(update={"keep": "last"})}))
    assert last.theta == pytest.approx(res.history[-1].theta, rel=1e-6)
    stop_after = {"n": 0}

    def should_stop() -> bool:
        stop_after["n"] += 1
        return stop_after["n"] > 3

    discover(spec, checkpoint_dir=tmp_path, should_stop=should_stop)
    assert discover(spec, checkpoint_dir=tmp_path).theta == res.theta
