"""Harness cases for the core structures (coupling, masked autoregressive, elementwise, Compose)
and the core architectures (NICE, RealNVP, MAF, IAF)."""

from __future__ import annotations

import torch

import torchnf as nf
from torchnf.testing import Case
from torchnf.transformers import Affine, Shift

H = (8, 8)  # small conditioner widths keep the harness fast


def _order(dim: int, seed: int) -> torch.Tensor:
    return torch.randperm(dim, generator=torch.Generator().manual_seed(seed))


CASES: list[Case] = [
    # coupling --------------------------------------------------------------------------------
    Case("Coupling-Affine", lambda: nf.Coupling(Affine(), 4, hidden=H), structure="coupling"),
    Case("Coupling-Affine-noncontiguous",
         lambda: nf.Coupling(Affine(), torch.tensor([True, False, True, False, True]), hidden=H),
         structure="coupling"),
    Case("AdditiveCoupling", lambda: nf.AdditiveCoupling(4, hidden=H), structure="coupling"),
    Case("AffineCoupling-context", lambda: nf.AffineCoupling(3, context_dim=2, hidden=H),
         structure="coupling"),
    # masked autoregressive -------------------------------------------------------------------
    Case("MaskedAutoregressive-Affine", lambda: nf.MaskedAutoregressive(Affine(), 4, hidden=H),
         structure="autoregressive"),
    Case("MaskedAutoregressive-random-order",
         lambda: nf.MaskedAutoregressive(Affine(), 5, order=_order(5, 1), hidden=(10, 10)),
         structure="autoregressive"),
    Case("MaskedAutoregressive-context",
         lambda: nf.MaskedAutoregressive(Affine(), 3, order=_order(3, 2), context_dim=2, hidden=H),
         structure="autoregressive"),
    Case("MaskedAutoregressive-residual",
         lambda: nf.MaskedAutoregressive(Affine(), 4, hidden=(8, 8, 8), residual_blocks=True),
         structure="autoregressive"),
    Case("IAF-layer", lambda: nf.Inverse(nf.MaskedAutoregressive(Affine(), 4, order=_order(4, 3), hidden=H)),
         structure="autoregressive"),
    # elementwise -----------------------------------------------------------------------------
    Case("Elementwise-Affine", lambda: nf.Elementwise(Affine(), 3), structure="elementwise"),
    Case("Elementwise-Affine-context", lambda: nf.Elementwise(Affine(), 3, context_dim=2, hidden=H),
         structure="elementwise"),
    Case("Elementwise-Shift", lambda: nf.Elementwise(Shift(), 4), structure="elementwise"),
    # composition -----------------------------------------------------------------------------
    Case("Compose-mixed", lambda: nf.Compose(
        nf.Elementwise(Affine(), 4),
        nf.AffineCoupling(4, context_dim=2, hidden=H),
        nf.MaskedAutoregressive(Affine(), 4, hidden=H),
        nf.Inverse(nf.MaskedAutoregressive(Affine(), 4, order=_order(4, 4), context_dim=2, hidden=H)),
    )),
    # architectures ---------------------------------------------------------------------------
    Case("NICE", lambda: nf.NICE(4, layers=2, hidden=H)),
    Case("NICE-context", lambda: nf.NICE(3, context_dim=2, layers=2, hidden=H)),
    Case("RealNVP", lambda: nf.RealNVP(4, layers=3, hidden=H), compile=True),
    Case("RealNVP-context", lambda: nf.RealNVP(3, context_dim=2, layers=2, hidden=H)),
    Case("MAF", lambda: nf.MAF(4, layers=2, hidden=H), compile=True),
    Case("MAF-context", lambda: nf.MAF(3, context_dim=2, layers=2, hidden=H)),
    Case("MAF-residual", lambda: nf.MAF(3, layers=2, hidden=(8, 8), residual_blocks=True)),
    Case("IAF", lambda: nf.IAF(4, layers=2, hidden=H)),
    Case("IAF-context", lambda: nf.IAF(3, context_dim=2, layers=2, hidden=H)),
]

# scalar transformers: (name, make, options of check_transformer)
TRANSFORMERS = [
    ("Affine", Affine, {}),
    ("Affine-tight-bound", lambda: Affine(scale_bound=1.0), {"scale": 3.0}),
    ("Shift", Shift, {}),
]
