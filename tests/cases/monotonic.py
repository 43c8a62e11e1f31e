"""Harness cases for the monotonic-network transformers (UMNN, deep sigmoidal flows), their
architectures (UMNNMAF, NAF) and a fitted sliced iterative flow (SINF)."""

from __future__ import annotations

import torch

import torchnf as nf
from torchnf.testing import Case
from torchnf.transformers import UMNN, DeepSigmoid

H = (8, 8)


def _umnn() -> UMNN:
    return UMNN(hidden=4, quadrature=12)


def _dsf() -> DeepSigmoid:
    return DeepSigmoid(hidden=3)


def _fitted_sinf() -> nf.Compose:
    u = torch.randn(400, 3, generator=torch.Generator().manual_seed(0))
    x = torch.stack([u[:, 0], u[:, 1] + 0.5 * u[:, 0] ** 2, 2 * torch.tanh(u[:, 2])], dim=-1)
    sinf = nf.SINF(3, layers=3, bins=8, stiefel_steps=10)
    sinf.fit_data(x, val_fraction=0, seed=0, progress=False)
    return nf.Compose(nf.ElementwiseShift(3), sinf)  # the shift gives the harness a parameter


CASES: list[Case] = [
    Case("Elementwise-UMNN", lambda: nf.Elementwise(_umnn(), 3), structure="elementwise", compile=True),
    Case("Elementwise-UMNN-context", lambda: nf.Elementwise(_umnn(), 3, context_dim=2, hidden=H),
         structure="elementwise"),
    Case("MaskedAutoregressive-UMNN", lambda: nf.MaskedAutoregressive(_umnn(), 3, hidden=H),
         structure="autoregressive"),
    Case("Elementwise-DeepSigmoid", lambda: nf.Elementwise(_dsf(), 3), structure="elementwise",
         identity_at_init=False),
    Case("Elementwise-DeepSigmoid-2blocks", lambda: nf.Elementwise(DeepSigmoid(3, layers=2), 3),
         structure="elementwise", identity_at_init=False),
    Case("MaskedAutoregressive-DeepSigmoid", lambda: nf.MaskedAutoregressive(_dsf(), 3, hidden=H),
         structure="autoregressive", identity_at_init=False, compile=True),
    Case("UMNNMAF", lambda: nf.UMNNMAF(3, layers=2, hidden=H, integrand_hidden=4, quadrature=12)),
    Case("UMNNMAF-context", lambda: nf.UMNNMAF(3, context_dim=2, layers=2, hidden=H, integrand_hidden=4,
                                               quadrature=12)),
    Case("UMNNMAF-coupling", lambda: nf.UMNNMAF(4, layers=2, hidden=H, integrand_hidden=4, quadrature=12,
                                                coupling=True)),
    Case("NAF", lambda: nf.NAF(3, layers=2, hidden=H, sigmoid_units=3), identity_at_init=False),
    Case("NAF-context", lambda: nf.NAF(3, context_dim=2, layers=2, hidden=H, sigmoid_units=3),
         identity_at_init=False),
    Case("NAF-coupling", lambda: nf.NAF(4, layers=2, hidden=H, sigmoid_units=3, coupling=True),
         identity_at_init=False),
    Case("SINF-fitted", _fitted_sinf, perturb=0.0, identity_at_init=False),
    Case("SINF-unfitted", lambda: nf.Compose(nf.ElementwiseShift(3), nf.SINF(3))),
]
