"""Fixed elementwise maps and the affine/shift conveniences: what the property harness does not
cover (behaviour at the domain's edges, exact values, densities that integrate to one, bad input)."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf
from torchnf.transformers import Affine, Shift

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_are_finite_at_large_inputs(dtype):
    x = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype, requires_grad=True)
    a = x.detach().abs()
    softplus = torch.nn.functional.softplus
    for layer, exact in (
        (nf.Sigmoid(5), -a - 2 * softplus(-a)),
        (nf.Tanh(5), 2 * (math.log(2) - a - softplus(-2 * a))),
    ):
        z, ladj = layer(x)
        assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(ladj))
        # The elementwise log-derivatives are symmetric in x: compare their sum with the exact value.
        torch.testing.assert_close(ladj, exact.sum())
        (z.sum() + ladj).backward()
        assert bool(torch.isfinite(x.grad).all())
        x.grad = None
        # The inverse at saturated outputs (exactly 0, +-1 or 1) clamps and stays finite.
        back, ladj_back = layer.inverse(z.detach())
        assert bool(torch.isfinite(back).all()) and bool(torch.isfinite(ladj_back))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverses_clamp_to_the_open_interval(dtype):
    eps = torch.finfo(dtype).eps
    edge01 = torch.tensor([0.0, 1.0, -0.5, 2.0], dtype=dtype, requires_grad=True)
    x, ladj = nf.Sigmoid(4).inverse(edge01)
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(ladj))
    assert bool((x[1] > 0) & (x[0] < 0))
    # 1 - eps/2 is the largest value below 1: it maps to logit(1 - eps/2).
    torch.testing.assert_close(x[1], torch.tensor(math.log((1 - eps / 2) / (eps / 2)), dtype=dtype))
    (x.sum() + ladj).backward()
    assert bool(torch.isfinite(edge01.grad).all())
    edge11 = torch.tensor([-1.0, 1.0, 3.0], dtype=dtype)
    x, ladj = nf.Tanh(3).inverse(edge11)
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(ladj))
    assert x[0] == -x[1] and x[1] == x[2]


def test_sigmoid_matches_torch_and_logit_is_its_inverse():
    x = torch.randn(6, 3, dtype=torch.float64) * 4
    z, ladj = nf.Sigmoid(3).double()(x)
    torch.testing.assert_close(z, torch.sigmoid(x))
    torch.testing.assert_close(ladj, torch.log(torch.sigmoid(x) * torch.sigmoid(-x)).sum(-1))
    # Logit (alpha = 0) is exactly Sigmoid's inverse, in both directions.
    for a, b in zip(nf.Logit(3)(z), nf.Sigmoid(3).inverse(z)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(nf.Logit(3).inverse(x), nf.Sigmoid(3)(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_logit_alpha_squeezes_the_closed_interval():
    alpha = 0.05
    layer = nf.Logit(3, alpha=alpha).double()
    x = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    z, ladj = layer(x)
    edge = math.log(alpha / (1 - alpha))
    torch.testing.assert_close(z, torch.tensor([edge, 0.0, -edge], dtype=torch.float64))
    y = alpha + (1 - 2 * alpha) * x
    torch.testing.assert_close(ladj, (math.log(1 - 2 * alpha) - torch.log(y * (1 - y))).sum())
    back, ladj_back = layer.inverse(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ladj_back, -ladj)


@pytest.mark.parametrize(
    "layer, lo, hi",
    [(nf.Logit(1), 0.0, 1.0), (nf.Logit(1, alpha=0.1), -0.125, 1.125), (nf.Inverse(nf.Tanh(1)), -1.0, 1.0)],
    ids=["logit", "logit-alpha", "atanh"],
)
def test_flow_density_on_a_bounded_interval_integrates_to_one(layer, lo, hi):
    # A standard normal pushed through the map's inverse is a density on (lo, hi).
    flow = nf.Flow(layer).double()
    n = 200_001
    h = (hi - lo) / n
    x = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    with torch.no_grad():
        total = float(flow.log_prob(x[:, None]).exp().sum() * h)
    assert abs(total - 1.0) < 1e-4


def test_leaky_relu_values_and_inverse():
    layer = nf.LeakyReLU(4, negative_slope=0.25).double()
    x = torch.tensor([-4.0, -0.0, 0.0, 3.0], dtype=torch.float64)
    z, ladj = layer(x)
    torch.testing.assert_close(z, torch.tensor([-1.0, 0.0, 0.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(ladj, torch.tensor(math.log(0.25), dtype=torch.float64))
    back, ladj_back = layer.inverse(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ladj_back, -ladj)


def test_affine_and_shift_conveniences():
    aff = nf.ElementwiseAffine(3, scale_bound=2.0)
    assert isinstance(aff, nf.Elementwise) and isinstance(aff.transformer, Affine)
    assert aff.transformer.scale_bound == 2.0
    shift = nf.ElementwiseShift((2, 3))
    assert isinstance(shift.transformer, Shift) and shift.event_shape == (2, 3)
    x = torch.randn(5, 2, 3)
    z, ladj = shift(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(5))
    with torch.no_grad():
        shift.params.fill_(1.5)
        aff.params[..., 1].fill_(0.5)
    assert torch.equal(shift(x)[0], x + 1.5)
    z, ladj = aff(torch.ones(4, 3))
    s = 2.0 * math.tanh(0.5 / 2.0)
    torch.testing.assert_close(z, torch.full((4, 3), math.exp(s)))
    torch.testing.assert_close(ladj, torch.full((4,), 3 * s))


def test_fixed_maps_rebuild_from_their_configuration(tmp_path):
    chain = nf.Compose(nf.Logit(2, alpha=0.01), nf.ElementwiseAffine(2), nf.LeakyReLU(2, 0.3), nf.Tanh(2),
                       nf.Sigmoid(2))
    flow = nf.Flow(nf.Inverse(chain))
    flow.save(tmp_path / "chain.pt")
    loaded = nf.load(tmp_path / "chain.pt")
    parts = loaded.bijection.bijection.bijections
    assert parts[0].alpha == 0.01 and parts[2].negative_slope == 0.3
    x = torch.randn(7, 2)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: nf.Logit(2, alpha=0.5), r"Logit: alpha must be in \[0, 0.5\), got 0.5"),
        (lambda: nf.Logit(2, alpha=-0.1), "Logit: alpha"),
        (lambda: nf.LeakyReLU(2, negative_slope=0.0), "LeakyReLU: negative_slope must be positive"),
        (lambda: nf.LeakyReLU(2, negative_slope=math.inf), "LeakyReLU: negative_slope"),
        (lambda: nf.ElementwiseAffine(2, scale_bound=0.0), "Affine: scale_bound"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_wrong_shape_names_the_class():
    for layer in (nf.Sigmoid(3), nf.Logit(3), nf.Tanh(3), nf.LeakyReLU(3), nf.ElementwiseShift(3)):
        name = type(layer).__name__
        with pytest.raises(ValueError, match=rf"{name}: expected input of shape \(\*batch, 3\), got \(2, 4"):
            layer(torch.rand(2, 4))
