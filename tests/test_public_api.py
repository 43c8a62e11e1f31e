"""Conformance audit of the public API, written from the user's side.

Every bijection class that ``import torchnf as nf`` exposes (``dir(nf)``) is discovered and built
the obvious way: ``nf.X(dim)``, ``nf.X(dim, context_dim=2)``, with ``layers=2`` and
``hidden=(8, 8)`` where the signature takes them (read from ``inspect.signature``). Classes
whose first argument is not a size (``Coupling``, ``Elementwise``, ``MaskedAutoregressive``,
``Compose``, ``Inverse``) are built with every public transformer or with other public parts. A
newly exported class is covered automatically; ``test_every_public_class_is_covered`` fails if
the obvious call does not build it.

Each built bijection is moved off the identity as a user would see it after some training:
one forward pass in training mode on skewed data (data-dependent initialisation, batch
statistics, power iterations), then ``torchnf.testing.perturb`` and a few more training-mode
passes, then ``eval()``. In float64 (and float32 where stated) the audit checks:

* round trips ``x -> z -> x`` and ``z -> x -> z`` and cancelling log-dets, batch shape ``(2, 3)``;
* ``ladj`` against ``slogdet`` of the autograd Jacobian in both directions;
* ``nf.Flow(b)`` integrates to one on a 2-D grid (and a 1-D grid where ``nf.X(1)`` builds);
* ``Flow.save`` / ``nf.load`` gives identical ``log_prob`` (unconditional and conditional);
* bad input raises ``ValueError``/``TypeError`` naming the class and what it received;
* ``sample`` / ``sample_and_log_prob`` shapes, dtypes and agreement with ``log_prob``.

Then the API lines of README/DESIGN verbatim, ``fit`` with and without ``val=``, conditional
flows with ``context=`` on every call, the CLI commands and ``check_bijection`` on a user's own
bijection. Known failures of code still being written are strict ``xfail``s with the reason
(``KNOWN``), so the suite stays green and flags each fix.

``python tests/test_public_api.py`` times ``nf.Flow(nf.X(2)).fit(x)`` with all defaults for
every architecture on 2-D data (the figures reported for slow defaults).
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import torchnf as nf
from torchnf.cli import main as cli
from torchnf.testing import check_bijection, perturb
from torchnf.transformers import Transformer

D, C, H = 3, 2, (8, 8)  # event size of the bijection checks, context size, conditioner widths
PI = math.pi

# ------------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------------

PUBLIC = {name: getattr(nf, name) for name in dir(nf) if not name.startswith("_")}
BIJECTIONS = sorted(n for n, o in PUBLIC.items() if inspect.isclass(o) and issubclass(o, nf.Bijection))
# Architectures: the classes of ``nf.architectures`` that take ``layers`` (the others there are layers).
ARCHITECTURES = sorted(
    n for n in nf.architectures.__all__
    if inspect.isclass(getattr(nf, n, None)) and "layers" in inspect.signature(getattr(nf, n)).parameters
)
TRANSFORMERS = sorted(
    n for n in nf.transformers.__all__
    if inspect.isclass(getattr(nf.transformers, n)) and issubclass(getattr(nf.transformers, n), Transformer)
    and getattr(nf.transformers, n) is not Transformer
)
ABSTRACT = {"Bijection"}  # subclassed by users, never built directly
STRUCTURES = ("Coupling", "Elementwise", "MaskedAutoregressive")  # take a transformer first


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls).parameters)


def obvious(cls: type, dim: int, context_dim: int = 0) -> nf.Bijection:
    """``cls(dim, layers=2, hidden=(8, 8), context_dim=...)`` with the keywords its signature takes."""
    params = _params(cls)
    kw: dict = {}
    if "layers" in params:
        kw["layers"] = 2
    if "hidden" in params:
        kw["hidden"] = H
    if context_dim:
        kw["context_dim"] = context_dim
    return cls(dim, **kw)


# ------------------------------------------------------------------------------------------------
# What to build and how to exercise it
# ------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One public bijection, built the obvious way.

    Attributes:
        name: test id.
        build: ``(dim, context_dim) -> bijection``.
        conditional: the class takes ``context_dim``.
        domain: inputs: ``"real"``, ``"unit"`` ((0, 1)), ``"sym"`` ((-1, 1)) or ``"angle"``
            ([-pi, pi), with a uniform-on-the-torus base).
        tol: multiplier on the round-trip and log-det tolerances (approximate by design).
        tols: fixed tolerances replacing the DESIGN ones (maps accurate only to a solver tolerance).
        normalises: ``nf.Flow(b)`` is a density (false when the image of ``b`` is bounded, so a
            standard normal base does not fit it; ``Inverse`` specs cover those maps).
        fit_first: build by ``nf.Flow(b).fit(x)`` (greedy, gradient-free fits such as SINF).
        slow: the normalisation grid is costly (ODE solves); run it on a coarser grid.
        identity: a fresh build is the identity map (false for fixed maps without parameters, and
            for deep sigmoidal transformers, documented to start near the identity so their units
            differ).
    """

    name: str
    build: Callable[[int, int], nf.Bijection]
    conditional: bool
    domain: str = "real"
    tol: float = 1.0
    tols: dict | None = None
    normalises: bool = True
    fit_first: bool = False
    slow: bool = False
    identity: bool = True
    options: dict = field(default_factory=dict)


# Per-class options, by class name. Tolerances widen only where the map is approximate by
# design: an ODE solve at the default solver tolerances (atol = rtol = 1e-5) is accurate to about
# 1e-4 each way, so round trips and log-dets are checked to 1e-3.
ODE = {"rtol": 1e-3, "atol": 1e-3, "cancel": 1e-3, "jac": 1e-3}
FIXED = {"identity": False}  # maps without parameters
OPTIONS: dict[str, dict] = {
    "Logit": {"domain": "unit", **FIXED},
    "Sigmoid": {"normalises": False, **FIXED},
    "Tanh": {"normalises": False, **FIXED},
    "LeakyReLU": FIXED,
    "Permutation": FIXED,
    "Reverse": FIXED,
    "NAF": {"identity": False},
    "SINF": {"fit_first": True},
    "ContinuousFlow": {"tols": ODE, "slow": True},
    "FFJORD": {"tols": ODE, "slow": True},
}
SPLINE_TRANSFORMERS = {"RationalQuadraticSpline", "LinearRationalSpline", "CircularSpline"}
SPLINE_CLASSES = {"NSF", "LRSNSF", "ElementwiseSpline"}


def _transformer(name: str) -> Transformer:
    return getattr(nf.transformers, name)()


def _structure_spec(structure: str, tname: str) -> Spec:
    cls = getattr(nf, structure)

    def build(dim: int, context_dim: int) -> nf.Bijection:
        return cls(_transformer(tname), dim, context_dim=context_dim, hidden=H)

    domain = "angle" if tname == "CircularSpline" else "real"
    return Spec(f"{structure}-{tname}", build, True, domain=domain, identity=tname != "DeepSigmoid")


def _special_specs() -> dict[str, list[Spec]]:
    def custom(dim: int, context_dim: int) -> nf.Bijection:  # the DESIGN custom example, small
        return nf.Compose(nf.ActNorm(dim), nf.AffineCoupling(dim, context_dim=context_dim, hidden=H),
                          nf.LULinear(dim))

    return {
        "Compose": [Spec("Compose", custom, True)],
        "Inverse": [
            Spec("Inverse-MAF", lambda d, c: nf.Inverse(nf.MAF(d, context_dim=c, layers=2, hidden=H)), True),
            Spec("Inverse-Sigmoid", lambda d, c: nf.Inverse(nf.Sigmoid(d)), False, domain="unit", **FIXED),
            Spec("Inverse-Tanh", lambda d, c: nf.Inverse(nf.Tanh(d)), False, domain="sym", **FIXED),
        ],
        **{s: [_structure_spec(s, t) for t in TRANSFORMERS] for s in STRUCTURES},
    }


def _generic_spec(name: str) -> Spec:
    cls = PUBLIC[name]
    return Spec(name, lambda d, c: obvious(cls, d, c), "context_dim" in _params(cls), **OPTIONS.get(name, {}))


def all_specs() -> list[Spec]:
    special = _special_specs()
    out: list[Spec] = []
    for name in BIJECTIONS:
        if name in ABSTRACT:
            continue
        out.extend(special.get(name) or [_generic_spec(name)])
    return out


SPECS = all_specs()
BY_NAME = {s.name: s for s in SPECS}

# Known failures of code whose owners are still at work: (spec name, check) -> reason.
# Each runs as a strict xfail, so a fix turns it into a failure that asks for removal here.
KNOWN: dict[tuple[str, str], str] = {}


def _cases(check: str, *, dims: tuple[int, ...] = (D,), conditional: bool = True,
           only_conditional: bool = False, dtypes: tuple[torch.dtype, ...] = (torch.float64,),
           where: Callable[[Spec], bool] | None = None):
    """``pytest.param(spec, context_dim, dtype, dim)`` for every spec (and its conditional variant)."""
    out = []
    for s in SPECS:
        if (where is not None and not where(s)) or (only_conditional and not s.conditional):
            continue
        for cdim in ((C,) if only_conditional else (0, C) if conditional and s.conditional else (0,)):
            for dtype in dtypes:
                sid = s.name + ("-context" if cdim else "")
                pid = sid + ("" if len(dtypes) == 1 else "-" + str(dtype).removeprefix("torch."))
                reason = KNOWN.get((sid, check)) or KNOWN.get((s.name, check))
                marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
                for dim in dims:
                    if cdim and dim < max(dims):  # conditional variants: the largest dim only
                        continue
                    suffix = f"-{dim}d" if len(dims) > 1 else ""
                    out.append(pytest.param(s, cdim, dtype, dim, id=pid + suffix, marks=marks))
    return out


# ------------------------------------------------------------------------------------------------
# Inputs and a prepared (non-identity) bijection
# ------------------------------------------------------------------------------------------------


def inputs(domain: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if domain == "real":
        u = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (1.3 * u + 0.4 * u.roll(1, -1) ** 2 - 0.2).to(dtype)  # skewed, correlated
    u = torch.rand(*shape, generator=g, dtype=torch.float64)
    lo, hi = {"unit": (0.02, 0.98), "sym": (-0.96, 0.96), "angle": (-PI, PI)}[domain]
    return (lo + (hi - lo) * u).to(dtype)


def contexts(cdim: int, batch: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> Tensor | None:
    if not cdim:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, cdim, generator=g, dtype=torch.float64).to(dtype)


def base_for(spec: Spec, dim: int) -> nf.Distribution | None:
    return nf.UniformTorus(dim) if spec.domain == "angle" else None


_PREPARED: dict[tuple[str, int, int], nf.Bijection] = {}


def prepared(spec: Spec, cdim: int, dtype: torch.dtype, dim: int = D) -> nf.Bijection:
    """The bijection built under a fixed seed and moved off the identity, in ``eval()`` and ``dtype``
    (a fresh deep copy each call)."""
    key = (spec.name, cdim, dim)
    if key not in _PREPARED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            b = spec.build(dim, cdim)
            x = inputs(spec.domain, (256, dim), torch.float32, seed=5)
            c = contexts(cdim, (256,), torch.float32, seed=6)
            if spec.fit_first:
                nf.Flow(b).fit(x, progress=False, seed=0)
            b.train()
            with torch.no_grad():
                b(x, c)  # data-dependent initialisation, batch statistics
            perturb(b, 0.1, seed=2)
            with torch.no_grad():
                for _ in range(3):  # let running estimates (power iterations, statistics) follow
                    b(x, c)
            b.eval()
        _PREPARED[key] = b
    return copy.deepcopy(_PREPARED[key]).to(dtype)


def tol(dtype: torch.dtype, spec: Spec) -> dict[str, float]:
    """DESIGN tolerances: float64 rtol 1e-7, atol 1e-9, log-det 1e-6; float32 1e-4, 1e-5, 1e-3
    (splines 1e-3 for round trips in float32)."""
    if spec.tols is not None:
        return dict(spec.tols)
    if dtype == torch.float64:
        t = {"rtol": 1e-7, "atol": 1e-9, "cancel": 1e-8, "jac": 1e-6}
    else:
        t = {"rtol": 1e-4, "atol": 1e-5, "cancel": 1e-5, "jac": 1e-3}
        if _is_spline(spec):
            t = {"rtol": 1e-3, "atol": 1e-3, "cancel": 1e-4, "jac": 1e-3}
    return {k: v * spec.tol for k, v in t.items()}


def _is_spline(spec: Spec) -> bool:
    return spec.name.split("-")[0] in SPLINE_CLASSES or any(t in spec.name for t in SPLINE_TRANSFORMERS)


def assert_close(actual: Tensor, expected: Tensor, rtol: float, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    assert bool(torch.isfinite(actual).all()), f"{what}: non-finite values"
    assert bool((err <= bound).all()), (
        f"{what}: max error {float(err.max()):.3g} (rtol {rtol:g}, atol {atol:g})")


# ------------------------------------------------------------------------------------------------
# Discovery itself
# ------------------------------------------------------------------------------------------------


def test_every_public_class_is_covered():
    """Each public bijection class builds the obvious way (a new class needs no edit here unless
    its first argument is not a size) and every architecture takes the shared signature."""
    assert {"RealNVP", "MAF", "IAF", "NICE", "NSF", "Flow"} <= set(PUBLIC)
    covered = {s.name.split("-")[0] for s in SPECS} | ABSTRACT
    assert set(BIJECTIONS) <= covered, sorted(set(BIJECTIONS) - covered)
    for s in SPECS:
        b = s.build(D, C if s.conditional else 0)
        assert isinstance(b, nf.Bijection), s.name
        assert b.context_dim == (C if s.conditional else 0), s.name
        assert tuple(b.event_shape) == (D,), s.name
        assert b.fast_direction in ("both", "forward", "inverse", "neither"), s.name
    for name in ARCHITECTURES:
        params = _params(PUBLIC[name])
        first = next(iter(params))
        assert first == "dim", f"{name}: first argument is {first!r}, expected dim"
        for kw in ("context_dim", "layers", "hidden"):
            if kw in params:
                assert params[kw].kind == inspect.Parameter.KEYWORD_ONLY, f"{name}: {kw} is not keyword-only"


_NAMES = sorted(n for n, o in PUBLIC.items() if inspect.isclass(o)) + TRANSFORMERS
_COMPONENT = r"^(" + "|".join(_NAMES) + r")\b"  # an error message that starts by naming a component


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_bad_constructor_arguments_raise(spec):
    """``nf.X(0)`` and ``nf.X(3, context_dim=-1)`` raise ValueError/TypeError whose message starts
    with the name of the component that rejected the value."""
    with pytest.raises((ValueError, TypeError), match=_COMPONENT):
        spec.build(0, 0)
    if spec.conditional:
        with pytest.raises((ValueError, TypeError), match=_COMPONENT + ".*context_dim"):
            spec.build(D, -1)


def _architecture_cases(check: str) -> list:
    return [pytest.param(n, marks=[pytest.mark.xfail(reason=KNOWN[(n, check)], strict=True)]
                         if (n, check) in KNOWN else [], id=n) for n in ARCHITECTURES]


@pytest.mark.parametrize("name", _architecture_cases("layers=0"))
def test_zero_layers_raise_naming_layers(name):
    with pytest.raises((ValueError, TypeError), match=rf"{name}\b.*layers"):
        PUBLIC[name](2, layers=0)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("name", _architecture_cases("hidden=(0,)"))
def test_zero_width_hidden_layers_raise(name):
    if "hidden" not in _params(PUBLIC[name]):
        pytest.skip(f"{name} takes no hidden widths")
    kw = {"context_dim": 1} if "context_dim" in _params(PUBLIC[name]) else {}  # hidden may size a context net
    with pytest.raises((ValueError, TypeError), match="hidden"):
        PUBLIC[name](2, hidden=(0,), **kw)


# ------------------------------------------------------------------------------------------------
# Bijection checks over every spec
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases("identity", where=lambda s: s.identity))
def test_identity_at_initialisation(spec, cdim, dtype, dim):
    """``nf.X(...)`` as built maps ``x`` to itself with zero log-det, both ways, with any context."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        b = spec.build(D, cdim).to(dtype).eval()
    x, ctx = inputs(spec.domain, (5, D), dtype), contexts(cdim, (5,), dtype)
    with torch.no_grad():
        for direction in (b.forward, b.inverse):
            y, ladj = direction(x, ctx)
            assert_close(y, x, 1e-12, 1e-12, f"{direction.__name__}: output")
            assert_close(ladj, torch.zeros_like(ladj), 0, 1e-12, f"{direction.__name__}: ladj")


BOTH = (torch.float64, torch.float32)


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases("round_trip", dtypes=BOTH))
def test_round_trip(spec, cdim, dtype, dim):
    b, t = prepared(spec, cdim, dtype), tol(dtype, spec)
    x = inputs(spec.domain, (2, 3, D), dtype)
    ctx = contexts(cdim, (2, 3), dtype)
    with torch.no_grad():
        z, ladj = b(x, ctx)
        x2, ladj2 = b.inverse(z, ctx)
        z0 = b(inputs(spec.domain, (2, 3, D), dtype, seed=3), ctx)[0]  # a point of the image
        x3, ladj3 = b.inverse(z0, ctx)
        z3, ladj4 = b(x3, ctx)
    assert z.shape == (2, 3, D) and ladj.shape == (2, 3) and z.dtype == dtype and ladj.dtype == dtype
    assert not torch.allclose(z, x), "the prepared bijection is still the identity"
    assert_close(x2, x, t["rtol"], t["atol"], "x -> z -> x")
    assert_close(z3, z0, t["rtol"], t["atol"], "z -> x -> z")
    scale = 1 + float(ladj.abs().max())
    assert_close(ladj + ladj2, torch.zeros_like(ladj), 0, t["cancel"] * scale, "forward + inverse ladj")
    assert_close(ladj3 + ladj4, torch.zeros_like(ladj), 0, t["cancel"] * scale, "inverse + forward ladj")


def _jacobian_logdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    jac = torch.autograd.functional.jacobian(fn, x)
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases("log_det"))
def test_log_det_matches_autograd_jacobian(spec, cdim, dtype, dim):
    b, t = prepared(spec, cdim, dtype), tol(dtype, spec)
    x = inputs(spec.domain, (3, D), dtype, seed=4)
    ctx = contexts(cdim, (3,), dtype)
    for i in range(3):
        c = None if ctx is None else ctx[i]
        z, ladj = b(x[i], c)
        expected = _jacobian_logdet(lambda v, c=c: b(v, c)[0], x[i])
        assert_close(ladj.detach(), expected, t["jac"], t["jac"], f"forward ladj at point {i}")
        x2, ladj2 = b.inverse(z.detach(), c)
        expected = _jacobian_logdet(lambda v, c=c: b.inverse(v, c)[0], z.detach())
        assert_close(ladj2.detach(), expected, t["jac"], t["jac"], f"inverse ladj at point {i}")


def _iterative_cases() -> list:
    out = []
    for s in SPECS:
        cls = PUBLIC.get(s.name)
        if cls is None or "max_iter" not in _params(cls):
            continue
        reason = KNOWN.get((s.name, "max_iter"))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(s, id=s.name, marks=marks))
    return out


@pytest.mark.parametrize("spec", _iterative_cases())
def test_iterative_inverse_never_fails_silently(spec):
    """Built with ``max_iter=2``, the iterative direction either raises an error that says it did not
    converge or returns an accurate answer; it never returns a wrong one quietly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        b = perturb(PUBLIC[spec.name](D, max_iter=2), 0.5, seed=2).double().eval()
    t = tol(torch.float64, spec)
    x = inputs(spec.domain, (16, D), torch.float64) * 2
    for first, second in ((b.forward, b.inverse), (b.inverse, b.forward)):
        try:
            with torch.no_grad():
                y = first(x)[0]
                back = second(y)[0]
        except (RuntimeError, ValueError) as e:  # the message names the component and the cap
            assert re.match(_COMPONENT, str(e)) and re.search("converge|max_iter", str(e)), f"unclear: {e}"
            continue
        assert_close(back, x, t["rtol"], t["atol"], "round trip with max_iter=2 (no error raised)")


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases("context", only_conditional=True))
def test_context_reaches_every_transformed_feature(spec, cdim, dtype, dim):
    """``d z_i / d context`` is non-zero for every output feature of ``forward`` that a conditional
    bijection transforms (all of them, except the untouched half of a single coupling layer); the
    inverse depends on the context too."""
    b = prepared(spec, cdim, dtype)
    x, c = inputs(spec.domain, (D,), dtype, seed=7), contexts(cdim, (), dtype, seed=8)
    mask = getattr(b, "mask", None)
    rows = torch.ones(D, dtype=torch.bool) if mask is None else mask.flatten().bool()
    jac = torch.autograd.functional.jacobian(lambda v: b(x, v)[0], c)
    missed = (rows & ~(jac.abs().amax(-1) > 1e-9)).nonzero().flatten().tolist()
    assert not missed, f"forward: output features {missed} do not depend on the context"
    z = b(x, c)[0].detach()
    jac = torch.autograd.functional.jacobian(lambda v: b.inverse(z, v)[0], c)
    assert float(jac.abs().max()) > 1e-9, "inverse: the output does not depend on the context"


# Midpoint-rule grids per domain: segments (lo, hi, cells in 1-D, cells in 2-D). LeakyReLU's
# default slope 0.01 stretches the negative side a hundredfold, so its density reaches x ~ -700.
GRIDS = {
    "real": [(-7.0, 7.0, 4000, 160)],
    "unit": [(0.0, 1.0, 4000, 400)],
    "sym": [(-1.0, 1.0, 4000, 400)],
    "angle": [(-PI, PI, 4000, 160)],
    "wide": [(-800.0, -7.0, 2000, 400), (-7.0, 7.0, 2000, 280)],
}


def _grid(domain: str, dim: int, coarse: bool) -> tuple[Tensor, Tensor]:
    """Cell centres ``(n^dim, dim)`` and cell volumes ``(n^dim,)``."""
    centres, widths = [], []
    for lo, hi, n1, n2 in GRIDS[domain]:
        n = n1 if dim == 1 else (n2 * 5) // 8 if coarse else n2
        h = (hi - lo) / n
        centres.append(lo + h * (torch.arange(n, dtype=torch.float64) + 0.5))
        widths.append(torch.full((n,), h, dtype=torch.float64))
    axis, width = torch.cat(centres), torch.cat(widths)
    pts = torch.stack(torch.meshgrid(*[axis] * dim, indexing="ij"), -1).reshape(-1, dim)
    vol = torch.stack(torch.meshgrid(*[width] * dim, indexing="ij"), -1).reshape(-1, dim).prod(-1)
    return pts, vol


def _can_build(spec: Spec, dim: int) -> bool:
    try:
        spec.build(dim, 0)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases(
    "normalisation", dims=(1, 2), where=lambda s: s.normalises))
def test_flow_density_integrates_to_one(spec, cdim, dtype, dim):
    """On a 1-D and 2-D grid; a conditional flow for one fixed context, in 2-D."""
    if not _can_build(spec, dim):
        pytest.skip(f"{spec.name} does not take dim={dim}")
    flow = nf.Flow(prepared(spec, cdim, dtype, dim=dim), base=base_for(spec, dim)).to(dtype).eval()
    pts, vol = _grid(spec.domain if spec.name != "LeakyReLU" else "wide", dim, spec.slow)
    ctx = contexts(cdim, (), dtype)
    with torch.no_grad():
        lp = torch.cat([flow.log_prob(p, ctx) for p in pts.split(16384)])
    assert bool(torch.isfinite(lp).all()), "non-finite log_prob on the grid"
    total = float((lp.exp() * vol).sum())
    assert abs(total - 1) < 2e-3, f"density integrates to {total:.6f} on the {dim}-D grid"


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases("save_load", dtypes=(torch.float32, torch.float64)))
def test_save_load_identical_log_prob(spec, cdim, dtype, dim, tmp_path):
    flow = nf.Flow(prepared(spec, cdim, dtype), base=base_for(spec, D)).to(dtype).eval()
    x, ctx = inputs(spec.domain, (6, D), dtype), contexts(cdim, (6,), dtype)
    with torch.no_grad():
        before = flow.log_prob(x, ctx)
    flow.save(tmp_path / "flow.pt")
    loaded = nf.load(tmp_path / "flow.pt")
    assert type(loaded.bijection) is type(flow.bijection)
    assert loaded.context_dim == cdim
    with torch.no_grad():
        after = loaded.log_prob(x, ctx)
        again = loaded.log_prob(x, ctx)
    assert after.dtype == dtype
    assert torch.equal(after, before), f"max difference {float((after - before).abs().max()):.3g}"
    assert torch.equal(again, before), "a second log_prob of the loaded flow differs (state changed)"


def _raises(exc, fn, *needles: str) -> str:
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{type(info.value).__name__} message {msg!r} does not mention {needle!r}"
    return msg


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases("bad_input"))
def test_bad_input_raises_clear_errors(spec, cdim, dtype, dim):
    b = prepared(spec, cdim, dtype)
    flow = nf.Flow(b, base=base_for(spec, D)).to(dtype)
    name = type(b).__name__
    x, ctx = inputs(spec.domain, (5, D), dtype), contexts(cdim, (5,), dtype)
    wrong = torch.zeros(5, D + 1, dtype=dtype)
    # wrong event shape: every entry point, naming the class and the received shape
    for fn in (b, b.inverse):
        _raises(ValueError, lambda fn=fn: fn(wrong, ctx), name, "(5, 4)")
    for fn in (flow.log_prob, flow.transform, flow.inverse_transform):
        _raises(ValueError, lambda fn=fn: fn(wrong, ctx), "Flow", "(5, 4)")
    _raises(ValueError, lambda: flow.log_prob(torch.zeros(D, 1, dtype=dtype), ctx), "Flow")
    # NaN and inf rows are named
    for bad in (math.nan, math.inf, -math.inf):
        xb = x.clone()
        xb[3, 1] = bad
        _raises(ValueError, lambda xb=xb: flow.log_prob(xb, ctx), "Flow", "3")
    # context: unexpected, missing, wrong width, wrong batch
    if not cdim:
        c = torch.zeros(5, C, dtype=dtype)
        _raises(ValueError, lambda: b(x, c), name)
        _raises(ValueError, lambda: flow.log_prob(x, c), "Flow")
        _raises(ValueError, lambda: flow.sample(4, context=c), "Flow")
    else:
        for fn in (b, b.inverse, flow.log_prob):
            _raises(ValueError, lambda fn=fn: fn(x), "context")
        _raises(ValueError, lambda: flow.sample(4), "context")
        w = torch.zeros(5, C + 1, dtype=dtype)
        for fn in (b, flow.log_prob):
            _raises(ValueError, lambda fn=fn: fn(x, w), f"(5, {C + 1})")
        _raises(ValueError, lambda: flow.sample(4, context=w), f"(5, {C + 1})")
        _raises(ValueError, lambda: flow.log_prob(x, torch.zeros(4, C, dtype=dtype)), "(4,)", "(5,)")
    # dtype mismatch: a float32 flow given float64 data
    flow32 = copy.deepcopy(flow).float()
    c32 = None if ctx is None else ctx.float()
    _raises((TypeError, ValueError), lambda: flow32.log_prob(x.double(), c32), "float64", "float32")
    if any(t.is_floating_point() for t in [*b.parameters(), *b.buffers()]):  # else it follows the input
        b32 = flow32.bijection
        _raises((TypeError, ValueError), lambda: b32(x.double(), c32), name, "float64", "float32")
    # sample shapes
    _raises(ValueError, lambda: flow.sample(-1, context=None if ctx is None else ctx[0]), "Flow")
    _raises(TypeError, lambda: flow.sample(2.5, context=None if ctx is None else ctx[0]), "Flow")
    # not a tensor
    for bad in (x.tolist(), x.numpy(), "x"):
        _raises(TypeError, lambda bad=bad: flow.log_prob(bad, ctx), "Tensor")
    _raises(TypeError, lambda: b(x.tolist(), ctx), "Tensor")


@pytest.mark.parametrize("spec, cdim, dtype, dim", _cases(
    "sampling", dtypes=BOTH, where=lambda s: s.normalises))
def test_sample_shapes_and_log_prob(spec, cdim, dtype, dim):
    flow = nf.Flow(prepared(spec, cdim, dtype), base=base_for(spec, D)).to(dtype).eval()
    t = tol(dtype, spec)
    one, many = contexts(cdim, (), dtype), contexts(cdim, (4,), dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calls = [(50, one, (50,)), ((2, 3), one, (2, 3))]
        if cdim:
            calls += [(5, many, (5, 4)), ((), many, (4,))]
        for shape, ctx, batch in calls:
            x = flow.sample(shape, context=ctx)
            assert x.shape == (*batch, D) and x.dtype == dtype, f"sample({shape}): {tuple(x.shape)} {x.dtype}"
            assert bool(torch.isfinite(x).all())
            xs, lp = flow.sample_and_log_prob(shape, context=ctx)
            assert xs.shape == (*batch, D) and lp.shape == batch and lp.dtype == dtype
            with torch.no_grad():
                ref = flow.log_prob(xs, ctx)
            assert_close(lp, ref, t["jac"], t["jac"], f"sample_and_log_prob({shape}) vs log_prob")
            assert not xs.requires_grad and not lp.requires_grad
            if ctx is None or ctx.dim() == 1:  # any leading batch shape, down to a single event
                with torch.no_grad():
                    flat = flow.log_prob(xs.reshape(-1, D), ctx).reshape(batch)
                    single = flow.log_prob(xs.reshape(-1, D)[0], ctx)
                assert_close(flat, ref, t["rtol"], t["atol"], "log_prob of the flattened batch")
                assert single.shape == ()
                assert_close(single, flat.flatten()[0], t["rtol"], t["atol"], "log_prob of a single event")
        xr = flow.rsample(4, context=one)
        assert xr.shape == (4, D)
        if any(p.requires_grad for p in flow.parameters()):
            assert xr.requires_grad, "rsample is not differentiable"


# ------------------------------------------------------------------------------------------------
# The API as users write it
# ------------------------------------------------------------------------------------------------


def _gaussian_nll(x: Tensor) -> float:
    """NLL per point of the maximum-likelihood Gaussian: the bar any fitted flow must beat."""
    x = x.double()
    cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    return 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))


@pytest.mark.slow
def test_seed_api_verbatim():
    """``flow = Flow(RealNVP(n_dim)); flow.fit(x); flow.log_prob(x); flow.sample(50)``, all defaults."""
    x = _toy(2000)
    n_dim = x.shape[1]
    flow = nf.Flow(nf.RealNVP(n_dim))
    flow.fit(x)
    lp = flow.log_prob(x)
    samples = flow.sample(50)
    assert lp.shape == (2000,) and samples.shape == (50, 2) and bool(torch.isfinite(samples).all())
    assert float(-lp.detach().mean()) < _gaussian_nll(x) - 0.1, "the default RealNVP does not beat a Gaussian"


@pytest.mark.parametrize("name", ARCHITECTURES + ["SINF"])
def test_every_architecture_fits_with_its_defaults(name):
    """``nf.Flow(nf.X(2)).fit(x)`` with the architecture's defaults (a short budget; the full default
    budget is timed by running this file) gives finite losses, samples and densities."""
    x = _toy(512)
    torch.manual_seed(0)
    flow = nf.Flow(getattr(nf, name)(2))
    budget = {} if name == "SINF" else {"epochs": 2, "batch_size": 128}
    history = flow.fit(x, progress=False, seed=0, **budget)
    assert history.train and all(math.isfinite(v) for v in history.train)
    assert len(history.val) == len(history.train), "a validation split is made when val= is not given"
    assert not flow.training, "fit leaves the flow in eval() mode"
    with torch.no_grad():
        lp = flow.log_prob(x)
        xs, lq = flow.sample_and_log_prob(20)
    assert all(bool(torch.isfinite(t).all()) for t in (lp, xs, lq))


def _trained_cases() -> list:
    out = []
    for name in ARCHITECTURES + ["SINF"]:
        marks = [pytest.mark.slow] if BY_NAME[name].slow else []
        if (name, "trained") in KNOWN:
            marks.append(pytest.mark.xfail(reason=KNOWN[(name, "trained")], strict=True))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


@pytest.mark.parametrize("name", _trained_cases())
def test_trained_architecture_round_trip_and_log_det(name):
    """After 60 Adam steps at lr 1e-2 (parameters far from the identity, as in use), float64 round
    trips both ways and log-dets against the autograd Jacobian still hold."""
    spec, x = BY_NAME[name], _toy(1024)
    torch.manual_seed(0)
    flow = nf.Flow(obvious(PUBLIC[name], 2))
    budget = {} if spec.fit_first else {"epochs": 100, "max_steps": 60, "lr": 1e-2, "batch_size": 128}
    flow.fit(x, progress=False, seed=0, **budget)
    assert float(-flow.log_prob(x).detach().mean()) < _gaussian_nll(x) + 0.5
    b, t = flow.double().bijection.eval(), tol(torch.float64, spec)
    xx = x[:32].double()
    with torch.no_grad():
        z, ladj = b(xx)
        x2, ladj2 = b.inverse(z)
        z0 = flow.base.sample(32)
        x3, ladj3 = b.inverse(z0)
        z3, ladj4 = b(x3)
    assert_close(x2, xx, t["rtol"], t["atol"], "x -> z -> x")
    assert_close(z3, z0, t["rtol"], t["atol"], "z -> x -> z")
    for total, scale in ((ladj + ladj2, ladj), (ladj3 + ladj4, ladj3)):
        bound = t["cancel"] * (1 + float(scale.abs().max()))
        assert_close(total, torch.zeros_like(total), 0, bound, "forward and inverse ladj cancel")
    for i in range(2):
        expected = _jacobian_logdet(lambda v: b(v)[0], xx[i])
        assert_close(ladj[i], expected, t["jac"], t["jac"], f"forward ladj at point {i}")
        expected = _jacobian_logdet(lambda v: b.inverse(v)[0], z0[i])
        assert_close(ladj3[i], expected, t["jac"], t["jac"], f"inverse ladj at point {i}")


def _design_flows() -> dict[str, Callable[[], nf.Flow]]:
    d = 8
    return {
        "NSF-coupling": lambda: nf.Flow(nf.NSF(8, layers=5, hidden=(256, 256), bins=8, bound=5.0,
                                               coupling=True)),
        "NSF-autoregressive": lambda: nf.Flow(nf.NSF(8, layers=5, hidden=(256, 256), bins=8, bound=5.0,
                                                     coupling=False)),
        "MAF": lambda: nf.Flow(nf.MAF(8, layers=5, hidden=(256, 256))),
        "RealNVP": lambda: nf.Flow(nf.RealNVP(8, layers=8, hidden=(256, 256))),
        "custom": lambda: nf.Flow(nf.Compose(nf.ActNorm(d), nf.AffineCoupling(d), nf.LULinear(d)),
                                  base=nf.GaussianMixture(d, components=8)),
    }


@pytest.mark.parametrize("name", list(_design_flows()))
def test_design_api_lines_verbatim(name, tmp_path):
    """The DESIGN's API block: fit with val= (per-epoch losses), log_prob, sample,
    sample_and_log_prob, transform / inverse_transform, save / load."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(8, 8, generator=g) / 3
    x, x_val = torch.randn(384, 8, generator=g) @ mix + 1, torch.randn(128, 8, generator=g) @ mix + 1
    torch.manual_seed(0)
    flow = _design_flows()[name]()
    history = flow.fit(x, val=x_val, epochs=2, progress=False)
    assert len(history.train) == len(history.val) == history.epochs == 2
    assert history["val"] == history.val and all(math.isfinite(v) for v in history.val)
    assert flow.log_prob(x).shape == (384,)
    assert flow.sample(50).shape == (50, 8)
    xs, lq = flow.sample_and_log_prob(50)
    assert xs.shape == (50, 8) and lq.shape == (50,)
    torch.testing.assert_close(lq, flow.log_prob(xs), rtol=1e-3, atol=1e-3)
    z = flow.transform(x)
    torch.testing.assert_close(flow.inverse_transform(z), x, rtol=1e-4, atol=1e-4)
    flow.save(tmp_path / "model.pt")
    same = nf.load(tmp_path / "model.pt")
    assert torch.equal(same.log_prob(x), flow.log_prob(x))


def test_fit_returns_per_epoch_losses_and_lowers_the_validation_nll():
    x, x_val = _toy(1024), _toy(512, seed=1)
    flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(32, 32)))
    with torch.no_grad():
        before = float(-flow.log_prob(x_val).mean())
    history = flow.fit(x, val=x_val, epochs=8, lr=5e-3, progress=False, seed=0)
    assert len(history.train) == len(history.val) == history.epochs == 8
    assert history.best_val == min(history.val)
    with torch.no_grad():
        after = float(-flow.log_prob(x_val).mean())
    assert after == pytest.approx(history.best_val, abs=1e-4), "the best weights are restored"
    assert after < before - 0.3 and after < _gaussian_nll(x_val)


def test_fit_rejects_bad_input_clearly():
    flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=H))
    cond = nf.Flow(nf.MAF(2, context_dim=1, layers=2, hidden=H))
    x = _toy(40)
    bad = x.clone()
    bad[17, 0] = math.inf
    _raises(ValueError, lambda: flow.fit(torch.zeros(40, 3), progress=False), "fit", "(N, 2)", "(40, 3)")
    _raises(ValueError, lambda: flow.fit(bad, progress=False), "fit", "NaN or inf", "17")
    _raises(ValueError, lambda: flow.fit(x, val=bad, progress=False), "val", "17")
    _raises(ValueError, lambda: flow.fit(x, context=torch.zeros(40, 1), progress=False), "unconditional")
    _raises(ValueError, lambda: cond.fit(x, progress=False), "context_dim=1")
    _raises(ValueError, lambda: cond.fit(x, context=torch.zeros(39, 1), progress=False), "(40, 1)", "(39, 1)")
    _raises(ValueError, lambda: flow.fit(x, epochs=0, progress=False), "epochs")
    _raises(TypeError, lambda: flow.fit(x, epoch=3, progress=False), "epoch")
    _raises(TypeError, lambda: flow.fit("x.npy", progress=False), "x")


CONDITIONAL_ARCHITECTURES = [n for n in ARCHITECTURES if "context_dim" in _params(PUBLIC[n])]


@pytest.mark.parametrize("name", CONDITIONAL_ARCHITECTURES)
def test_conditional_flow_takes_context_on_every_call(name, tmp_path):
    """``nf.Flow(nf.X(2, context_dim=1))``: fit, log_prob, sample, sample_and_log_prob, rsample,
    transform / inverse_transform and save / load, each with ``context=``."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(512, 1, generator=g)
    x = torch.cat([c, c**2], 1) + 0.3 * torch.randn(512, 2, generator=g)
    torch.manual_seed(0)
    flow = nf.Flow(obvious(PUBLIC[name], 2, context_dim=1))
    history = flow.fit(x[:384], context=c[:384], val=x[384:], val_context=c[384:], epochs=2, batch_size=128,
                       progress=False)
    assert len(history.val) == 2
    lp = flow.log_prob(x, context=c)
    assert lp.shape == (512,) and bool(torch.isfinite(lp).all())
    assert not torch.allclose(flow.log_prob(x, context=c + 1), lp), "the context is ignored"
    assert flow.sample(5, context=c[0]).shape == (5, 2)
    assert flow.sample(5, context=c[:4]).shape == (5, 4, 2)
    xs, lq = flow.sample_and_log_prob(3, context=c[:4])
    assert xs.shape == (3, 4, 2) and lq.shape == (3, 4)
    assert flow.rsample(2, context=c[0]).shape == (2, 2)
    z = flow.transform(x[:6], context=c[:6])
    torch.testing.assert_close(flow.inverse_transform(z, context=c[:6]), x[:6], rtol=1e-3, atol=1e-3)
    flow.save(tmp_path / "cond.pt")
    assert torch.equal(nf.load(tmp_path / "cond.pt").log_prob(x, context=c), lp)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(x)


# ------------------------------------------------------------------------------------------------
# Base distributions
# ------------------------------------------------------------------------------------------------

DISTRIBUTIONS = sorted(n for n, o in PUBLIC.items() if inspect.isclass(o) and issubclass(o, nf.Distribution)
                       and o is not nf.Distribution)


def _distribution(name: str, cdim: int) -> nf.Distribution:
    cls = PUBLIC[name]
    dist = cls(2, context_dim=cdim, hidden=H) if cdim else cls(2)
    return perturb(dist, 0.2, seed=3)


@pytest.mark.parametrize("name, cdim", [(n, c) for n in DISTRIBUTIONS
                                        for c in ((0, C) if "context_dim" in _params(PUBLIC[n]) else (0,))],
                         ids=lambda v: str(v))
def test_base_distributions(name, cdim, tmp_path):
    """``nf.X(2)``: normalised on a grid, sample shapes, bad input, and save / load as a flow's base."""
    dist = _distribution(name, cdim).double()
    angle = name == "UniformTorus"
    ctx = contexts(cdim, (), torch.float64)
    pts, vol = _grid("angle" if angle else "real", 2, coarse=False)
    with torch.no_grad():
        total = float((dist.log_prob(pts, ctx).exp() * vol).sum())
        x = dist.sample((5, 3), context=ctx)
        lp = dist.log_prob(x, ctx)
    assert abs(total - 1) < 2e-3, f"{name} integrates to {total:.6f}"
    assert x.shape == (5, 3, 2) and x.dtype == torch.float64 and lp.shape == (5, 3)
    assert bool(torch.isfinite(lp).all())
    if cdim:
        assert dist.sample(4, context=contexts(cdim, (6,), torch.float64)).shape == (4, 6, 2)
        _raises(ValueError, lambda: dist.log_prob(x), "context")
    _raises(ValueError, lambda: dist.log_prob(torch.zeros(4, 3, dtype=torch.float64), ctx), name, "(4, 3)")
    _raises(TypeError, lambda: dist.log_prob([[0.0, 0.0]], ctx), name)
    flow = nf.Flow(nf.ElementwiseAffine(2), base=dist).double().eval()
    data = x.reshape(-1, 2)
    flow.save(tmp_path / "base.pt")
    assert torch.equal(nf.load(tmp_path / "base.pt").log_prob(data, ctx), flow.log_prob(data, ctx))


# ------------------------------------------------------------------------------------------------
# Using flows (issue 5): the one-line entry points
# ------------------------------------------------------------------------------------------------


def test_inference_entry_points():
    """``fit_variational`` returns an ELBO history; ``OutlierDetector`` calibrates, scores and flags;
    ``probability`` / ``expectation`` carry standard errors (checked on a standard normal flow)."""
    target = nf.targets.GaussianTarget(torch.tensor([1.0, -1.0]), torch.eye(2) * 0.5)
    flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=H))
    result = flow.fit_variational(target, steps=30, samples=64, lr=1e-2, progress=False, seed=0)
    assert len(result.elbo) == 30 and all(math.isfinite(v) for v in result.elbo)
    assert sum(result.elbo[-5:]) / 5 > sum(result.elbo[:5]) / 5

    normal = nf.Flow(nf.ElementwiseAffine(2))  # identity at initialisation: exactly N(0, I)
    g = torch.Generator().manual_seed(0)
    clean, shifted = torch.randn(2000, 2, generator=g), torch.randn(200, 2, generator=g) + 6
    detector = nf.OutlierDetector(normal).calibrate(clean)
    assert detector.score(shifted).shape == detector.pvalues(shifted).shape == (200,)
    flags = detector.predict(torch.cat([torch.randn(2000, 2, generator=g), shifted]), alpha=0.05)
    assert flags.dtype == torch.bool and bool(flags[2000:].all())
    assert abs(float(flags[:2000].float().mean()) - 0.05) < 0.02
    p = normal.probability(lambda x: x[..., 0] > 0, n=20_000, seed=0)
    e = normal.expectation(lambda x: x[..., 1] ** 2, n=20_000, seed=0)
    assert abs(p.estimate - 0.5) < 4 * p.stderr and abs(e.estimate - 1.0) < 4 * e.stderr


# ------------------------------------------------------------------------------------------------
# A user's own bijection through torchnf.testing.check_bijection
# ------------------------------------------------------------------------------------------------


class UserShear(nf.Bijection):
    """``z = exp(s) * (x_1, x_2 + a tanh(x_1))``: a user's bijection with two parameters."""

    def __init__(self, wrong_ladj: bool = False) -> None:
        super().__init__((2,))
        self.a = torch.nn.Parameter(torch.zeros(()))
        self.s = torch.nn.Parameter(torch.zeros(2))
        self.wrong_ladj = wrong_ladj

    def _ladj(self, x: Tensor) -> Tensor:
        return (self.s.sum() * (2 if self.wrong_ladj else 1)).expand(x.shape[:-1])

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x1, x2 = x.unbind(-1)
        return torch.stack([x1, x2 + self.a * torch.tanh(x1)], -1) * self.s.exp(), self._ladj(x)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y1, y2 = (z * (-self.s).exp()).unbind(-1)
        return torch.stack([y1, y2 - self.a * torch.tanh(y1)], -1), -self._ladj(z)


def test_check_bijection_on_a_user_bijection(tmp_path):
    check_bijection(UserShear(), identity_at_init=True)
    check_bijection(UserShear(), dtype=torch.float32)
    with pytest.raises(AssertionError, match="ladj vs autograd Jacobian"):
        check_bijection(UserShear(wrong_ladj=True))
    flow = nf.Flow(nf.Compose(UserShear(), nf.AffineCoupling(2, hidden=H)))  # saved without user code
    perturb(flow, 0.2)
    x = _toy(5)
    flow.save(tmp_path / "user.pt")
    assert torch.equal(nf.load(tmp_path / "user.pt").log_prob(x), flow.log_prob(x))


# ------------------------------------------------------------------------------------------------
# The command line (issue 2, item 8)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("cli")
    x = _toy(600).numpy().astype(np.float64)
    np.save(folder / "x.npy", x)
    np.savetxt(folder / "x.csv", x, delimiter=",", header="a,b", comments="")
    model = folder / "model.pt"
    assert cli(["fit", str(folder / "x.npy"), "--arch", "maf", "--out", str(model), "--epochs", "2",
                "--layers", "2", "--hidden", "8,8", "--no-progress"]) == 0
    return {"folder": folder, "x": x, "model": model}


@pytest.mark.parametrize("command", ["demo", "fit", "sample", "log-prob"])
def test_cli_help(command, capsys):
    assert cli([command, "--help"]) == 0
    assert f"usage: torchnf {command}" in capsys.readouterr().out


def test_cli_fit_sample_log_prob(table, tmp_path, capsys):
    folder, x, model = table["folder"], table["x"], table["model"]
    flow = nf.load(model)
    assert isinstance(flow, nf.Flow) and tuple(flow.event_shape) == (2,)
    assert cli(["fit", str(folder / "x.csv"), "--arch", "RealNVP", "--out", str(tmp_path / "csv.pt"),
                "--epochs", "1", "--layers", "2", "--hidden", "8,8", "--no-progress"]) == 0
    assert nf.load(tmp_path / "csv.pt").log_prob(torch.zeros(2)).shape == ()
    assert cli(["sample", str(model), "-n", "1000", "--out", str(tmp_path / "s.npy"), "--no-progress"]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (1000, 2) and np.isfinite(s).all()
    assert cli(["log-prob", str(model), str(folder / "x.npy"), "--out", str(tmp_path / "lp.npy"),
                "--no-progress"]) == 0
    lp = np.load(tmp_path / "lp.npy")
    with torch.no_grad():
        expected = flow.log_prob(torch.as_tensor(x, dtype=torch.float32)).numpy()
    assert lp.shape == (600,)
    np.testing.assert_allclose(lp, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ARCHITECTURES + ["SINF"])
def test_cli_fits_every_architecture(name, table, tmp_path):
    """``torchnf fit DATA --arch <name>`` for every architecture, then ``log-prob`` on the model."""
    small = tmp_path / "small.npy"
    np.save(small, table["x"][:200])
    sizes = ["--layers", "2"] + ([] if name == "SINF" else ["--hidden", "8,8"])
    assert cli(["fit", str(small), "--arch", name.lower(), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
                "--no-progress", *sizes]) == 0
    assert type(nf.load(tmp_path / "m.pt").bijection).__name__ in (name, "Compose")
    assert cli(["log-prob", str(tmp_path / "m.pt"), str(small), "--out", str(tmp_path / "lp.npy"),
                "--no-progress"]) == 0
    assert np.isfinite(np.load(tmp_path / "lp.npy")).all()


def test_cli_bad_input_messages(table, tmp_path, capsys):
    x, model = table["x"], table["model"]
    missing = str(tmp_path / "nope.npy")
    for argv in (["fit", missing], ["log-prob", str(model), missing], ["sample", missing]):
        assert cli(argv) != 0
        assert "nope.npy" in capsys.readouterr().err
    np.save(tmp_path / "three.npy", np.ones((10, 3)))
    assert cli(["log-prob", str(model), str(tmp_path / "three.npy")]) != 0
    assert "column" in capsys.readouterr().err
    bad = x.copy()
    bad[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    for argv in (["fit", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "m.pt"), "--no-progress"],
                 ["log-prob", str(model), str(tmp_path / "nan.npy")]):
        assert cli(argv) != 0
        err = capsys.readouterr().err
        assert "7" in err and ("NaN" in err or "nan" in err), err


@pytest.mark.slow
def test_cli_demo_and_console_script(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--epochs", "1", "--n-train", "500", "--n-test", "500", "--resolution", "20",
                "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "log-likelihood" in text.lower() and "true" in text.lower()
    assert (out / "index.html").exists() and len(list(out.glob("*.png"))) >= 3
    script = [str(p) for p in (Path(sys.executable).parent / "torchnf",) if p.exists()]
    argv = (script or [sys.executable, "-m", "torchnf.cli"]) + ["sample", "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: torchnf sample" in done.stdout


# ------------------------------------------------------------------------------------------------
# Timing the defaults (run this file as a script; not a test)
# ------------------------------------------------------------------------------------------------


def _toy(n: int, seed: int = 0) -> Tensor:
    """A 2-D banana of ``n`` points (float32, as a user's data usually is)."""
    return inputs("real", (n, 2), torch.float64, seed=seed)[:, [0, 1]].float()


def measure_defaults(n: int = 3000) -> None:
    """``nf.Flow(nf.X(2)).fit(x)`` with every default, for every architecture, on ``n`` 2-D points."""
    x = _toy(n)
    print(f"{n} points; NLL of the best Gaussian {_gaussian_nll(x):.3f}; wall and CPU seconds", flush=True)
    for name in ARCHITECTURES + ["SINF"]:
        torch.manual_seed(0)
        start, cpu = time.perf_counter(), time.process_time()
        flow = nf.Flow(getattr(nf, name)(2))
        try:
            history = flow.fit(x, progress=False)
            epochs, stopped = getattr(history, "epochs", "?"), getattr(history, "stopped", "?")
            with torch.no_grad():
                nll = float(-flow.log_prob(x).mean())
            result = f"epochs {epochs} ({stopped}), train NLL {nll:.3f}"
        except Exception as e:  # noqa: BLE001 (report every architecture)
            result = f"{type(e).__name__}: {e}"
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"{name:14s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  {result}", flush=True)


if __name__ == "__main__":
    measure_defaults(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
