"""Compile a rule's sympy expression into the torch code that runs, with forward-mode tangents.

Every supported monomial of ΔW is either an outer product c·u vᵀ (u an n×1 chain, v a m×1 chain, both cheap
matrix-vector chains, e.g. Oja's y (yᵀW) — never (y yᵀ) W) or a multiple d·W (decay). So a term compiles to
    F(x, y, e, e_pre, W) = U Vᵀ + d W,   U = [c_i u_i] ∈ (B, n, k), V = [v_i] ∈ (B, m, k),
and its tangent along a direction (ẋ, ẏ, ė, ė_pre, Ẇ) is again a sum of outer products, by the product rule:
    Ḟ = U̇ Vᵀ + U V̇ᵀ + d Ẇ.
Primal tensors are batched over episodes (B, ·, ·); tangents carry R directions as a leading dim (R, B, ·, ·).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import sympy
import torch
from sympy.matrices.expressions import MatAdd, MatMul, MatrixSymbol, Trace, Transpose, ZeroMatrix
from torch import Tensor

from rules.primitives import PRIMITIVES

#: Names of the primitive symbols a compiled rule reads; ``one`` and ``one_pre`` have no tangent.
PRIMITIVE_NAMES = ("x", "y", "e", "e_pre", "W", "one", "one_pre")


class CompileError(ValueError):
    """The expression holds a monomial that is neither an outer product nor a multiple of W."""


Factor = tuple[str, bool]  # (primitive name, transposed?)


@dataclass(frozen=True)
class Atom:
    """c · u vᵀ with u = Π prefix (n×1) and vᵀ = Π suffix (1×m)."""

    coef: float
    prefix: tuple[Factor, ...]
    suffix: tuple[Factor, ...]


@dataclass
class CompiledTerm:
    """One term F = Σ_i c_i u_i v_iᵀ + d·W."""

    atoms: list[Atom] = field(default_factory=list)
    decay: float = 0.0

    @property
    def width(self) -> int:
        return len(self.atoms)


# ----------------------------------------------------------------------------------------------- symbolic part

def _factor_of(arg: sympy.Basic) -> Factor:
    if isinstance(arg, MatrixSymbol):
        name = str(arg.name)
        if name not in PRIMITIVES:
            raise CompileError(f"unknown matrix symbol {name!r}")
        return (name, False)
    if isinstance(arg, Transpose) and isinstance(arg.arg, MatrixSymbol):
        return (_factor_of(arg.arg)[0], True)
    raise CompileError(f"unsupported factor {arg} (expected a primitive or its transpose)")


def _shape(f: Factor) -> tuple[sympy.Expr, sympy.Expr]:
    r, c = PRIMITIVES[f[0]].shape
    return (c, r) if f[1] else (r, c)


def _monomials(expr: sympy.Basic) -> list[tuple[float, list[sympy.Basic]]]:
    """Expand ΔW into (coefficient, [matrix factors]) monomials, transposes pushed onto the primitives."""
    if isinstance(expr, ZeroMatrix):
        return []
    expanded = expr.doit().expand()
    if isinstance(expanded, ZeroMatrix):
        return []
    terms = expanded.args if isinstance(expanded, MatAdd) else (expanded,)
    out = []
    for t in terms:
        if isinstance(t, MatMul):
            coeff, mats = t.as_coeff_matrices()
        else:
            coeff, mats = sympy.Integer(1), [t]
        scalars, factors = [], []
        for mat in mats:
            (scalars if isinstance(mat, Trace) else factors).append(mat)
        coeff = sympy.Mul(coeff, *scalars)
        out.append((coeff, factors))
    return out


def _flatten_traces(coeff: sympy.Expr) -> tuple[float, list[Factor]]:
    """A coefficient = number × Π Trace(1×1 chains): return the number and the chained scalar factors."""
    number, chain = 1.0, []
    for f in sympy.Mul.make_args(coeff):
        if isinstance(f, Trace):
            inner = f.arg
            mats = inner.as_coeff_matrices()[1] if isinstance(inner, MatMul) else [inner]
            c = inner.as_coeff_matrices()[0] if isinstance(inner, MatMul) else 1
            number *= float(c)
            chain.extend(_factor_of(a) for a in mats)
        elif f.is_number:
            number *= float(f)
        else:
            raise CompileError(f"unsupported scalar factor {f}")
    return number, chain


def decompose(expr: sympy.Basic) -> CompiledTerm:
    """Split an n×m expression into outer-product atoms and a decay coefficient (CompileError otherwise)."""
    n, m = PRIMITIVES["W"].shape
    term = CompiledTerm()
    for coeff, mats in _monomials(expr):
        number, scalar_chain = _flatten_traces(coeff)
        factors = [_factor_of(a) for a in mats]
        if factors == [("W", False)] and not scalar_chain:
            term.decay += number
            continue
        split = _outer_split(factors, n, m)
        if split is None:
            raise CompileError(
                f"monomial {sympy.Mul(coeff, MatMul(*mats))} is neither an outer product u vᵀ nor a multiple of W")
        prefix, suffix = factors[:split], factors[split:]
        term.atoms.append(Atom(number, tuple(prefix), tuple(scalar_chain + suffix) if scalar_chain else tuple(suffix)))
    return term


def _outer_split(factors: Sequence[Factor], n: sympy.Expr, m: sympy.Expr) -> int | None:
    """First j with Π factors[:j] of shape n×1 and Π factors[j:] of shape 1×m."""
    for j in range(1, len(factors)):
        if _shape(factors[0])[0] != n or _shape(factors[j - 1])[1] != 1:
            continue
        if _shape(factors[j])[0] == 1 and _shape(factors[-1])[1] == m:
            return j
    return None


# ----------------------------------------------------------------------------------------------- torch part

def mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched product where either side may carry a leading tangent dim R (4-D) and the other not (3-D).

    A big primal matrix is never copied R times: the R tangents are folded into its vector operand instead."""
    if a.dim() == b.dim():
        if b.shape[-1] == 1 and a.shape[-2] > 1 and a.shape[-1] > 1:
            return _matvec_t(a, b)
        return torch.matmul(a, b)
    if a.dim() == 4:  # (R,B,p,k) @ (B,k,q)
        R, B, p, k = a.shape
        q = b.shape[-1]
        if q == 1 and p > 1 and k > 1:
            return _matvec_t(a, b.unsqueeze(0).expand(R, *b.shape))
        if q == 1 or k == 1:
            return torch.matmul(a, b.unsqueeze(0))
        out = torch.bmm(a.permute(1, 0, 2, 3).reshape(B, R * p, k), b)
        return out.reshape(B, R, p, q).permute(1, 0, 2, 3)
    R, B, k, q = b.shape  # (B,p,k) @ (R,B,k,q)
    p = a.shape[1]
    if p == 1 or k == 1:
        return torch.matmul(a.unsqueeze(0), b)
    out = torch.bmm(a, b.permute(1, 2, 0, 3).reshape(B, k, R * q))
    return out.reshape(B, p, R, q).permute(2, 0, 1, 3)


def _matvec_t(a: Tensor, b: Tensor) -> Tensor:
    """A v as (vᵀ Aᵀ)ᵀ: BLAS streams A's rows contiguously (measured ~3x faster than gemv for batch of A)."""
    lead = a.shape[:-2]
    p, k = a.shape[-2:]
    a3 = a.reshape(-1, p, k)
    v3 = b.reshape(-1, k, 1)
    return torch.bmm(v3.transpose(1, 2), a3.transpose(1, 2)).reshape(*lead, p, 1)


def _operand(f: Factor, env: Mapping[str, Tensor]) -> Tensor:
    """Primitive as a batched matrix: vectors (…, B, k) become columns (…, B, k, 1); W is (…, B, n, m)."""
    t = env[f[0]]
    if f[0] not in ("W", "__tW"):
        t = t.unsqueeze(-1)
    return t.transpose(-1, -2) if f[1] else t


def _chain(factors: Sequence[Factor], env: Mapping[str, Tensor], right_to_left: bool) -> Tensor:
    """Π factors evaluated vector-first (matrix·vector only): right to left for columns, left to right for rows."""
    ops = [_operand(f, env) for f in factors]
    if right_to_left:
        acc = ops[-1]
        for op in reversed(ops[:-1]):
            acc = mm(op, acc)
    else:
        acc = ops[0]
        for op in ops[1:]:
            acc = mm(acc, op)
    return acc


def _chain_tangent(factors: Sequence[Factor], env: Mapping[str, Tensor], tan: Mapping[str, Tensor],
                   right_to_left: bool) -> Tensor | None:
    """d(Π factors) = Σ_i Π(…, ḟ_i, …) (product rule); None when no factor has a tangent."""
    total = None
    for i, f in enumerate(factors):
        if f[0] not in tan:
            continue
        slot = "__tW" if f[0] == "W" else "__t"
        mixed = {**env, slot: tan[f[0]]}
        fs = list(factors)
        fs[i] = (slot, f[1])
        part = _chain(fs, mixed, right_to_left)
        total = part if total is None else total + part
    return total


def _column(factors: Sequence[Factor], env: Mapping[str, Tensor]) -> Tensor:
    return _chain(factors, env, right_to_left=True)


def _row(factors: Sequence[Factor], env: Mapping[str, Tensor]) -> Tensor:
    return _chain(factors, env, right_to_left=False)


class CompiledRule:
    """ΔW = Σ_t θ_t F_t for a list of compiled terms; torch evaluation batched over episodes.

    ``env`` maps primitive names to tensors: x, e_pre (B, m); y, e (B, n); W (B, n, m). The ones vector is
    supplied automatically."""

    def __init__(self, terms: Sequence[CompiledTerm], names: Sequence[str] | None = None):
        self.terms = list(terms)
        self.names = list(names) if names is not None else [f"t{i}" for i in range(len(self.terms))]
        self.has_decay = any(t.decay != 0 for t in self.terms)
        self.decays = [t.decay for t in self.terms]
        names = {f[0] for t in self.terms for a in t.atoms for f in a.prefix + a.suffix}
        self.uses_W = "W" in names
        #: Whether any term reads an error signal (e or e_pre): otherwise the rule is purely local (Hebbian-like).
        self.uses_error = bool(names & {"e", "e_pre"})

    def __len__(self) -> int:
        return len(self.terms)

    @staticmethod
    def _with_one(env: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {**env, "one": torch.ones_like(env["e"]), "one_pre": torch.ones_like(env["x"])}

    def atoms(self, theta: Tensor, env: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """U (B, n, K), Vᵀ (B, K, m) with Σ_t θ_t Σ_i c_i u_i v_iᵀ = U Vᵀ (θ and c folded into U)."""
        env = self._with_one(env)
        us, vs = [], []
        for t, term in enumerate(self.terms):
            for a in term.atoms:
                us.append(_column(a.prefix, env) * (a.coef * theta[t]))
                vs.append(_row(a.suffix, env))
        return torch.cat(us, dim=-1), torch.cat(vs, dim=-2)

    def delta(self, theta: Tensor, env: Mapping[str, Tensor]) -> Tensor:
        """ΔW (B, n, m)."""
        W = env["W"]
        out = torch.zeros_like(W)
        if any(t.atoms for t in self.terms):
            U, Vt = self.atoms(theta, env)
            out = torch.bmm(U, Vt)
        if self.has_decay:
            out = out + W * self.decay_scale(theta)
        return out

    def _mask(self, R: int, t: int, coef: float, like: Tensor) -> Tensor:
        """(R,1,1,1) tensor with coef at direction t: selects the explicit ∂ΔW/∂θ_t block (cached)."""
        key = (R, t, coef, like.dtype, like.device)
        cache = self.__dict__.setdefault("_masks", {})
        if key not in cache:
            mask = torch.zeros(R, 1, 1, 1, dtype=like.dtype, device=like.device)
            mask[t] = coef
            cache[key] = mask
        return cache[key]

    def decay_scale(self, theta: Tensor) -> Tensor:
        """Σ_t θ_t d_t: the rule's total multiple of W."""
        return sum(theta[t] * d for t, d in enumerate(self.decays) if d != 0)

    def update(self, theta: Tensor, env: Mapping[str, Tensor]) -> Tensor:
        """W + ΔW, fused as one baddbmm over the stacked atoms (plus the decay scaling when present)."""
        W = env["W"]
        base = W * (1 + self.decay_scale(theta)) if self.has_decay else W
        if not any(t.atoms for t in self.terms):
            return base
        U, Vt = self.atoms(theta, env)
        return torch.baddbmm(base, U, Vt)

    def update_tangent(self, theta: Tensor, env: Mapping[str, Tensor], tan: Mapping[str, Tensor],
                       own: bool = True) -> Tensor:
        """Ẇ + d(ΔW) for R tangent directions (tan values are (R, B, …); tan['W'] is (R, B, n, m)).

        d(ΔW)_r = Σ_t θ_t (U̇_t V_tᵀ + U_t V̇_tᵀ + d_t Ẇ_r) + [own] F_r (the explicit ∂ΔW/∂θ_r, R = #terms)."""
        Wdot = tan["W"]
        return self.step_forward_(theta, env, {**tan, "W": Wdot.clone()}, own=own, update_primal=False)

    def step_forward_(self, theta: Tensor, env: Mapping[str, Tensor], tan: Mapping[str, Tensor],
                      own: bool = True, update_primal: bool = True) -> Tensor:
        """In place (no autograd): Ẇ ← Ẇ + d(ΔW), then W ← W + ΔW; the primal atoms are computed once.

        Returns the updated tangent tensor tan['W'] (R, B, n, m); env['W'] is updated when update_primal."""
        env = self._with_one(env)
        W, Wdot = env["W"], tan["W"]
        R = Wdot.shape[0]
        thetas = theta.tolist() if isinstance(theta, Tensor) else list(theta)
        left, right, us, vs = [], [], [], []
        for t, term in enumerate(self.terms):
            for a in term.atoms:
                c = a.coef * thetas[t]
                u = _column(a.prefix, env)
                v = _row(a.suffix, env)
                us.append(u * c)
                vs.append(v)
                du = _chain_tangent(a.prefix, env, tan, right_to_left=True)
                dv = _chain_tangent(a.suffix, env, tan, right_to_left=False)
                if du is not None:
                    left.append(du * c)
                    right.append(v.unsqueeze(0).expand(R, *v.shape))
                if dv is not None:
                    left.append((u * c).unsqueeze(0).expand(R, *u.shape))
                    right.append(dv)
                if own:
                    left.append(u.unsqueeze(0) * self._mask(R, t, a.coef, u))
                    right.append(v.unsqueeze(0).expand(R, *v.shape))
        scale = 1 + sum(th * d for th, d in zip(thetas, self.decays)) if self.has_decay else None
        if self.has_decay:
            Wdot.mul_(scale)
            if own:
                d = torch.tensor(self.decays, dtype=Wdot.dtype, device=Wdot.device).view(R, 1, 1, 1)
                Wdot.add_(d * W.unsqueeze(0))
        if left:
            Lm = torch.cat(left, dim=-1)
            Rm = torch.cat(right, dim=-2)
            _, B, n, K = Lm.shape
            m = Rm.shape[-1]
            Wdot.view(R * B, n, m).baddbmm_(Lm.reshape(R * B, n, K), Rm.reshape(R * B, K, m))
        if update_primal:
            if scale is not None:
                W.mul_(scale)
            if us:
                W.baddbmm_(torch.cat(us, dim=-1), torch.cat(vs, dim=-2))
        return Wdot


def compile_terms(exprs: Sequence[sympy.Basic], names: Sequence[str] | None = None) -> CompiledRule:
    """Compile each term's expression; the rule is Σ_t θ_t F_t."""
    return CompiledRule([decompose(e) for e in exprs], names)


def compile_expression(expr: sympy.Basic) -> CompiledRule:
    """Compile a whole rule expression (coefficients inside): one term, run with θ = [1]."""
    return CompiledRule([decompose(expr)], ["rule"])


def reference_function(expr: sympy.Basic) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """ΔW(env) with θ = 1, for tests and for code that wants a plain callable."""
    compiled = compile_expression(expr)

    def f(env: Mapping[str, Tensor]) -> Tensor:
        W = env["W"]
        return compiled.delta(torch.ones(1, dtype=W.dtype, device=W.device), env)

    return f
