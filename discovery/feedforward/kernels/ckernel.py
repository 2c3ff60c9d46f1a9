"""Build and load the C version of the fused inner loop (`fused_kernel.c`) with the system's C compiler.

The shared library is compiled once per machine, source and precision (-O3 -march=native, reassociation and FMA
contraction allowed, IEEE NaN/inf kept so divergence stays visible) into a cache folder, then loaded with ctypes.
Where no compiler works, `load` returns None and discovery.feedforward.kernels.fused uses its numba kernel instead.
The same library holds the adjoint (reverse-mode) kernel, `adjoint_kernel.c`, which includes `fused_kernel.c`
(`load_adjoint`; docs/kernels.md), and its per-layer-θ entry point (`load_adjoint_layered`).
`PLASTICITY_FUSED_BACKEND` = auto (default) | c | numba chooses; `PLASTICITY_KERNEL_CACHE` names the folder
(default ~/.cache/plasticity/kernels; created 0700, and its owner and mode are checked before a library is loaded).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("fused_kernel.c")
#: the adjoint (reverse-mode) kernel includes fused_kernel.c: one shared library holds both entry points
ADJOINT_SOURCE = Path(__file__).with_name("adjoint_kernel.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-ffp-contract=fast", "-shared", "-fPIC", *os.environ.get("PLASTICITY_KERNEL_CFLAGS", "").split()]
REALS = {np.float32: "float", np.float64: "double"}


def backend() -> str:
    """The configured backend of the fused loop: 'auto', 'c' or 'numba'."""
    value = os.environ.get("PLASTICITY_FUSED_BACKEND", "auto").strip().lower()
    if value not in ("auto", "c", "numba"):
        raise ValueError(f"PLASTICITY_FUSED_BACKEND must be auto, c or numba, not {value!r}")
    return value


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _machine_key() -> str:
    """What -march=native depends on: the CPU's model and feature flags (a cache folder shared between unlike
    machines must not hand one of them the other's instructions)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "|".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


class KernelCacheError(Exception):
    """The kernel cache folder (or a library in it) is not private to this user: nothing is loaded from it.

    Deliberately not an OSError/RuntimeError, so that `load` does not quietly fall back to numba: a cache that
    someone else can write is refused with this message."""


def _default_cache_root() -> Path:
    """$XDG_CACHE_HOME (or ~/.cache)/plasticity/kernels: per user, never a predictable path in the shared temp
    folder (where another user could create it first)."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "plasticity" / "kernels"


def check_private(path: Path, *, folder: bool) -> None:
    """Refuse `path` unless it is a real (not symlinked) folder or file owned by this user that no group or other
    user can write; a folder must also be closed to others (0700). Raises KernelCacheError naming the problem."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise KernelCacheError(f"kernel cache {path}: cannot inspect it ({exc})") from exc
    kind = "folder" if folder else "library"
    if stat.S_ISLNK(st.st_mode) or (stat.S_ISDIR(st.st_mode) != folder) or not (folder or stat.S_ISREG(st.st_mode)):
        raise KernelCacheError(f"kernel cache {kind} {path} is not a plain {kind} (a symlink or another type); "
                               "remove it or set PLASTICITY_KERNEL_CACHE to a private folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise KernelCacheError(f"kernel cache {kind} {path} belongs to uid {st.st_uid}, not to this user "
                               f"(uid {os.getuid()}); refusing to load a compiled kernel from it")
    loose = 0o077 if folder else 0o022
    if st.st_mode & loose:
        raise KernelCacheError(f"kernel cache {kind} {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users "
                               f"could {'enter or write' if folder else 'rewrite'} it; "
                               f"run chmod {'700' if folder else '600'} on it or remove it")


def _cache_dir() -> Path:
    """The private folder of compiled kernels (`PLASTICITY_KERNEL_CACHE`, else per user under ~/.cache), created
    0700 and checked to be this user's and closed to others before anything is loaded from it."""
    raw = os.environ.get("PLASTICITY_KERNEL_CACHE", "").strip()
    folder = Path(raw).expanduser() if raw else _default_cache_root()
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    check_private(folder, folder=True)
    return folder


def _build(real: str) -> Path:
    """Compile the kernel for one precision (atomically: concurrent processes may build the same file)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    src = SOURCE.read_bytes() + ADJOINT_SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, real, *FLAGS, _machine_key()]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"fused_{real}_{key}.so"
    if out.exists():
        check_private(out, folder=False)  # the owner check before loading
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    # the adjoint kernel includes SOURCE (which may be a variant: experiments/kernel_ab.py); a forward kernel that the
    # adjoint does not compile against is built alone (then `load_adjoint` is None and reverse mode falls back)
    both = [cc, *FLAGS, f"-DREAL={real}", f'-DFUSED_SOURCE="{SOURCE.resolve()}"', str(ADJOINT_SOURCE), "-o", str(tmp),
            "-lm"]
    proc = subprocess.run(both, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        proc = subprocess.run([cc, *FLAGS, f"-DREAL={real}", str(SOURCE), "-o", str(tmp), "-lm"],
                              capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE.name} failed: {proc.stderr.strip()[-500:]}")
    os.chmod(tmp, 0o700)
    os.replace(tmp, out)
    check_private(out, folder=False)
    return out


_ADJOINT: dict[type, ctypes._CFuncPtr] = {}   # the adjoint entry point of the library `load` loaded last
_ADJOINT_LAYERED: dict[type, ctypes._CFuncPtr] = {}   # its per-layer-θ entry point


@functools.cache
def load(dtype: type) -> ctypes._CFuncPtr | None:
    """The `fused_episode` function for np.float32 or np.float64, or None when it cannot be built here."""
    _ADJOINT.pop(dtype, None)
    _ADJOINT_LAYERED.pop(dtype, None)
    if backend() == "numba":
        return None
    try:
        lib = ctypes.CDLL(str(_build(REALS[dtype])))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        if backend() == "c":
            raise RuntimeError(f"PLASTICITY_FUSED_BACKEND=c but the C kernel is unavailable: {exc}") from exc
        return None
    if hasattr(lib, "adjoint_episode"):
        _ADJOINT[dtype] = _adjoint_fn(lib, dtype)
    if hasattr(lib, "adjoint_episode_layered"):
        _ADJOINT_LAYERED[dtype] = _adjoint_fn(lib, dtype, layered=True)
    fn = lib.fused_episode
    creal = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    fn.argtypes = [ptr, ptr, ptr, ptr, ptr, long_, int_, int_, int_, ptr, ptr, ptr, ptr, ptr, long_,
                   ptr, ptr, ptr, creal, creal, ptr, ptr, int_, ptr, ptr, int_, ptr, ptr, int_, ptr]
    fn.restype = ctypes.c_int
    return fn


def load_adjoint(dtype: type) -> ctypes._CFuncPtr | None:
    """The `adjoint_episode` function (reverse-mode meta-gradient, adjoint_kernel.c), or None without a C kernel."""
    return _ADJOINT.get(dtype) if load(dtype) is not None else None


def _adjoint_fn(lib: ctypes.CDLL, dtype: type, layered: bool = False) -> ctypes._CFuncPtr:
    """`adjoint_episode` (one θ for every layer) or `adjoint_episode_layered` (θ per layer, a primal-only flag)."""
    fn = lib.adjoint_episode_layered if layered else lib.adjoint_episode
    creal = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    head = [ptr, ptr, ptr, ptr, long_, ptr, ptr, long_, int_, int_, ptr, ptr, ptr, ptr, ptr, long_, ptr]
    middle = [ptr, creal] if layered else [creal, creal]
    tail = [ptr, int_, ptr, ptr, int_, ptr, ptr, int_, ptr, ptr, int_, long_] + ([int_] if layered else []) + [ptr]
    fn.argtypes = head + middle + tail
    fn.restype = ctypes.c_int
    return fn


def load_adjoint_layered(dtype: type) -> ctypes._CFuncPtr | None:
    """The `adjoint_episode_layered` function (the adjoint kernel with θ per layer; docs/kernels.md), or None."""
    return _ADJOINT_LAYERED.get(dtype) if load(dtype) is not None else None

