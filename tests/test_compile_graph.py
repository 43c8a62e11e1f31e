"""``torch.compile`` traces log_prob and sampling of the main architectures in one graph (no breaks)."""

from __future__ import annotations

import pytest
import torch

import torchnf as nf

ARCHS = {
    "MAF": lambda: nf.MAF(4, layers=2, hidden=(16, 16)),
    "RealNVP": lambda: nf.RealNVP(4, layers=2, hidden=(16, 16)),
    "NSF-coupling": lambda: nf.NSF(4, layers=2, hidden=(16, 16)),
    "NSF-autoregressive": lambda: nf.NSF(4, layers=2, hidden=(16, 16), coupling=False),
    "MAF-context": lambda: nf.MAF(4, context_dim=2, layers=2, hidden=(16, 16)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_no_graph_breaks(name):
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    flow = nf.Flow(ARCHS[name]())
    x = torch.randn(8, 4)
    c = torch.randn(8, 2) if flow.context_dim else None
    c0 = None if c is None else c[0]
    for fn, arg in ((lambda v: flow.log_prob(v, c), x), (lambda n: flow.sample(n, c0), 8)):
        dynamo.reset()
        explanation = dynamo.explain(fn)(arg)
        assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
        assert explanation.graph_count == 1
