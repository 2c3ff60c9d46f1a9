"""Fused CPU inner loop: the forward-mode online pass of discovery.feedforward.inner in one compiled kernel per run.

Same mathematics as `run_online_forward` (W_ℓ ← W_ℓ + Σ_r θ_r F^r_ℓ and Ẇ_ℓ ← Ẇ_ℓ + d(ΔW_ℓ)/dθ in closed form), but
each step touches every weight once: W_ℓ is stored transposed (row j = input unit j, padded to 16 floats), so one
sweep over the rows

    v_j = (aᵀW)_j (Oja's yᵀW),  W_{:,j} ← s W_{:,j} + Σ_u u a_{u,j},  a_u = Σ_s c_{u,s} v_s,  z_{t+1} += W_{:,j} x_{t+1,j}

updates column j of W and of its R tangents and accumulates the next sample's forward pass while the row sits in
L1 (the batched torch loop streams every weight four times). The kernel is C (`fused_kernel.c`, built by
`discovery.feedforward.kernels.ckernel`, one episode per thread); the same kernel in numba
(`discovery.feedforward.kernels.numba_kernel`) runs where no C compiler works.

A rule is fusable when every atom is G · u vᵀ with u ∈ {y, e, 1}, v ∈ {x, e_pre, 1_pre, Wᵀy, Wᵀe, Wᵀ1} and G a
product of at most two 1×1 gates (aᵀb of two post or two pre vectors, or aᵀW b), plus decay (F3): every term of
bio10 and of the generated library (rules.library). The feedback must be fa, dfa or bp (bp reads W_{ℓ+1} and Ẇ_{ℓ+1}
in the error pass, before the sweep updates them). Gated rules run in the C kernel only; otherwise (sign feedback,
CUDA, other shapes) the caller uses the batched torch loop.

`meta_gradient_reverse_fused` is the reverse-mode alternative (`adjoint_kernel.c`, C only): one primal pass with W
checkpointed every ⌈√T⌉ steps, the query loss's gradient, and one backward pass whose cost does not grow with R
(docs/kernels.md). `meta_gradient_reverse_fused_layered` is the same kernel with θ per layer (L × R in, ∂/∂θ per layer
out) and `run_online_fused_layered` its primal pass alone (docs/kernels.md, "Per-layer θ").
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from discovery.feedforward.kernels import ckernel
from discovery.feedforward.kernels.numba_kernel import N_SLOTS, numba, run_numba
from rules.compiler import CompiledRule
from rules.primitives import DIMS

U_CODES = {"y": 0, "e": 1, "one": 2}
#: v slots: 0 x, 1 e_pre, 2 one, 3 Wᵀy, 4 Wᵀe, 5 Wᵀ1 (slot 3 + u-code of a)
V_DIRECT = {"x": 0, "e_pre": 1, "one_pre": 2}
FEEDBACK_CODES = {"fa": 0, "dfa": 1, "bp": 2}
_KERNEL_LOCK = threading.Lock()   # numba's default 'workqueue' threading layer must not be entered concurrently


POST_CODES = {"y": 0, "e": 1, "one": 2}
PRE_CODES = {"x": 0, "e_pre": 1, "one_pre": 2}
MAX_GATES_PER_ATOM = 2


@dataclass(frozen=True)
class FusedPlan:
    """ΔW = Σ_t θ_t (Σ_{u,s} C[t,u,s] G u v_sᵀ + d_t W): the rule as a coefficient table and, for scalar-gated
    rules, the atom list (t, u, s, gate 1, gate 2; κ) and the gates (kind 0 post aᵀb, 1 pre aᵀb, 2 aᵀW b; a, b)."""

    coef: np.ndarray    # (R, 3, 6): κ summed per (t, u, s) (the whole rule when ungated; the structure otherwise)
    decay: np.ndarray   # (R,)
    atoms: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int32))
    atom_coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))

    @property
    def gated(self) -> bool:
        return len(self.gates) > 0


def _segments(chain: Sequence[tuple[str, bool]]) -> list[list[tuple[str, bool]]]:
    """Cut a 1×m chain of factors wherever the inner dimension is 1: 1×1 gates, then the final 1×m piece."""
    out, cur = [], []
    for f in chain:
        cur.append(f)
        rows, cols = DIMS[f[0]]
        if (rows if f[1] else cols) == "1":
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _gate(seg: Sequence[tuple[str, bool]]) -> tuple[int, int, int] | None:
    """(kind, a, b) of a 1×1 gate: aᵀb of two post vectors (0) or two pre vectors (1), or aᵀW b (2)."""
    if len(seg) == 2 and seg[0][1] and not seg[1][1]:
        (a, _), (b, _) = seg
        for kind, codes in ((0, POST_CODES), (1, PRE_CODES)):
            if a in codes and b in codes:
                return (kind, *sorted((codes[a], codes[b])))
    if len(seg) == 3 and seg[1][0] == "W":
        (a, ta), (_, tw), (b, tb) = seg
        if ta and not tw and not tb and a in POST_CODES and b in PRE_CODES:
            return (2, POST_CODES[a], PRE_CODES[b])
        if ta and tw and not tb and a in PRE_CODES and b in POST_CODES:
            return (2, POST_CODES[b], PRE_CODES[a])
    return None


def _slot(seg: Sequence[tuple[str, bool]]) -> int | None:
    """The v slot of the final 1×m piece: x, e_pre, 1_pre (0–2) or aᵀW (3 + a)."""
    if len(seg) == 1 and seg[0][1] and seg[0][0] in V_DIRECT:
        return V_DIRECT[seg[0][0]]
    if len(seg) == 2 and seg[0][1] and seg[0][0] in U_CODES and seg[1] == ("W", False):
        return 3 + U_CODES[seg[0][0]]
    return None


def plan(rule: CompiledRule) -> FusedPlan | None:
    """The coefficient table (and gated atoms) of a fusable rule, or None when some atom has another shape."""
    R = len(rule)
    coef = np.zeros((R, 3, N_SLOTS))
    atoms, kappas, gates = [], [], []
    for t, term in enumerate(rule.terms):
        for a in term.atoms:
            if len(a.prefix) != 1 or a.prefix[0][1] or a.prefix[0][0] not in U_CODES:
                return None
            segs = _segments(a.suffix)
            slot = _slot(segs[-1]) if segs else None
            found = [_gate(g) for g in segs[:-1]]
            if slot is None or None in found or len(found) > MAX_GATES_PER_ATOM:
                return None
            u = U_CODES[a.prefix[0][0]]
            coef[t, u, slot] += a.coef
            ids = []
            for g in found:
                if g not in gates:
                    gates.append(g)
                ids.append(gates.index(g))
            ids += [-1] * (MAX_GATES_PER_ATOM - len(ids))
            atoms.append([t, u, slot, *ids])
            kappas.append(a.coef)
    decay = np.array(rule.decays, dtype=np.float64)
    if not gates:
        return FusedPlan(coef, decay)
    return FusedPlan(coef, decay, np.array(atoms, dtype=np.int32).reshape(-1, 5),
                     np.array(kappas, dtype=np.float64), np.array(gates, dtype=np.int32).reshape(-1, 3))


def available() -> bool:
    """Whether some fused kernel can run here: the C one (a compiler is present) or the numba one."""
    return numba is not None or ckernel.load(np.float64) is not None


def backend_name() -> str:
    """Which fused kernel runs here: 'C' or 'numba'."""
    return "C" if ckernel.load(np.float32) is not None else "numba"


def fusable(rule: CompiledRule, feedback: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused loop can run this rule: CPU, fa/dfa/bp feedback, supported atoms, a kernel present."""
    if not (available() and device.type == "cpu" and feedback in FEEDBACK_CODES
            and dtype in (torch.float32, torch.float64)):
        return False
    p = plan(rule)
    return p is not None and (not p.gated or ckernel.load(np.float64) is not None)   # gates: the C kernel only


# --------------------------------------------------------------------------------------------- torch wrapper

PAD = 16   # per-layer vectors and weight rows are zero-padded to a multiple of 16 floats: every loop is whole SIMD


def _padded(n: int) -> int:
    return -(-n // PAD) * PAD


HUGE_MIN_BYTES = 4 << 20   # work arrays from this size are asked for transparent huge pages


def _zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """np.zeros(shape, dtype); a large one in anonymous memory advised for transparent huge pages (2 MiB): the
    R tangent rows the kernel sweeps side by side then cost a fraction of the TLB misses and page faults."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < HUGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE") or os.environ.get("PLASTICITY_HUGE") == "0":
        return np.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes)                    # anonymous memory is zero-filled
    buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _pack_transposed(mats: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (…, n, m) matrices as transposed (m × n̄) blocks, n̄ = n padded with zeros, in one flat trailing
    dim; block offsets."""
    blocks = [torch.nn.functional.pad(m.transpose(-1, -2), (0, _padded(m.shape[-2]) - m.shape[-2]))
              .reshape(*m.shape[:-2], -1) for m in mats]
    offs = np.cumsum([0] + [b.shape[-1] for b in blocks[:-1]]).astype(np.int64)
    return torch.cat(blocks, dim=-1).contiguous().numpy(), offs


def _pack_rowmajor(mats: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    blocks = [m.reshape(m.shape[0], -1) for m in mats]
    offs = np.cumsum([0] + [b.shape[-1] for b in blocks[:-1]]).astype(np.int64)
    return torch.cat(blocks, dim=-1).contiguous().numpy(), offs


def _coefficients(p: FusedPlan, theta: np.ndarray, R: int) -> tuple[np.ndarray, ...]:
    """c_{u,s} = Σ_t θ_t C[t,u,s], C_r (tangent r's own table), d_r, s = 1 + Σ_t θ_t d_t, the active slots and
    u-vectors, and the (u, s) pairs some term uses, in θ's precision (shared by the C and the numba kernel)."""
    dt = theta.dtype
    c = np.einsum("t,tus->us", theta.astype(np.float64), p.coef).astype(dt)
    Cr = np.ascontiguousarray(p.coef[:R], dtype=dt) if R else np.zeros((1, 3, N_SLOTS), dtype=dt)
    dr = np.ascontiguousarray(p.decay[:R], dtype=dt) if R else np.zeros(1, dtype=dt)
    scale = 1.0 + float(theta.astype(np.float64) @ p.decay)
    active = p.coef != 0
    pairs = np.ascontiguousarray(np.argwhere(active.any(axis=0)), dtype=np.int32)   # (u, s) used by some term
    return (c, Cr, dr, scale, active.any(axis=(0, 1)).astype(np.int8), active.any(axis=(0, 2)).astype(np.int8),
            pairs)


def _run_c(kernel, p: FusedPlan, theta: np.ndarray, WT: np.ndarray, WdT: np.ndarray, FB: np.ndarray, X: np.ndarray,
           T: np.ndarray, widths: np.ndarray, wpad: np.ndarray, woff: np.ndarray, foff: np.ndarray,
           voff: np.ndarray, mode: int, beta: float) -> None:
    """The C kernel, one episode per call, episodes spread over torch's thread count (ctypes drops the GIL)."""
    Bn, R = WT.shape[0], WdT.shape[1]
    c, Cr, dr, scale, act_s, act_u, pairs = _coefficients(p, theta, R)
    Cr = np.ascontiguousarray(Cr.transpose(1, 2, 0))          # the C kernel reads the tangent table as [u][s][r]
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (widths, wpad, woff, foff, voff)]
    th = np.ascontiguousarray(theta, dtype=np.float64)
    atoms, kap, gates = (np.ascontiguousarray(p.atoms, dtype=np.int32), np.ascontiguousarray(p.atom_coef),
                         np.ascontiguousarray(p.gates, dtype=np.int32))
    shared = [a.ctypes.data for a in ints] + [WT.shape[1], c.ctypes.data, Cr.ctypes.data, dr.ctypes.data,
                                              float(scale), float(beta), act_s.ctypes.data, act_u.ctypes.data,
                                              len(pairs), pairs.ctypes.data, th.ctypes.data, len(atoms),
                                              atoms.ctypes.data, kap.ctypes.data, len(gates), gates.ctypes.data]
    L = len(widths) - 1

    def one(b: int) -> int:
        return kernel(WT[b].ctypes.data, WdT[b].ctypes.data, FB[b].ctypes.data, X[b].ctypes.data,
                      T[b].ctypes.data, X.shape[1], L, R, mode, *shared)

    _run_episodes(one, Bn, "fused")


def _run_packed(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                x_train: Tensor, y_train: Tensor, feedback: str, beta: float,
                tangents: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Pack W, Ẇ = 0 and the feedback as transposed flat blocks, run the kernel, unpack as torch views."""
    p = plan(rule)
    if p is None or not available() or feedback not in FEEDBACK_CODES or (Bs is None and feedback != "bp"):
        raise ValueError("rule/feedback not fusable; use discovery.feedforward.inner.run_online_forward")
    dtype = Ws[0].dtype
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    widths = np.array([Ws[0].shape[2]] + [W.shape[1] for W in Ws], dtype=np.int64)
    wpad = np.array([_padded(int(n)) for n in widths], dtype=np.int64)
    voff = np.cumsum(np.concatenate([[0], wpad[:-1]])).astype(np.int64)
    WT, woff = _pack_transposed([W.detach().cpu() for W in Ws])
    Bn, R = WT.shape[0], (len(rule) if tangents else 0)
    WdT = _zeros((Bn, R, WT.shape[1]), np_dtype)
    if feedback == "bp":                                  # the feedback is W itself (read from the W blocks)
        FB, foff = np.zeros((Bn, 1), dtype=np_dtype), np.zeros(len(Ws), dtype=np.int64)
    elif feedback == "fa":
        FB, foff = _pack_transposed([b.detach().cpu() for b in Bs])
    else:
        FB, foff = _pack_rowmajor([b.detach().cpu() for b in Bs])
        foff = np.concatenate([[0], foff]).astype(np.int64)  # D for hidden layer ℓ sits at block ℓ (1-based)
    X = np.ascontiguousarray(x_train.detach().cpu().numpy(), dtype=np_dtype)
    T = np.ascontiguousarray(y_train.detach().cpu().numpy(), dtype=np.int64)
    th = theta.detach().cpu().numpy().astype(np_dtype)
    FB = np.ascontiguousarray(FB, dtype=np_dtype)
    kernel = ckernel.load(np_dtype)
    if p.gated and kernel is None:
        raise ValueError("scalar-gated rules need the C kernel (the numba fallback runs ungated rules only)")
    if kernel is not None:
        _run_c(kernel, p, th, WT, WdT, FB, X, T, widths, wpad, woff, foff, voff, FEEDBACK_CODES[feedback], beta)
    else:
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
        with _KERNEL_LOCK:
            c, Cr, dr, scale, act_s, act_u, pairs = _coefficients(p, th, WdT.shape[1])
            run_numba(WT, WdT, FB, X, T, widths, wpad, woff, foff, voff, c, Cr, dr, np_dtype(scale), act_s, act_u,
                      pairs, FEEDBACK_CODES[feedback], float(beta))
    Wt, Wdt = torch.from_numpy(WT), torch.from_numpy(WdT)
    out_W, out_D = [], []
    for li in range(len(Ws)):
        n, m, npd = int(widths[li + 1]), int(widths[li]), int(wpad[li + 1])
        o = int(woff[li])
        out_W.append(Wt[:, o:o + npd * m].reshape(Bn, m, npd)[..., :n].transpose(1, 2))
        if tangents:
            out_D.append(Wdt[:, :, o:o + npd * m].reshape(Bn, R, m, npd)[..., :n].permute(1, 0, 3, 2))
    return out_W, out_D


def run_online_forward_fused(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                             x_train: Tensor, y_train: Tensor, feedback: str,
                             beta: float) -> tuple[list[Tensor], list[Tensor]]:
    """Drop-in for discovery.feedforward.inner.run_online_forward on CPU: adapted W (B, n, m) and Ẇ (R, B, n, m)."""
    return _run_packed(rule, theta, Ws, Bs, x_train, y_train, feedback, beta, tangents=True)


def run_online_fused(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                     x_train: Tensor, y_train: Tensor, feedback: str, beta: float) -> list[Tensor]:
    """Primal-only online pass (held-out evaluation): adapted W (B, n, m)."""
    return _run_packed(rule, theta, Ws, Bs, x_train, y_train, feedback, beta, tangents=False)[0]


# --------------------------------------------------------------------------------------------- reverse mode

def reverse_available(rule: CompiledRule, feedback: str, device: torch.device, dtype: torch.dtype,
                      layered: bool = False) -> bool:
    """Whether the C adjoint kernel (adjoint_kernel.c, docs/kernels.md) can compute this rule's meta-gradient; with
    ``layered``, its per-layer-θ entry point (the primal pass included)."""
    if not fusable(rule, feedback, device, dtype):
        return False
    load = ckernel.load_adjoint_layered if layered else ckernel.load_adjoint
    return load(np.float32 if dtype == torch.float32 else np.float64) is not None


def _atom_table(p: FusedPlan) -> tuple[np.ndarray, np.ndarray]:
    """The atoms (t, u, s, gate 1, gate 2) and κ of a plan; an ungated plan's are its nonzero (t, u, s) entries."""
    if p.gated:
        return np.ascontiguousarray(p.atoms, dtype=np.int32), np.ascontiguousarray(p.atom_coef, dtype=np.float64)
    idx = np.argwhere(p.coef != 0)
    atoms = np.zeros((len(idx), 5), dtype=np.int32) - 1
    atoms[:, :3] = idx
    return np.ascontiguousarray(atoms), np.ascontiguousarray(p.coef[tuple(idx.T)], dtype=np.float64)


def segment_length(steps: int) -> int:
    """Checkpoint interval k of the adjoint kernel: W is kept every k steps and one segment of k steps is rebuilt at
    a time, so its work memory is about (⌈S/k⌉ + k)·|W| per episode; k = ⌈√S⌉ unless PLASTICITY_ADJOINT_SEGMENT."""
    raw = os.environ.get("PLASTICITY_ADJOINT_SEGMENT", "").strip()
    if raw:
        return max(1, int(raw))
    return max(1, int(np.ceil(np.sqrt(max(1, steps)))))


def _adjoint_args(rule: CompiledRule, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None, x_train: Tensor,
                  y_train: Tensor, x_query: Tensor | None, y_query: Tensor | None, feedback: str, layered: bool):
    """Pack the episode for the adjoint kernel: (kernel, plan, W, FB, X, T, XQ, TQ, the geometry arrays)."""
    p = plan(rule)
    dtype = Ws[0].dtype
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    kernel = (ckernel.load_adjoint_layered if layered else ckernel.load_adjoint)(np_dtype)
    if p is None or kernel is None or feedback not in FEEDBACK_CODES or (Bs is None and feedback != "bp"):
        raise ValueError("rule/feedback not fusable or no C compiler; use forward mode")
    widths = np.array([Ws[0].shape[2]] + [W.shape[1] for W in Ws], dtype=np.int64)
    wpad = np.array([_padded(int(n)) for n in widths], dtype=np.int64)
    voff = np.cumsum(np.concatenate([[0], wpad[:-1]])).astype(np.int64)
    WT, woff = _pack_transposed([W.detach().cpu() for W in Ws])
    WT = np.ascontiguousarray(WT, dtype=np_dtype)
    Bn = WT.shape[0]
    if feedback == "bp":
        FB, foff = np.zeros((Bn, 1), dtype=np_dtype), np.zeros(len(Ws), dtype=np.int64)
    elif feedback == "fa":
        FB, foff = _pack_transposed([b.detach().cpu() for b in Bs])
    else:
        FB, foff = _pack_rowmajor([b.detach().cpu() for b in Bs])
        foff = np.concatenate([[0], foff]).astype(np.int64)
    FB = np.ascontiguousarray(FB, dtype=np_dtype)
    X = np.ascontiguousarray(x_train.detach().cpu().numpy(), dtype=np_dtype)
    T = np.ascontiguousarray(y_train.detach().cpu().numpy(), dtype=np.int64)
    if x_query is None:
        XQ, TQ = np.zeros((Bn, 1), dtype=np_dtype), np.zeros((Bn, 1), dtype=np.int64)
        Q = 0
    else:
        XQ = np.ascontiguousarray(x_query.detach().cpu().numpy(), dtype=np_dtype)
        TQ = np.ascontiguousarray(y_query.detach().cpu().numpy(), dtype=np.int64)
        Q = XQ.shape[1]
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (widths, wpad, woff, foff, voff)]
    return kernel, p, np_dtype, WT, FB, X, T, XQ, TQ, Q, widths, wpad, woff, ints


def _adjoint_tables(p: FusedPlan, th: np.ndarray) -> tuple[np.ndarray, ...]:
    """The pieces of the plan the adjoint reads: c_{u,s} (from θ in the kernel's precision), s, the active slots,
    the (u, s) pairs (those of the terms and of the atoms), the atom table and κ, the gates."""
    c, _, _, scale, act_s, _, pairs = _coefficients(p, th, 0)
    atoms, kap = _atom_table(p)
    used = np.unique(atoms[:, 1:3], axis=0) if len(atoms) else np.zeros((0, 2), dtype=np.int32)
    pairs = np.ascontiguousarray(np.unique(np.concatenate([pairs, used]).astype(np.int32), axis=0), dtype=np.int32)
    return c, scale, act_s, pairs, atoms, kap, np.ascontiguousarray(p.gates, dtype=np.int32)


def _run_episodes(one: Callable[[int], int], Bn: int, kernel: str = "adjoint") -> None:
    """``one(b)`` for the Bn episodes, one per thread (ctypes releases the GIL); a nonzero code is an allocation
    failure of the C kernel."""
    threads = max(1, min(torch.get_num_threads(), Bn))
    if threads == 1:
        codes = [one(b) for b in range(Bn)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(one, range(Bn)))
    if any(codes):
        raise MemoryError(f"the {kernel} C kernel could not allocate its work memory")


def _run_adjoint(kernel, WT: np.ndarray, FB: np.ndarray, X: np.ndarray, T: np.ndarray, XQ: np.ndarray,
                 TQ: np.ndarray, Q: int, shared: list, grad: np.ndarray) -> None:
    """One adjoint-kernel call per episode b (its W, feedback, samples, queries and gradient row), the rest of the
    arguments (``shared``: geometry, plan tables, θ) the same for every episode."""
    S = X.shape[1]

    def one(b: int) -> int:
        return kernel(WT[b].ctypes.data, FB[b].ctypes.data, X[b].ctypes.data, T[b].ctypes.data, S,
                      XQ[b].ctypes.data, TQ[b].ctypes.data, Q, *shared, grad[b].ctypes.data)

    _run_episodes(one, WT.shape[0])


def _unpack_W(WT: np.ndarray, widths: np.ndarray, wpad: np.ndarray, woff: np.ndarray) -> list[Tensor]:
    Wt, Bn = torch.from_numpy(WT), WT.shape[0]
    out_W = []
    for li in range(len(widths) - 1):
        n, m, npd = int(widths[li + 1]), int(widths[li]), int(wpad[li + 1])
        o = int(woff[li])
        out_W.append(Wt[:, o:o + npd * m].reshape(Bn, m, npd)[..., :n].transpose(1, 2))
    return out_W


def meta_gradient_reverse_fused(rule: CompiledRule, theta: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                                x_train: Tensor, y_train: Tensor, x_query: Tensor, y_query: Tensor, feedback: str,
                                beta: float) -> tuple[list[Tensor], Tensor]:
    """Adapted W (B, n, m) and ∂(mean query CE)/∂θ (R, B) from the C adjoint kernel: one primal pass with
    checkpoints, the query loss's gradient, one backward pass (cost independent of R; docs/kernels.md)."""
    kernel, p, np_dtype, WT, FB, X, T, XQ, TQ, Q, widths, wpad, woff, ints = _adjoint_args(
        rule, Ws, Bs, x_train, y_train, x_query, y_query, feedback, layered=False)
    Bn, R = WT.shape[0], len(rule)
    th = theta.detach().cpu().numpy().astype(np_dtype)
    c, scale, act_s, pairs, atoms, kap, gates = _adjoint_tables(p, th)
    th64 = np.ascontiguousarray(theta.detach().cpu().numpy(), dtype=np.float64)
    decay = np.ascontiguousarray(p.decay[:R], dtype=np.float64)
    grad = np.zeros((Bn, max(R, 1)), dtype=np.float64)
    L = len(widths) - 1
    shared = [L, FEEDBACK_CODES[feedback]] + [a.ctypes.data for a in ints] + [
        WT.shape[1], c.ctypes.data, float(scale), float(beta), act_s.ctypes.data, len(pairs), pairs.ctypes.data,
        th64.ctypes.data, len(atoms), atoms.ctypes.data, kap.ctypes.data, len(gates), gates.ctypes.data,
        decay.ctypes.data, R, segment_length(X.shape[1])]
    _run_adjoint(kernel, WT, FB, X, T, XQ, TQ, Q, shared, grad)
    return _unpack_W(WT, widths, wpad, woff), torch.from_numpy(grad[:, :R].T.copy()).to(Ws[0].dtype)


def _layered(rule: CompiledRule, thetas: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
             x_train: Tensor, y_train: Tensor, x_query: Tensor | None, y_query: Tensor | None, feedback: str,
             beta: float) -> tuple[list[Tensor], Tensor | None]:
    """The adjoint kernel with θ per layer (thetas: L × R); no query: the primal pass alone (grad None)."""
    kernel, p, np_dtype, WT, FB, X, T, XQ, TQ, Q, widths, wpad, woff, ints = _adjoint_args(
        rule, Ws, Bs, x_train, y_train, x_query, y_query, feedback, layered=True)
    Bn, R, L = WT.shape[0], len(rule), len(Ws)
    th_all = thetas.detach().cpu().numpy()
    if th_all.shape != (L, R):
        raise ValueError(f"per-layer θ must be (layers, terms) = ({L}, {R}), not {th_all.shape}")
    rows = [_adjoint_tables(p, th_all[li].astype(np_dtype)) for li in range(L)]
    c = np.ascontiguousarray(np.stack([r[0] for r in rows]), dtype=np_dtype)
    scale = np.array([r[1] for r in rows], dtype=np_dtype)
    _, _, act_s, pairs, atoms, kap, gates = rows[0]
    th64 = np.ascontiguousarray(th_all, dtype=np.float64)
    decay = np.ascontiguousarray(p.decay[:R], dtype=np.float64)
    primal_only = x_query is None
    grad = np.zeros((Bn, max(L * R, 1)), dtype=np.float64)
    shared = [L, FEEDBACK_CODES[feedback]] + [a.ctypes.data for a in ints] + [
        WT.shape[1], c.ctypes.data, scale.ctypes.data, float(beta), act_s.ctypes.data, len(pairs),
        pairs.ctypes.data, th64.ctypes.data, len(atoms), atoms.ctypes.data, kap.ctypes.data, len(gates),
        gates.ctypes.data, decay.ctypes.data, R, segment_length(X.shape[1]), int(primal_only)]
    _run_adjoint(kernel, WT, FB, X, T, XQ, TQ, Q, shared, grad)
    out_W = _unpack_W(WT, widths, wpad, woff)
    if primal_only:
        return out_W, None
    return out_W, torch.from_numpy(grad[:, :L * R].T.reshape(L, R, Bn).copy()).to(Ws[0].dtype)


def meta_gradient_reverse_fused_layered(rule: CompiledRule, thetas: Tensor, Ws: Sequence[Tensor],
                                        Bs: Sequence[Tensor] | None, x_train: Tensor, y_train: Tensor,
                                        x_query: Tensor, y_query: Tensor, feedback: str,
                                        beta: float) -> tuple[list[Tensor], Tensor]:
    """Adapted W (B, n, m) and ∂(mean query CE)/∂θ_{ℓ,r} (L, R, B) with layer ℓ's update Σ_r θ_{ℓ,r} F^r_ℓ
    (thetas: L × R; docs/kernels.md, "Per-layer θ"). All rows equal: the shared rule, whose ∂/∂θ_r is the sum
    over ℓ."""
    return _layered(rule, thetas, Ws, Bs, x_train, y_train, x_query, y_query, feedback, beta)


def run_online_fused_layered(rule: CompiledRule, thetas: Tensor, Ws: Sequence[Tensor], Bs: Sequence[Tensor] | None,
                             x_train: Tensor, y_train: Tensor, feedback: str, beta: float) -> list[Tensor]:
    """Primal-only online pass with θ per layer (thetas: L × R), the adjoint kernel's first pass without a tape:
    adapted W (B, n, m)."""
    return _layered(rule, thetas, Ws, Bs, x_train, y_train, None, None, feedback, beta)[0]
