"""Harness cases for the monotonic-network transformers (UMNN, deep sigmoidal flows) and their
architectures (UMNNMAF, NAF)."""

from __future__ import annotations

import torchnf as nf
from torchnf.testing import Case
from torchnf.transformers import UMNN, DeepSigmoid

H = (8, 8)


def _umnn() -> UMNN:
    return UMNN(hidden=4, quadrature=12)


def _dsf() -> DeepSigmoid:
    return DeepSigmoid(hidden=3)


CASES: list[Case] = [
    Case("Elementwise-UMNN", lambda: nf.Elementwise(_umnn(), 3), structure="elementwise"),
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
]
