"""The masked-autoregressive layer's samplers: the graph-free one that computes every hidden unit
once (``_inverse_by_degree``, used under ``no_grad``) and the one that keeps a graph
(``_inverse_sequential``, for ``rsample``) against the forward map, in float64, with random
weights, over orders, contexts, angles, activations and hidden widths with empty degrees."""

import pytest
import torch

from torchnf.bijections.autoregressive import MaskedAutoregressive
from torchnf.transformers import Affine, CircularSpline, RationalQuadraticSpline

CASES = {
    "affine": dict(transformer=Affine(), dim=5, hidden=(16, 16)),
    "one-feature": dict(transformer=Affine(), dim=1, hidden=(4,)),
    "one-feature-context": dict(transformer=Affine(), dim=1, hidden=(4, 4), context_dim=2),
    "fewer-units-than-degrees": dict(transformer=Affine(), dim=9, hidden=(4, 6, 3)),
    "order-context-tanh": dict(transformer=Affine(), dim=6, hidden=(10, 7), context_dim=3,
                               order=[3, 0, 5, 1, 4, 2], activation="tanh"),
    "spline": dict(transformer=RationalQuadraticSpline(6, bound=3.0), dim=4, hidden=(12, 12)),
    "circular": dict(transformer=CircularSpline(5), dim=3, hidden=(9, 9), circular=True, context_dim=1),
}


def _layer(name):
    kwargs = dict(CASES[name])
    torch.manual_seed(sorted(CASES).index(name))
    layer = MaskedAutoregressive(kwargs.pop("transformer"), kwargs.pop("dim"), **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.4)  # the output layer too: zero init would make every step trivial
    return layer


@pytest.mark.parametrize("name", sorted(CASES))
def test_samplers_invert_the_forward_map_and_agree(name):
    layer = _layer(name)
    D, C = layer.event_shape[0], layer.made.context_dim
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, D, generator=g, dtype=torch.float64)
    if isinstance(layer.transformer, CircularSpline):
        z = (z.remainder(2 * torch.pi) - torch.pi) * 0.99
    context = torch.randn(3, 4, C, generator=g, dtype=torch.float64) if C else None
    with torch.no_grad():
        x, ladj = layer._inverse(z, context)
        z_back, ladj_fwd = layer._forward(x, context)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ladj, -ladj_fwd, rtol=1e-10, atol=1e-10)
    x_graph, ladj_graph = layer._inverse(z, context)  # parameters require grad: the graph path
    assert x_graph.requires_grad
    torch.testing.assert_close(x_graph.detach(), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ladj_graph.detach(), ladj, rtol=1e-10, atol=1e-10)


def test_graph_free_sampler_serves_no_grad_calls_only():
    layer = _layer("affine")
    z = torch.randn(8, 5, dtype=torch.float64)
    calls = []
    original = layer._inverse_by_degree
    layer._inverse_by_degree = lambda *a: calls.append(1) or original(*a)
    layer._inverse(z, None)
    assert not calls
    with torch.no_grad():
        layer._inverse(z, None)
    assert calls == [1]
