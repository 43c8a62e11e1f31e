"""Targets: shapes and dtypes, exact normalisers on grids, exact samplers against exact moments."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf
from torchnf.targets import (
    Banana,
    Funnel,
    GaussianMixtureTarget,
    GaussianTarget,
    LogisticRegression,
    Target,
    TorusTarget,
)


def _mixture() -> GaussianMixtureTarget:
    return GaussianMixtureTarget([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]], scales=[1.0, 0.7, 1.3],
                                 weights=[0.5, 0.3, 0.2])


TARGETS = {
    "banana": lambda: Banana(3, a=1.5, b=0.5),
    "funnel": lambda: Funnel(4),
    "gaussian": lambda: GaussianTarget.ill_conditioned(5, condition=100.0),
    "mixture": _mixture,
    "logistic": lambda: LogisticRegression.synthetic(n=50, dim=3),
    "torus": lambda: TorusTarget(),
}


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_gradients(name, dtype):
    t = TARGETS[name]()
    assert isinstance(t, Target)
    for batch in [(), (5,), (2, 3)]:
        x = torch.randn(*batch, t.dim, dtype=dtype, requires_grad=True)
        lp = t.log_prob(x)
        assert lp.shape == batch and lp.dtype == dtype
        assert torch.equal(t(x), lp)
        (g,) = torch.autograd.grad(lp.sum(), x)
        assert torch.isfinite(lp).all() and torch.isfinite(g).all()
    with pytest.raises(ValueError, match=f"{type(t).__name__}: expected x of shape"):
        t.log_prob(torch.zeros(4, t.dim + 1, dtype=dtype))


def _grid_integral(log_prob, lo, hi, n=801):
    """Trapezoid-free midpoint rule on a 2-D box (the integrands vanish at the box edges)."""
    h = [(b - a) / n for a, b in zip(lo, hi)]
    axes = [a + hh * (torch.arange(n, dtype=torch.float64) + 0.5) for a, hh in zip(lo, h)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    return torch.logsumexp(log_prob(pts), 0).item() + math.log(h[0] * h[1])


def test_banana_normaliser_and_moments():
    t = Banana(2, a=1.2, b=0.8)
    log_z = _grid_integral(t.log_prob, (-9.0, -8.0), (9.0, 40.0), n=1201)
    assert abs(log_z - t.log_normalizer) < 1e-4
    x = t.sample(200_000, seed=0)
    se = (t.cov.diagonal() / x.shape[0]).sqrt()
    assert ((x.mean(0) - t.mean).abs() < 5 * se).all()
    assert torch.allclose(torch.cov(x.T), t.cov, rtol=0.05, atol=0.02)
    assert Banana(4).log_normalizer == pytest.approx(2 * math.log(2 * math.pi))


def test_funnel_density_and_samples():
    t = Funnel(2, scale=1.0)
    assert abs(_grid_integral(t.log_prob, (-7.0, -40.0), (7.0, 40.0), n=1601)) < 1e-3
    t = Funnel(5, scale=3.0)
    x = t.sample(100_000, seed=1)
    assert abs(x[:, 0].mean()) < 5 * 3 / math.sqrt(x.shape[0])
    assert abs(x[:, 0].var() - 9.0) < 5 * math.sqrt(2 * 81 / x.shape[0])
    # Conditionally on x1, x_i e^{-x1/2} is standard normal.
    u = x[:, 1:] * torch.exp(-0.5 * x[:, :1])
    assert abs(u.var() - 1.0) < 0.02
    ref = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0).log_prob(x[:, 0])
    ref = ref + torch.distributions.Normal(0.0, torch.exp(0.5 * x[:, :1])).log_prob(x[:, 1:]).sum(-1)
    assert torch.allclose(t.log_prob(x), ref)
    assert t.cov[1, 1].item() == pytest.approx(math.exp(4.5))


def test_gaussian_target_matches_torch():
    t = GaussianTarget.ill_conditioned(20, condition=1e3, seed=3)
    ev = torch.linalg.eigvalsh(t.cov)
    assert ev.max() / ev.min() == pytest.approx(1e3, rel=1e-6)
    mvn = torch.distributions.MultivariateNormal(t.mean, t.cov)
    x = t.sample(50, seed=0)
    assert torch.allclose(t.log_prob(x), mvn.log_prob(x))
    assert torch.allclose(t.log_prob(x.float()), mvn.log_prob(x).float(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianTarget(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))


def test_mixture_density_weights_and_moments():
    t = _mixture()
    assert abs(_grid_integral(t.log_prob, (-10.0, -6.0), (10.0, 11.0))) < 1e-6
    x = t.sample(100_000, seed=2)
    frac = torch.bincount(t.assign(x), minlength=3).double() / x.shape[0]
    se = (t.weights * (1 - t.weights) / x.shape[0]).sqrt()
    assert ((frac - t.weights).abs() < 5 * se).all()
    assert torch.allclose(x.mean(0), t.mean, atol=0.05)
    assert torch.allclose(torch.cov(x.T), t.cov, rtol=0.02, atol=0.05)
    r = t.responsibilities(x[:10])
    assert torch.allclose(r.sum(-1), torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not fit"):
        GaussianMixtureTarget(torch.zeros(3, 2), scales=torch.ones(4))


def test_logistic_regression_posterior():
    t = LogisticRegression.synthetic(n=80, dim=3, seed=5, prior_scale=2.0)
    again = LogisticRegression.synthetic(n=80, dim=3, seed=5, prior_scale=2.0)
    assert torch.equal(t.X, again.X) and torch.equal(t.y, again.y)
    beta = torch.randn(7, 3, dtype=torch.float64)
    lik = torch.distributions.Bernoulli(logits=beta @ t.X.T).log_prob(t.y).sum(-1)
    prior = torch.distributions.Normal(0.0, 2.0).log_prob(beta).sum(-1)
    assert torch.allclose(t.log_prob(beta), lik + prior)
    assert t.log_normalizer is None and t.mean is None
    assert torch.isfinite(t.log_prob(torch.full((1, 3), 1e4))).all()
    with pytest.raises(ValueError, match="labels y must be 0 or 1"):
        LogisticRegression(torch.zeros(3, 2), torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(NotImplementedError, match="no exact sampler"):
        t.sample(3)


def test_torus_normalised_periodic_and_sampled_exactly():
    t = TorusTarget()
    n = 600
    h = 2 * math.pi / n
    axis = -math.pi + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    pts = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    lp = t.log_prob(pts)
    assert abs(torch.logsumexp(lp, 0).item() + 2 * math.log(h)) < 1e-9
    assert torch.allclose(t.log_prob(pts[:100] + 2 * math.pi), lp[:100])
    # Exact samples: the mass of the helix quadrant (phi < 0, psi < 0) matches the grid integral.
    q = (pts[:, 0] < 0) & (pts[:, 1] < 0)
    p_quad = (lp.exp() * h * h)[q].sum().item()
    x = t.sample(40_000, seed=0)
    assert ((x >= -math.pi) & (x < math.pi)).all()
    frac = ((x[:, 0] < 0) & (x[:, 1] < 0)).double().mean().item()
    assert abs(frac - p_quad) < 5 * math.sqrt(p_quad * (1 - p_quad) / x.shape[0])
    # A strongly coupled sine-model component is bimodal (lambda^2 > kappa_1 kappa_2).
    bi = TorusTarget(locs=[[0.0, 0.0]], concentrations=[[1.0, 1.0]], correlations=[3.0], weights=None)
    assert bi.log_prob(torch.tensor([[1.0, 1.0]])) > bi.log_prob(torch.tensor([[0.0, 0.0]]))


def test_sampling_is_seeded():
    t = Banana()
    assert torch.equal(t.sample(5, seed=3), t.sample(5, seed=3))
    assert t.sample(5, seed=3, dtype=torch.float32).dtype == torch.float32
    assert nf.targets.Funnel is Funnel
