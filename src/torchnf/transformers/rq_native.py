r"""The compiled kernel of the rational-quadratic spline (``rq_native.cpp``): build, cache and call.

On the CPU, the spline's arithmetic around the conditioner is bound by the number of passes over
memory that a composition of PyTorch operations makes (dozens per layer, each reading and writing
``(N,)`` or ``(N, 2K)`` tensors). ``rq_native.cpp`` computes the same map, its inverse and its
gradients in one pass over the inputs, with the lanes of each SIMD register holding different
inputs.

The source is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``) for the
machine it runs on, and the library is cached under ``$TORCHNF_CACHE_DIR`` (default
``~/.cache/torchnf``; the temporary directory where that is not writable), keyed by the source,
the flags, the compiler and the CPU; a build takes about two seconds. It runs on the threads of
the OpenMP runtime that PyTorch has loaded, as many as :func:`torch.get_num_threads`. Where no
compiler is found or the build fails, :func:`available` is false (:func:`status` says why) and the
PyTorch version in :mod:`~torchnf.transformers.rq_fused` serves; ``TORCHNF_NATIVE=0`` turns the
kernel off.

Only contiguous CPU tensors of float32 or float64 with ``K <= 64`` bins are passed here; the
callers in :mod:`~torchnf.transformers.rq_fused` check that (:func:`serves`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "backward", "disabled", "forward", "knots", "serves", "status"]

_SOURCE = Path(__file__).with_name("rq_native.cpp")
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno",
          "-fno-trapping-math", "-Wno-psabi")
# tried in turn: a compiler without OpenMP (Apple clang) builds a one-thread kernel, one that does not
# know -march=native (some clang targets) a baseline one
_OPTIONAL = (("-march=native", "-fopenmp"), ("-march=native",), ())
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_PARALLEL_MIN = 2048  # inputs per thread below which a call runs on one thread

_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "reason": "not built yet", "off": False}


def _cache_dir() -> Path:
    root = os.environ.get("TORCHNF_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchnf"


def _machine() -> str:
    """What ``-march=native`` depends on: the architecture and the CPU's feature flags."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        text += platform.processor()
    return text


def _compiler_id(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cache_for(key: str) -> Path:
    """The library's path: in the first cache directory that holds it or can be written."""
    user = getattr(os, "getuid", lambda: 0)()
    for cache in (_cache_dir(), Path(tempfile.gettempdir()) / f"torchnf-{user}"):
        path = cache / f"rq_native-{key}.so"
        if path.exists():
            return path
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(cache, os.W_OK):
            return path
    raise RuntimeError(f"no writable cache directory (tried {_cache_dir()} and the temporary directory)")


def _compile(cxx: str, flags: tuple[str, ...], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [cxx, *flags, "-o", tmp, str(_SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, path)  # atomic: a concurrent build finds a whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX)")
    build_id = [_SOURCE.read_bytes(), _compiler_id(cxx).encode(), _machine().encode(),
                torch.__version__.encode()]
    errors = []
    for optional in _OPTIONAL:
        flags = (*_FLAGS, *optional)
        key = hashlib.sha256(b"\0".join([" ".join(flags).encode(), *build_id])).hexdigest()[:20]
        path = _cache_for(key)
        if not path.exists():
            try:
                _compile(cxx, flags, path)
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                errors.append(str(e))
                continue
        _state["flags"] = flags
        break
    else:
        raise RuntimeError("; ".join(errors))
    lib = ctypes.CDLL(str(path))
    p, i64, i, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for s in _SUFFIX.values():
        getattr(lib, f"rqs_forward_{s}").argtypes = [p, p, p, p, i64, i, d, d, d, d, d, i, i]
        getattr(lib, f"rqs_backward_{s}").argtypes = [p, p, p, p, p, p, i64, i, d, d, d, d, d, i]
        getattr(lib, f"rqs_knots_{s}").argtypes = [p, p, i64, i, d, d, d, d, d, i]
        for name in ("forward", "backward", "knots"):
            getattr(lib, f"rqs_{name}_{s}").restype = None
    lib.rqs_max_bins.restype = ctypes.c_int
    return lib


def _lib() -> ctypes.CDLL | None:
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if not _state["tried"]:
            if os.environ.get("TORCHNF_NATIVE", "1").lower() in ("0", "false", "off", "no"):
                _state["reason"] = "turned off by TORCHNF_NATIVE"
            else:
                try:
                    _state["lib"] = _build()
                    _state["max_bins"] = _state["lib"].rqs_max_bins()
                    missing = [f for f in _OPTIONAL[0] if f not in _state["flags"]]
                    _state["reason"] = "built" + (f" without {' '.join(missing)}" if missing else "")
                except Exception as e:  # noqa: BLE001 - any failure means the PyTorch version serves
                    _state["reason"] = f"{type(e).__name__}: {e}"
            _state["tried"] = True
    return _state["lib"]


def available() -> bool:
    """Whether the compiled kernel is built (building it on the first call)."""
    return _lib() is not None


def status() -> str:
    """Why the kernel is or is not in use."""
    _lib()
    return _state["reason"]


@contextlib.contextmanager
def disabled():
    """Within this block the PyTorch version serves (to test or time one against the other)."""
    before = _state["off"]
    _state["off"] = True
    try:
        yield
    finally:
        _state["off"] = before


def serves(v: Tensor, params: Tensor, spec: tuple) -> bool:
    """Whether the kernel serves this call (CPU, float32/float64, ``K <= 64``, not traced)."""
    return (not _state["off"] and v.device.type == "cpu" and params.device.type == "cpu"
            and v.dtype in _SUFFIX and params.dtype == v.dtype and not torch.compiler.is_compiling()
            and _lib() is not None and spec[0] <= _state["max_bins"])


def _threads(n: int) -> int:
    return max(1, min(torch.get_num_threads(), n // _PARALLEL_MIN))


def _spec_args(spec: tuple) -> tuple:
    K, B, mw, mh, md, shift = spec
    return (int(K), float(B), float(mw), float(mh), float(md), float(shift))


def forward(v: Tensor, params: Tensor, spec: tuple, inverse: bool) -> tuple[Tensor, Tensor]:
    """``(out, ladj)`` of the spline (``inverse``: of its inverse), shaped like ``v`` ``(*b)``, for
    ``params`` ``(*b, 3K - 1)`` (the kernel reads both as flat rows)."""
    v, params = v.contiguous(), params.contiguous()
    out, ladj = torch.empty_like(v), torch.empty_like(v)
    fn = getattr(_state["lib"], f"rqs_forward_{_SUFFIX[v.dtype]}")
    n = v.numel()
    fn(v.data_ptr(), params.data_ptr(), out.data_ptr(), ladj.data_ptr(), n, *_spec_args(spec),
       int(inverse), _threads(n))
    return out, ladj


def backward(x: Tensor, params: Tensor, gy: Tensor | None, gl: Tensor | None,
             spec: tuple) -> tuple[Tensor, Tensor]:
    """Gradients of ``<gy, y> + <gl, ladj>`` with respect to ``x`` ``(*b)`` and ``params``
    ``(*b, 3K - 1)``, shaped like them (a missing output gradient counts as zero)."""
    x, params = x.contiguous(), params.contiguous()
    gy = gy.contiguous() if gy is not None else None
    gl = gl.contiguous() if gl is not None else None
    gx, gp = torch.empty_like(x), torch.empty_like(params)
    fn = getattr(_state["lib"], f"rqs_backward_{_SUFFIX[x.dtype]}")
    n = x.numel()
    fn(x.data_ptr(), params.data_ptr(), gy.data_ptr() if gy is not None else None,
       gl.data_ptr() if gl is not None else None, gx.data_ptr(), gp.data_ptr(), n,
       *_spec_args(spec), _threads(n))
    return gx, gp


def knots(params: Tensor, spec: tuple) -> Tensor:
    """All knots ``(3, N, K + 1)`` with the kernel's arithmetic (see ``spline_knots``)."""
    params = params.contiguous()
    n = params.shape[0]
    out = torch.empty(3, n, spec[0] + 1, dtype=params.dtype)
    fn = getattr(_state["lib"], f"rqs_knots_{_SUFFIX[params.dtype]}")
    fn(params.data_ptr(), out.data_ptr(), n, *_spec_args(spec), _threads(n))
    return out
