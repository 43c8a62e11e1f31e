"""Linear and normalisation layers: what the property harness does not cover (ActNorm's
data-dependent initialisation and its survival across save/load, BatchNorm's train/eval semantics,
permutation seeding, the LU log-determinant at larger D, a fit that reaches the true likelihood)."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf


def _data(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * 3.0 + 2.0


def _per_channel(z: torch.Tensor, channel_axis: int) -> torch.Tensor:
    return z.movedim(channel_axis, -1).reshape(-1, z.shape[channel_axis])


# -- ActNorm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_shape", [(4,), (3, 5, 5)], ids=["vector", "image"])
def test_actnorm_initialises_to_zero_mean_unit_variance(event_shape):
    layer = nf.ActNorm(event_shape).double()
    assert not bool(layer.initialized)
    x = _data(2, 16, *event_shape)  # two batch dimensions
    z, ladj = layer(x)
    assert bool(layer.initialized) and layer._initialized
    flat = _per_channel(z, z.dim() - len(event_shape))
    zeros = torch.zeros(event_shape[0], dtype=torch.float64)
    torch.testing.assert_close(flat.mean(0), zeros, atol=1e-12, rtol=0)
    torch.testing.assert_close(flat.var(0, unbiased=False), torch.ones(event_shape[0], dtype=torch.float64))
    assert ladj.shape == (2, 16)
    spatial = math.prod(event_shape[1:])
    torch.testing.assert_close(ladj, -layer.log_scale.detach().sum().expand(2, 16) * spatial)
    # Later batches do not re-initialise.
    before = [p.detach().clone() for p in layer.parameters()]
    layer(_data(8, *event_shape, seed=1) * 10)
    for p, q in zip(layer.parameters(), before):
        assert torch.equal(p, q)


def test_actnorm_initialises_only_on_a_training_forward():
    layer = nf.ActNorm(3).double()
    x = _data(10, 3)
    layer.eval()
    assert torch.equal(layer(x)[0], x)  # eval: no initialisation, still the identity
    layer.train()
    assert torch.equal(layer.inverse(x)[0], x)  # the inverse does not initialise either
    assert not layer._initialized
    layer(x)
    assert layer._initialized


def test_actnorm_initialisation_survives_save_and_load(tmp_path):
    flow = nf.Flow(nf.Compose(nf.ActNorm(3), nf.LULinear(3))).double()
    x = _data(64, 3)
    flow.log_prob(x)
    loc = flow.bijection[0].loc.detach().clone()
    flow.save(tmp_path / "actnorm.pt")
    loaded = nf.load(tmp_path / "actnorm.pt")
    layer = loaded.bijection[0]
    assert loaded.training and bool(layer.initialized) and layer._initialized
    torch.testing.assert_close(layer.loc, loc, rtol=0, atol=0)
    # A training-mode pass on very different data does not initialise it again.
    loaded.log_prob(_data(64, 3, seed=5) * 100)
    torch.testing.assert_close(layer.loc, loc, rtol=0, atol=0)
    # load_state_dict into a fresh layer syncs the Python mirror as well.
    fresh = nf.ActNorm(3).double()
    fresh.load_state_dict(flow.bijection[0].state_dict())
    assert fresh._initialized
    fresh(_data(5, 3, seed=6))
    torch.testing.assert_close(fresh.loc, loc, rtol=0, atol=0)
    # ...and an uninitialised state dict resets it.
    fresh.load_state_dict(nf.ActNorm(3).double().state_dict())
    assert not fresh._initialized


def test_actnorm_stays_trainable_after_initialisation():
    layer = nf.ActNorm(2).double()
    flow = nf.Flow(layer)
    x = _data(256, 2)
    flow.log_prob(x)  # initialise
    opt = torch.optim.SGD(flow.parameters(), lr=0.1)
    start = layer.loc.detach().clone()
    loss = -flow.log_prob(x + 1.0).mean()
    loss.backward()
    assert bool(layer.loc.grad.abs().sum() > 0) and bool(layer.log_scale.grad.abs().sum() > 0)
    opt.step()
    assert not torch.equal(layer.loc.detach(), start)
    with torch.no_grad():
        assert float(-flow.log_prob(x + 1.0).mean()) < float(loss)


# -- BatchNorm -------------------------------------------------------------------------------------


def test_batchnorm_training_mode_uses_batch_statistics_and_updates_running_averages():
    bn = nf.BatchNorm(3, momentum=0.2).double()
    with torch.no_grad():
        bn.log_gamma.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.beta.copy_(torch.tensor([1.0, 0.0, -1.0]))
    x = _data(50, 3)
    z, ladj = bn(x)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    expected = (x - mean) / var.sqrt() * bn.log_gamma.detach().exp() + bn.beta.detach()
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(ladj, (bn.log_gamma.detach() - 0.5 * var.log()).sum().expand(50))
    torch.testing.assert_close(bn.running_mean, 0.2 * mean)
    torch.testing.assert_close(bn.running_var, 0.8 + 0.2 * x.var(0, unbiased=True))
    # Gradients reach x through the batch statistics too (a normalised batch is a valid loss).
    xg = x.clone().requires_grad_(True)
    bn(xg)[0].square().sum().backward()
    assert bool(torch.isfinite(xg.grad).all())


def test_batchnorm_eval_mode_uses_running_statistics_and_round_trips():
    bn = nf.BatchNorm(3, momentum=0.5).double()
    for seed in range(4):
        bn(_data(40, 3, seed=seed))
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    bn.eval()
    x = _data(7, 3, seed=9)
    z, ladj = bn(x)
    torch.testing.assert_close(z, (x - rm) / rv.sqrt())
    torch.testing.assert_close(ladj, (-0.5 * rv.log()).sum().expand(7))
    back, ladj_back = bn.inverse(z)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj_back, -ladj)
    # Eval passes leave the running statistics alone and accept a single event.
    bn(x[0])
    assert torch.equal(bn.running_mean, rm) and torch.equal(bn.running_var, rv)


def test_batchnorm_train_and_eval_differ_and_inverse_uses_running_statistics():
    bn = nf.BatchNorm(2).double()
    x = _data(30, 2)
    with torch.no_grad():
        z_train = bn(x)[0]
        z_eval = bn.eval()(x)[0]
    assert float((z_train - z_eval).abs().max()) > 0.1
    bn.train()
    # In training mode the inverse also uses the running statistics (it does not update them).
    rm = bn.running_mean.clone()
    torch.testing.assert_close(bn.inverse(z_eval)[0], x)
    assert torch.equal(bn.running_mean, rm)


def test_batchnorm_image_statistics_are_per_channel():
    bn = nf.BatchNorm((2, 4, 4)).double()
    x = _data(6, 2, 4, 4)
    z, ladj = bn(x)
    flat = _per_channel(z, 1)
    torch.testing.assert_close(flat.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(flat.var(0, unbiased=False), torch.ones(2, dtype=torch.float64))
    var = _per_channel(x, 1).var(0, unbiased=False)
    torch.testing.assert_close(ladj, (-0.5 * var.log()).sum().expand(6) * 16)


def test_batchnorm_training_mode_needs_two_values_per_channel():
    bn = nf.BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm: training mode needs at least 2 values per channel"):
        bn(torch.randn(3))
    with pytest.raises(ValueError, match="BatchNorm"):
        bn(torch.randn(1, 3))
    bn.eval()
    assert bn(torch.randn(3))[0].shape == (3,)


# -- Permutation -----------------------------------------------------------------------------------


def test_permutation_seeding():
    a, b = nf.Permutation(16, seed=3), nf.Permutation(16, seed=3)
    assert torch.equal(a.permutation, b.permutation)
    assert not torch.equal(a.permutation, nf.Permutation(16, seed=4).permutation)
    assert not torch.equal(a.permutation, torch.arange(16))
    # Without a seed the global generator decides, so torch.manual_seed reproduces it.
    torch.manual_seed(11)
    c = nf.Permutation(16)
    torch.manual_seed(11)
    assert torch.equal(nf.Permutation(16).permutation, c.permutation)
    # Seeded construction leaves the global generator untouched.
    state = torch.get_rng_state()
    nf.Permutation(16, seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_permutation_semantics_and_reverse():
    p = nf.Permutation(4, permutation=[2, 0, 3, 1])
    x = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    z, ladj = p(x)
    assert torch.equal(z, torch.tensor([[12.0, 10.0, 13.0, 11.0]])) and torch.equal(ladj, torch.zeros(1))
    assert torch.equal(p.inverse(z)[0], x)
    r = nf.Reverse(4)
    assert isinstance(r, nf.Permutation)
    assert torch.equal(r(x)[0], x.flip(-1))


def test_random_permutation_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    flow = nf.Flow(nf.Compose(nf.Permutation(8), nf.ElementwiseAffine(8)))
    flow.save(tmp_path / "perm.pt")
    torch.manual_seed(1)  # a different draw when the configuration is rebuilt
    loaded = nf.load(tmp_path / "perm.pt")
    assert torch.equal(loaded.bijection[0].permutation, flow.bijection[0].permutation)
    x = torch.randn(5, 8)
    torch.testing.assert_close(loaded.transform(x), flow.transform(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: nf.Permutation(3, permutation=[0, 0, 1]), r"Permutation: expected a permutation of r"),
        (lambda: nf.Permutation(3, permutation=[0, 1]), r"Permutation: expected a permutation of r"),
        (lambda: nf.Permutation(2, permutation=[0.0, 1.0]), "Permutation: permutation must hold integers"),
        (lambda: nf.Permutation(3, permutation=[2, 1, 0], seed=1), "either permutation or seed"),
        (lambda: nf.Permutation(0), "Permutation: dim must be a positive integer"),
        (lambda: nf.Reverse(-1), "Reverse: dim"),
        (lambda: nf.LULinear(2.5), "LULinear: dim"),
        (lambda: nf.LULinear(3, permutation=[0, 1, 1]), "LULinear: expected a permutation"),
        (lambda: nf.ActNorm(()), "ActNorm: expected a non-empty event shape"),
        (lambda: nf.BatchNorm(3, momentum=0.0), r"BatchNorm: momentum must be in \(0, 1\]"),
        (lambda: nf.BatchNorm(3, eps=-1.0), "BatchNorm: eps must be positive"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# -- LULinear --------------------------------------------------------------------------------------


def test_lulinear_logdet_matches_slogdet_at_d32():
    torch.manual_seed(0)
    layer = nf.LULinear(32, permutation=torch.randperm(32)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    W = layer.matrix().detach()
    sign, logdet = torch.linalg.slogdet(W)
    assert sign != 0
    x = torch.randn(4, 32, dtype=torch.float64)
    z, ladj = layer(x)
    torch.testing.assert_close(ladj, logdet.expand(4), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, x @ W.T + layer.bias.detach())
    jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[0])
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj[0], rtol=1e-10, atol=1e-10)
    back, ladj_back = layer.inverse(z)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ladj_back, -ladj)


def test_lulinear_factors_have_the_documented_structure():
    layer = nf.LULinear(5, permutation=[4, 0, 1, 3, 2]).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    L, U = layer._factors()
    assert torch.equal(L.diagonal(), torch.ones(5, dtype=torch.float64))
    assert torch.equal(L.triu(1), torch.zeros(5, 5, dtype=torch.float64))
    assert torch.equal(U.tril(-1), torch.zeros(5, 5, dtype=torch.float64))
    assert bool((U.diagonal() > 0).all())
    P = torch.eye(5, dtype=torch.float64)[[4, 0, 1, 3, 2]]
    torch.testing.assert_close(layer.matrix(), P @ L @ U)


def test_lulinear_fit_reaches_the_gaussian_maximum_likelihood():
    # An affine flow with a standard normal base is a Gaussian: its best fit is the empirical one.
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-1.0, 0.8, 0.3]], dtype=torch.float64)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64) @ A.T + torch.tensor([1.0, -2.0, 0.5])
    mean, cov = x.mean(0), torch.cov(x.T, correction=0)
    best = float(-torch.distributions.MultivariateNormal(mean, cov).log_prob(x).mean())
    flow = nf.Flow(nf.Compose(nf.ActNorm(3), nf.LULinear(3))).double()
    flow.log_prob(x)  # ActNorm initialisation, so that the LU factors only learn the correlations
    opt = torch.optim.Adam(flow.parameters(), lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) - best < 0.005
