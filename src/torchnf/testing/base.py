"""Building blocks of the harness: the :class:`Case` format, tolerances and the failure reporter."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from torchnf.core import Bijection, Inverse

__all__ = ["Case", "perturb", "tolerances"]

BATCH_SHAPES: tuple[tuple[int, ...], ...] = ((), (7,), (3, 5))


@dataclass
class Case:
    """How to build and test one bijection.

    Attributes:
        name: test id.
        make: builds the bijection (called under a fixed seed, default dtype float32; the harness
            casts to float64 as needed).
        inputs: ``(batch_shape, dtype, generator) -> x`` producing valid inputs of shape
            ``(*batch_shape, *event_shape)``; default standard normal.
        structure: ``"coupling"``, ``"autoregressive"``, ``"elementwise"`` or ``None``: which
            Jacobian structure to check (uses the bijection's ``mask`` or ``order`` attribute,
            looked up through :class:`~torchnf.Inverse` wrappers).
        perturb: scale of the random noise added to parameters so the map is not the identity
            (0 to keep the parameters as built).
        stochastic: the log-det is a stochastic estimate in training mode (exact in eval mode).
        eval_only: round-trip and log-det checks only hold in ``eval()`` (e.g. batch norm).
        tol: multiplier on the default tolerances (splines and iterative inverses need more).
        jacobian: run the autograd-Jacobian log-det check (disable only if prohibitively slow).
        compile: include in the (slow) ``torch.compile(fullgraph=True)`` test; opt in for one or two
            representatives per family.
        identity_at_init: the freshly built bijection is the identity map.
        extra: free-form options for family-specific checks. Read by the harness:
            ``large_inputs`` (bool, default ``True`` unless ``inputs`` is given): check finite
            values and gradients at ``|x| = 1e4``; ``no_grad_ok`` (names of parameters that may
            get no gradient through ``log_prob`` or ``rsample``). Read by ``tests/test_harness.py``:
            ``xfail`` (reason: a known failure of library code, run as a strict xfail).
    """

    name: str
    make: Callable[[], Bijection]
    inputs: Callable[[torch.Size, torch.dtype, torch.Generator], Tensor] | None = None
    structure: str | None = None
    perturb: float = 0.1
    stochastic: bool = False
    eval_only: bool = False
    tol: float = 1.0
    jacobian: bool = True
    compile: bool = False
    identity_at_init: bool = True
    extra: dict = field(default_factory=dict)


def tolerances(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """Default tolerances of the harness for ``dtype``, multiplied by ``scale``.

    Keys: ``rtol``/``atol`` (round trips, batched vs row by row), ``cancel`` (forward and inverse
    ``ladj`` sum to zero), ``jac`` (``ladj`` vs the autograd Jacobian's ``slogdet``) and ``zero``
    (entries that must vanish: Jacobian structure, identity at initialisation).
    """
    if dtype == torch.float64:
        t = {"rtol": 1e-7, "atol": 1e-9, "cancel": 1e-8, "jac": 1e-6, "zero": 1e-10}
    else:
        t = {"rtol": 1e-4, "atol": 1e-5, "cancel": 1e-5, "jac": 1e-3, "zero": 1e-5}
    return {k: v * scale for k, v in t.items()}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


class _Checker:
    """Carries the test id into every failure message."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, prop: str, msg: str) -> None:
        raise AssertionError(f"{self.label}: {prop}: {msg}")

    def true(self, ok: bool, prop: str, msg: str) -> None:
        if not ok:
            self.fail(prop, msg)

    def close(self, prop: str, actual: Tensor, expected: Tensor, rtol: float, atol: float,
              where: str = "") -> None:
        """``|actual - expected| <= atol + rtol * |expected|`` elementwise (and same shape)."""
        where = f" at {where}" if where else ""
        if actual.shape != expected.shape:
            self.fail(prop, f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}{where}")
        a, e = actual.detach().double(), expected.detach().double()
        if not bool(torch.isfinite(a).all()):
            self.fail(prop, f"non-finite values{where}")
        err = (a - e).abs()
        excess = err - (atol + rtol * e.abs())
        if excess.numel() and bool((excess > 0).any()):
            i = int(excess.flatten().argmax())
            worst, ref = err.flatten()[i].item(), e.flatten()[i].item()
            self.fail(prop, f"max error {err.max().item():.3g}{where} (worst entry {worst:.3g} vs "
                      f"tolerance {atol:.1g} + {rtol:.1g} * |{ref:.4g}|)")

    def finite(self, prop: str, t: Tensor | None, what: str) -> None:
        if t is not None and not bool(torch.isfinite(t).all()):
            self.fail(prop, f"{what} has non-finite entries")

    def raises(self, prop: str, fn: Callable[[], object], exc: type[Exception], needle: str,
               what: str) -> None:
        try:
            fn()
        except exc as e:
            if needle not in str(e):
                self.fail(prop, f"{what}: the {exc.__name__} does not name {needle!r}: {e}")
            return
        except Exception as e:  # noqa: BLE001
            self.fail(prop, f"{what}: raised {type(e).__name__} instead of {exc.__name__}: {e}")
        self.fail(prop, f"{what}: no {exc.__name__} was raised")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed seed, restoring the global random state (CPU and CUDA) after."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _randn(shape: Sequence[int], dtype: torch.dtype, g: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


def _attr(b: Bijection, name: str) -> Tensor | None:
    """``b.name``, looked up through :class:`~torchnf.Inverse` wrappers."""
    while True:
        value = getattr(b, name, None)
        if value is not None or not isinstance(b, Inverse):
            return value
        b = b.bijection


M = TypeVar("M", bound=torch.nn.Module)


def perturb(module: M, scale: float = 0.1, seed: int = 0, *, generator: torch.Generator | None = None) -> M:
    """Add ``scale * randn`` to every parameter of ``module`` in place (seeded) and return it.

    Moves a freshly built layer off the identity so that tests exercise a non-trivial map. The
    noise comes from ``generator`` if given, else from a CPU generator seeded with ``seed``; the
    global random state is untouched.

    Example:
        >>> import torchnf as nf
        >>> layer = perturb(nf.AffineCoupling(4, hidden=(8,)), 0.3)
    """
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    if scale:
        with torch.no_grad():
            for p in module.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return module


def _jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Jacobian of ``fn`` at one event ``x``, flattened to ``(numel out, numel in)``."""
    shape = x.shape
    return torch.autograd.functional.jacobian(lambda v: fn(v.view(shape)).flatten(), x.flatten())


def _as_case(obj: Case | Bijection, overrides: dict) -> Case:
    if isinstance(obj, Case):
        return dataclasses.replace(obj, **overrides)
    if not isinstance(obj, Bijection):
        raise TypeError(f"check_bijection: expected a Case or a Bijection, got {type(obj).__name__}")
    options = {"identity_at_init": False, **overrides}
    return Case(type(obj).__name__, lambda: copy.deepcopy(obj), **options)
