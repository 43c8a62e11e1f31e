"""Probability queries with error bars against exact Gaussian answers."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf
from torchnf.inference import Estimate, expectation, log_normalizer, marginal_cdf, probability


def _phi(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2))


@pytest.fixture(scope="module")
def gaussian_flow():
    """A linear flow with random parameters: exactly Gaussian, with mean and covariance read off
    its affine map z = W x + c."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        flow = nf.Flow(nf.Compose(nf.LULinear(3), nf.ElementwiseAffine(3))).double()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.4 * torch.randn_like(p))
            c = flow.transform(torch.zeros(1, 3, dtype=torch.float64))[0]
            W = (flow.transform(torch.eye(3, dtype=torch.float64)) - c).T
            Winv = torch.linalg.inv(W)
    return flow, -Winv @ c, Winv @ Winv.T


def test_half_space_probability_matches_the_normal_cdf(gaussian_flow):
    flow, mean, cov = gaussian_flow
    a, b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 0.7
    exact = 1 - _phi((b - a @ mean).item() / math.sqrt(a @ cov @ a))
    est = probability(flow, lambda x: x @ a > b, n=40_000, batch=7000, seed=0)
    assert est.kind == "probability" and est.n == 40_000
    assert est.stderr == pytest.approx(math.sqrt(exact * (1 - exact) / 40_000), rel=0.05)
    assert abs(est.estimate - exact) < 3 * est.stderr
    lo, hi = est.interval(0.999)
    assert lo < exact < hi and 0 <= lo < hi <= 1


def test_flow_methods_delegate(gaussian_flow):
    flow, *_ = gaussian_flow
    p = flow.probability(lambda x: x[:, 0] > 0, n=1000, seed=0)
    assert p.estimate == probability(flow, lambda x: x[:, 0] > 0, n=1000, seed=0).estimate
    e = flow.expectation(lambda x: x[:, 0], n=1000, seed=0)
    assert e.estimate == expectation(flow, lambda x: x[:, 0], n=1000, seed=0).estimate
    c = flow.marginal_cdf(0, 0.0, n=1000, seed=0)
    assert c.estimate == marginal_cdf(flow, 0, 0.0, n=1000, seed=0).estimate


def test_expectations_scalar_and_vector(gaussian_flow):
    flow, mean, cov = gaussian_flow
    est = expectation(flow, lambda x: x.square().sum(-1), n=30_000, seed=1)
    exact = (mean.square().sum() + cov.trace()).item()
    assert abs(est.estimate - exact) < 4 * est.stderr
    vec = expectation(flow, lambda x: x, n=30_000, seed=2)
    assert vec.estimate.shape == (3,) and vec.stderr.shape == (3,)
    assert ((vec.estimate - mean).abs() < 4 * vec.stderr).all()
    assert torch.allclose(vec.stderr, (cov.diagonal() / 30_000).sqrt(), rtol=0.05)
    lo, hi = vec.interval(0.95)
    assert (lo < vec.estimate).all() and (vec.estimate < hi).all()


def test_marginal_cdf(gaussian_flow):
    flow, mean, cov = gaussian_flow
    t = torch.tensor([[-2.0, -0.5], [0.0, 1.5]], dtype=torch.float64)  # in standard deviations
    values = mean[1] + t * cov[1, 1].sqrt()
    est = marginal_cdf(flow, 1, values, n=30_000, seed=3)
    exact = torch.tensor([[_phi(v) for v in row] for row in t.tolist()], dtype=torch.float64)
    assert est.estimate.shape == (2, 2)
    assert ((est.estimate - exact).abs() < 4 * est.stderr).all()
    scalar = marginal_cdf(flow, -1, 0.0, n=1000, seed=0)
    assert isinstance(scalar.estimate, float)
    with pytest.raises(ValueError, match="must index a coordinate"):
        marginal_cdf(flow, 3, 0.0)


def test_log_normalizer_with_stderr():
    """Target: 5 * N(0, 1.3^2 I) in 2-D, unnormalised; proposal: the identity flow N(0, I)."""
    flow = nf.Flow(nf.RealNVP(2, layers=1, hidden=(4,)))
    s = 1.3

    def target(x):
        return math.log(5.0) - 0.5 * (x / s).square().sum(-1)

    exact = math.log(5.0) + math.log(2 * math.pi * s * s)
    est = log_normalizer(target, flow, n=40_000, seed=0)
    assert est.kind == "log" and est.pareto_k is not None and est.pareto_k < 0.7
    assert abs(est.estimate - exact) < 4 * est.stderr


def test_wilson_interval_and_bad_regions():
    e = Estimate(0.0, 0.0, 100, "probability")
    lo, hi = e.interval(0.95)
    assert lo == 0.0 and 0.0 < hi < 0.05
    assert float(Estimate(0.25, 0.01, 10, "mean")) == 0.25
    flow = nf.Flow(nf.RealNVP(2, layers=1, hidden=(4,)))
    with pytest.raises(ValueError, match="region must map"):
        probability(flow, lambda x: x > 0, n=10)
    with pytest.raises(ValueError, match="level must be in"):
        e.interval(1.0)


def test_docstring_examples_run():
    import doctest

    from torchnf.inference import adaptive, diagnostics, mcmc, outliers, queries, variational
    from torchnf.targets import applications, gaussian, geometry

    for module in (geometry, gaussian, applications, variational, diagnostics, mcmc, adaptive, outliers,
                   queries):
        failed, attempted = doctest.testmod(
            module, extraglobs={"torch": torch, "nf": nf, "math": math},
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert attempted > 0 and failed == 0, module.__name__


def test_conditional_flow_with_context():
    flow = nf.Flow(nf.RealNVP(2, context_dim=2, layers=1, hidden=(4,)))  # N(0, I) for any context
    est = probability(flow, lambda x: x[:, 0] < -1, n=20_000, context=torch.tensor([0.3, -1.0]), seed=0)
    assert abs(est.estimate - _phi(-1.0)) < 4 * est.stderr
