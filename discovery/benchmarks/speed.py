"""`plasticity bench`: meta-training throughput and peak memory, engine vs a plain re-expression of the original.

(a) the engine: meta.grad_mode 'auto' (forward mode, R tangents in closed form, below 6 terms; the C adjoint
    kernel, one backward pass whatever R, from 6 terms on), meta-batch of episodes, Oja as y (yᵀW), fused
    outer-product updates;
(b) the original algorithm re-expressed plainly: batch 1, meta-batch 1, reverse-mode autograd through the unrolled
    loop, Oja evaluated as (y yᵀ) W, Adam.
Both on 784-170-130-100-70-47 with F0 + F2 + F9 and synthetic images; each configuration runs in a fresh
subprocess so its peak memory (ru_maxrss, or CUDA max allocated) is its own. The engine also runs the open pools
(bio10, the 16-term library, the 43-term gated library): every row carries its ``pool``, ``s_per_episode`` and
``speedup_vs_reference`` (against the original's three-term episode), and ``grad_path`` (forward, reverse-fused or
reverse-torch). Each open pool is also timed in forward mode (kind ``engine-forward``) so the adjoint's gain shows
beside it.

Each engine row is the median of ``--runs`` (3) runs, and every run of a row comes right after a run of the original
three-term reference episode, so a slow spell of the machine hits both alike: ``runs`` holds the row's raw
s/episode, ``reference_runs`` the paired reference runs, ``speedup_vs_reference`` the median of the paired ratios.
``--device cuda`` runs the engine's torch kernel on CUDA (the fused kernel is CPU-only); where no CUDA device exists
it says so in one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time

import torch

WIDTHS = [784, 170, 130, 100, 70, 47]
WAYS = 5


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic_episode(shots: int, queries: int, gen: torch.Generator, device, dtype, batch: int = 1):
    n = WAYS * shots
    x = torch.rand(batch, n, WIDTHS[0], generator=gen).to(device, dtype)
    y = torch.randint(0, WAYS, (batch, n), generator=gen).to(device)
    xq = torch.rand(batch, WAYS * queries, WIDTHS[0], generator=gen).to(device, dtype)
    yq = torch.randint(0, WAYS, (batch, WAYS * queries), generator=gen).to(device)
    return x, y, xq, yq


def reference_episode(theta: torch.nn.Parameter, opt: torch.optim.Optimizer, shots: int, gen, device) -> None:
    """One meta-step of the original: ΔW = −θ0 e xᵀ − θ1 e e_preᵀ + θ2 (y xᵀ − (y yᵀ) W), reverse mode."""
    from discovery.feedforward.network import uniform, xavier_range

    beta = 10.0
    x, y, xq, yq = _synthetic_episode(shots, 10, gen, device, torch.float32)
    Ws = [uniform((o, i), xavier_range(i, o), gen, device, torch.float32) for i, o in itertools.pairwise(WIDTHS)]
    Bs = [uniform((o, i), xavier_range(i, o), gen, device, torch.float32) for i, o in itertools.pairwise(WIDTHS)]
    L = len(Ws)
    for s in range(x.shape[1]):
        acts = [x[0, s:s + 1]]
        for i, W in enumerate(Ws):
            z = acts[-1] @ W.T
            acts.append(z if i == L - 1 else torch.nn.functional.softplus(z, beta=beta))
        p = torch.softmax(acts[-1], -1)
        es = [p - torch.nn.functional.one_hot(y[0, s:s + 1], WIDTHS[-1]).float()]
        for i in range(L - 1, -1, -1):
            es.insert(0, (es[0] @ Bs[i]) * (1 - torch.exp(-beta * acts[i])))
        post = [*acts[:-1], p]
        new = []
        for i, W in enumerate(Ws):
            xp, yp, e, ep = post[i].T, post[i + 1].T, es[i + 1].T, es[i].T
            dW = -theta[0] * e @ xp.T - theta[1] * e @ ep.T + theta[2] * (yp @ xp.T - (yp @ yp.T) @ W)
            new.append(W + dW)
        Ws = new
    h = xq[0]
    for i, W in enumerate(Ws):
        h = h @ W.T if i == L - 1 else torch.nn.functional.softplus(h @ W.T, beta=beta)
    loss = torch.nn.functional.cross_entropy(h, yq[0])
    opt.zero_grad()
    loss.backward()
    opt.step()


def engine_trainer(shots: int, meta_batch: int, device: torch.device, kernel: str = "auto", pool: str = "paper3",
                   grad_mode: str = "auto"):
    """A MetaTrainer on synthetic data (the engine's own data path) over the pool's terms (paper3: F0 + F2 + F9);
    forward mode carries R tangents (cost ∝ 1 + R), reverse mode one backward pass (cost ∝ const; the C adjoint
    kernel keeps W every ⌈√T⌉ steps, so its memory grows as √T)."""
    from discovery.feedforward.trainer import MetaTrainer
    from discovery.spec import DiscoverySpec

    spec = DiscoverySpec.model_validate({
        "network": {"widths": WIDTHS, "feedback": "fa"},
        "task": {"dataset": "synthetic", "ways": WAYS, "shots": shots, "queries": 10},
        "rule": {"pool": pool},
        "meta": {"episodes": 100_000, "meta_batch": meta_batch, "eval_episodes": 0, "lr": 3e-4,
                 "kernel": kernel, "grad_mode": grad_mode},
        "resources": {"device": device.type},
    })
    return MetaTrainer(spec, device)


def _measure(kind: str, shots: int, meta_batch: int, steps: int, device_name: str, queue,
             threads: int | None = None, pool: str = "paper3") -> None:
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if kind.startswith("engine"):
        grad_mode = {"engine-reverse": "reverse", "engine-forward": "forward"}.get(kind, "auto")
        trainer = engine_trainer(shots, meta_batch, device, "torch" if kind == "engine-torch" else "auto", pool,
                                 grad_mode)
        trainer.step()  # warm-up
        run = trainer.step
    else:
        theta = torch.nn.Parameter(torch.tensor([1e-3, 0.0, 0.0], device=device))
        opt = torch.optim.Adam([theta], lr=3e-4)
        reference_episode(theta, opt, shots, gen, device)

        def run() -> None:
            reference_episode(theta, opt, shots, gen, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []                                      # each meta-step timed alone; the median resists the
    for _ in range(steps):                          # machine's noise (other tenants, frequency changes)
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    per_step = meta_batch if kind.startswith("engine") else 1
    kernel, path = "-", "reverse-torch"
    if kind.startswith("engine"):
        from discovery.feedforward.kernels import fused
        kernel = f"fused {fused.backend_name()}" if trainer.use_fused else "torch"
        path = trainer.gradient_path
    queue.put({"kind": kind, "pool": pool, "n_terms": len(trainer.term_ids) if kind.startswith("engine") else 3,
               "kernel": kernel, "grad_path": path, "threads": torch.get_num_threads(), "shots": shots, "inner_steps": WAYS * shots, "meta_batch": meta_batch,
               "episodes_per_step": per_step, "step_times": times, "peak_mb": _peak_mb(device)})


def measure(kind: str, shots: int, meta_batch: int, steps: int, device: str, threads: int | None = None,
            pool: str = "paper3") -> dict:
    """Run one configuration in a fresh process (spawn) and return its figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, shots, meta_batch, steps, device, queue, threads, pool))
    proc.start()
    try:
        out = queue.get(timeout=1800)
    except Exception as exc:  # the child crashed or hung: report, do not hang
        proc.kill()
        raise RuntimeError(f"benchmark configuration {kind} (shots={shots}) failed; exit code {proc.exitcode}") from exc
    proc.join()
    return out


def cuda_problem(device: str) -> str | None:
    """Why `device` cannot run here (a one-line message), or None when it can."""
    if not device.startswith("cuda"):
        return None
    if torch.cuda.is_available():
        return None
    build = f"torch {torch.__version__}, " + ("built with CUDA " + torch.version.cuda if torch.version.cuda
                                             else "a CPU-only build")
    return f"plasticity bench: --device {device} asked for, but no CUDA device is available here ({build})"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="meta-steps timed per run of a configuration (median)")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs per configuration, each in its own process right after a run of the original "
                         "three-term reference episode (paired; the row reports the median of the runs)")
    ap.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)   # the former name of --runs
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--pools", nargs="*", default=["bio10", "library", "library_gated"],
                    help="open pools timed beside the three-term rule")
    ap.add_argument("--reverse-pools", nargs="*", default=[],
                    help="pools also timed with meta.grad_mode 'reverse' (the C adjoint kernel where the rule runs "
                         "fused, else torch autograd, which is slow; off by default: 'auto' already takes the adjoint "
                         "kernel from 6 terms on)")
    args = ap.parse_args(argv)
    problem = cuda_problem(args.device)
    if problem:
        print(problem, file=sys.stderr, flush=True)
        raise SystemExit(2)
    runs = max(1, args.rounds if args.rounds is not None else args.runs)
    print(f"device={args.device}  torch={torch.__version__}  threads={torch.get_num_threads()}  "
          f"net={'-'.join(map(str, WIDTHS))}  rule=F0+F2+F9  runs={runs} (each paired with a reference run)",
          flush=True)
    ref_steps = max(2, min(args.steps, 3))
    # the original on the default thread count and, on a multi-core CPU, on one thread (batch-1 ops may run faster
    # there): one calibration run each, the faster setting is the reference every row is paired with
    ref_threads: int | None = None
    calib = [measure("reference", 50, 1, ref_steps, args.device, None, "paper3")]
    if args.device == "cpu" and torch.get_num_threads() > 1:
        calib.append(measure("reference", 50, 1, ref_steps, args.device, 1, "paper3"))
        if statistics.median(calib[1]["step_times"]) < statistics.median(calib[0]["step_times"]):
            ref_threads = 1
    configs = [("engine", 50, args.meta_batch, args.steps, None, "paper3"),
               ("engine", 200, args.meta_batch, max(1, args.steps // 2), None, "paper3"),
               ("engine-torch", 50, args.meta_batch, args.steps, None, "paper3")]
    configs += [("engine", 50, args.meta_batch, max(2, args.steps // 2), None, pool) for pool in args.pools]
    configs += [("engine-forward", 50, args.meta_batch, 2, None, pool) for pool in args.pools]
    configs += [("engine-reverse", 50, args.meta_batch, 2, None, pool) for pool in args.reverse_pools]
    for c in calib:
        c["runs"] = [statistics.median(c["step_times"])]
    rows: list[dict] = list(calib)
    refs: list[list[float]] = [[] for _ in configs]
    for k in range(runs):                            # each row's run right after a reference run: a slow spell
        for i, (kind, shots, mb, steps, threads, pool) in enumerate(configs):    # of the machine hits both alike
            ref = measure("reference", 50, 1, ref_steps, args.device, ref_threads, "paper3")
            r = measure(kind, shots, mb, steps, args.device, threads, pool)
            refs[i].append(statistics.median(ref["step_times"]))
            r["runs"] = [statistics.median(r["step_times"]) / r["episodes_per_step"]]
            print(f"  run {k + 1}/{runs}: {kind} {pool} ({shots * WAYS} inner steps) {r['runs'][0]:.3f} s/episode, "
                  f"reference {refs[i][-1]:.3f}", flush=True)
            if len(rows) < len(calib) + len(configs):
                rows.append(r)
            else:
                row = rows[len(calib) + i]
                row["step_times"] += r["step_times"]
                row["runs"] += r["runs"]
                row["peak_mb"] = max(row["peak_mb"], r["peak_mb"])
    n_refs = len(calib)
    all_refs = [t for rr in refs for t in rr]
    ref_s = statistics.median(all_refs)
    for i, r in enumerate(rows):
        r["s_per_episode"] = statistics.median(r["runs"])
        r["episodes_per_s"] = 1 / r["s_per_episode"]
        if i < n_refs:
            r["speedup_vs_reference"] = ref_s / r["s_per_episode"]
        else:                                        # the median of the paired ratios
            pair = refs[i - n_refs]
            r["reference_runs"] = pair
            r["speedup_vs_reference"] = statistics.median(a / b for a, b in zip(pair, r["runs"], strict=True))
    eng, eng1000, eng_torch = rows[n_refs:n_refs + 3]
    print(f"{'configuration':<60}{'pool':>14}{'inner steps':>12}{'s/episode':>11}{'peak MB':>10}{'vs (b)':>8}"
          f"   runs (s/episode) | paired reference runs")
    mode = {"forward": "forward mode", "reverse-fused": "adjoint (reverse)", "reverse-torch": "autograd"}
    for r in rows:
        name = (f"(b) original: reverse mode, batch 1, (yyᵀ)W, {r['threads']} thread(s)" if r["kind"] == "reference"
                else f"(a) engine, {r['kernel']}: {mode[r['grad_path']]}, meta-batch {r['meta_batch']}")
        runs_txt = " ".join(f"{t:.3f}" for t in r["runs"])
        pair_txt = " ".join(f"{t:.3f}" for t in r.get("reference_runs", []))
        print(f"{name:<60}{r['pool']:>14}{r['inner_steps']:>12}{r['s_per_episode']:>11.3f}"
              f"{r['peak_mb']:>10.0f}"
              + (f"{r['speedup_vs_reference']:>7.1f}x" if r["inner_steps"] == 250 else f"{'–':>8}")   # same length only
              + f"   {runs_txt}"
              + (f" | {pair_txt}" if pair_txt else ""))
    ratio = eng["speedup_vs_reference"]
    mem_ratio = eng1000["peak_mb"] / eng["peak_mb"]
    print(f"reference (the original, {ref_threads or torch.get_num_threads()} thread(s)): median {ref_s:.3f} s/episode "
          f"over {len(all_refs)} runs")
    print(f"speed-up a/b at 250 inner steps: {ratio:.1f}x (median of {runs} paired runs; target >= 20x; "
          f"{eng['kernel']} kernel); torch kernel {eng_torch['speedup_vs_reference']:.1f}x")
    print(f"engine peak memory 1,000 vs 250 inner steps: {eng1000['peak_mb']:.0f} MB vs {eng['peak_mb']:.0f} MB "
          f"(ratio {mem_ratio:.2f}; flat = 1)")
    fwd = {r["pool"]: r for r in rows[n_refs + 3:] if r["kind"] == "engine-forward"}
    for r in rows[n_refs + 3:]:
        if r["kind"] == "engine-forward":
            continue
        beside = fwd.get(r["pool"]) if r["kind"] == "engine" else None
        print(f"pool {r['pool']} (R={r['n_terms']}): {r['s_per_episode']:.3f} s/episode, "
              f"{r['speedup_vs_reference']:.1f}x the original's three-term episode ({r['kernel']}, {r['grad_path']})"
              + (f"; forward mode {beside['s_per_episode']:.3f} s/episode, {beside['speedup_vs_reference']:.1f}x"
                 if beside else ""))
    out = {"rows": rows, "speedup": ratio, "memory_ratio_1000_vs_250": mem_ratio, "device": args.device,
           "runs": runs, "reference_s_per_episode": ref_s, "reference_threads": ref_threads or torch.get_num_threads()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
