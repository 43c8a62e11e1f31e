"""Harness cases for the spline transformers (rational-quadratic, linear-rational, circular) in
every structure, and the spline architectures (NSF, LRSNSF, ElementwiseSpline)."""

from __future__ import annotations

import math

import torch

import torchnf as nf
from torchnf.testing import Case
from torchnf.transformers import CircularSpline, LinearRationalSpline, RationalQuadraticSpline

H = (8, 8)  # small conditioner widths keep the harness fast
TOL = 10.0  # splines: float32 round trips to 1e-3 (DESIGN)
PERTURB = 0.1  # the harness default: bends the splines without float32-ill-conditioned flats


def angles(batch: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Uniform angles in ``[-pi, pi)`` for events of 3 features."""
    return (torch.rand(*batch, 3, dtype=dtype, generator=g) * 2 - 1) * math.pi


def angles2(batch: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(*batch, 2, dtype=dtype, generator=g) * 2 - 1) * math.pi


def wide(batch: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Inputs spread over the spline interval and both tails."""
    return torch.randn(*batch, 4, dtype=dtype, generator=g) * 4


def _cases_for(name: str, make, inputs=None, dim: int = 4) -> list[Case]:
    common = dict(tol=TOL, perturb=PERTURB, inputs=inputs)
    return [
        Case(f"Elementwise-{name}", lambda: nf.Elementwise(make(), dim), structure="elementwise", **common),
        Case(f"Elementwise-{name}-context", lambda: nf.Elementwise(make(), dim, context_dim=2, hidden=H),
             structure="elementwise", **common),
        Case(f"Coupling-{name}", lambda: nf.Coupling(make(), dim, hidden=H), structure="coupling", **common),
        Case(f"Coupling-{name}-context", lambda: nf.Coupling(make(), dim, context_dim=2, hidden=H),
             structure="coupling", **common),
        Case(f"MaskedAutoregressive-{name}", lambda: nf.MaskedAutoregressive(make(), dim, hidden=H),
             structure="autoregressive", **common),
        Case(f"MaskedAutoregressive-{name}-context",
             lambda: nf.MaskedAutoregressive(make(), dim, order=torch.arange(dim).roll(1), context_dim=2,
                                             hidden=H),
             structure="autoregressive", **common),
    ]


CASES: list[Case] = [
    # transformers in every structure ---------------------------------------------------------
    *_cases_for("RQSpline", lambda: RationalQuadraticSpline(bins=5, bound=3.0), wide),
    *_cases_for("LRSpline", lambda: LinearRationalSpline(bins=5, bound=3.0), wide),
    *_cases_for("CircularSpline", lambda: CircularSpline(bins=5), angles, dim=3),
    *_cases_for("CircularSpline-rotation", lambda: CircularSpline(bins=5, rotation=True), angles, dim=3),
    # architectures ---------------------------------------------------------------------------
    Case("NSF", lambda: nf.NSF(4, layers=3, hidden=H, bins=4, bound=3.0), tol=TOL, perturb=PERTURB,
         compile=True),
    Case("NSF-context", lambda: nf.NSF(3, context_dim=2, layers=2, hidden=H, bins=4), tol=TOL,
         perturb=PERTURB),
    Case("NSF-autoregressive", lambda: nf.NSF(4, layers=2, hidden=H, bins=4, coupling=False), tol=TOL,
         perturb=PERTURB),
    Case("NSF-autoregressive-context",
         lambda: nf.NSF(3, context_dim=2, layers=2, hidden=(9, 9), bins=4, coupling=False,
                        residual_blocks=True), tol=TOL, perturb=PERTURB),
    Case("NSF-IAF", lambda: nf.Inverse(nf.NSF(3, layers=2, hidden=H, bins=4, coupling=False)), tol=TOL,
         perturb=PERTURB),
    Case("NSF-circular", lambda: nf.NSF(3, layers=2, hidden=H, bins=4, circular=True), inputs=angles,
         tol=TOL, perturb=PERTURB),
    Case("NSF-circular-autoregressive-context",
         lambda: nf.NSF(2, context_dim=2, layers=2, hidden=H, bins=4, circular=True, coupling=False),
         inputs=angles2, tol=TOL, perturb=PERTURB),
    Case("LRSNSF", lambda: nf.LRSNSF(4, layers=2, hidden=H, bins=4), tol=TOL, perturb=PERTURB),
    Case("LRSNSF-autoregressive-context",
         lambda: nf.LRSNSF(3, context_dim=2, layers=2, hidden=H, bins=4, coupling=False), tol=TOL,
         perturb=PERTURB),
    Case("ElementwiseSpline", lambda: nf.ElementwiseSpline(3, bins=6), structure="elementwise", tol=TOL,
         perturb=PERTURB),
    Case("ElementwiseSpline-context", lambda: nf.ElementwiseSpline(3, bins=6, context_dim=2, hidden=H),
         structure="elementwise", tol=TOL, perturb=PERTURB),
]

_ANGLES = torch.linspace(-math.pi, math.pi, 50, dtype=torch.float64)[:-1]

TRANSFORMERS = [
    ("RationalQuadraticSpline", lambda: RationalQuadraticSpline(bins=6, bound=4.0), {"tol": TOL}),
    ("RationalQuadraticSpline-uneven-minima",
     lambda: RationalQuadraticSpline(bins=5, bound=3.0, min_width=0.02, min_height=0.005), {"tol": TOL}),
    ("LinearRationalSpline", lambda: LinearRationalSpline(bins=6, bound=4.0), {"tol": TOL}),
    # (with rotation=True the map is monotone on the circle, not on [-pi, pi): tested in test_splines)
    ("CircularSpline", lambda: CircularSpline(bins=6), {"tol": TOL, "inputs": _ANGLES}),
]
