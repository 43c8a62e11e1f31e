"""Base distributions: normalisation, sampling moments, k-means initialisation, gradients, the
conditional mixture, save/load through a Flow, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf


def _perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _grid_1d(lo: float, hi: float, n: int) -> tuple[torch.Tensor, float]:
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    return x, (hi - lo) / (n - 1)


def _integral_2d(log_prob, lo: float, hi: float, n: int) -> float:
    x, h = _grid_1d(lo, hi, n)
    grid = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1)
    return float(log_prob(grid).exp().sum() * h * h)


def _mixture(dim: int, components: int, seed: int = 0, **kw) -> nf.GaussianMixture:
    gmm = nf.GaussianMixture(dim, components=components, **kw).double()
    _perturb(gmm, 0.5, seed)
    return gmm


# -- normalisation ---------------------------------------------------------------------------------


def test_gaussian_mixture_integrates_to_one_1d():
    gmm = _mixture(1, 3)
    x, h = _grid_1d(-15.0, 15.0, 30001)
    with torch.no_grad():
        total = float(gmm.log_prob(x[:, None]).exp().sum() * h)
    assert abs(total - 1.0) < 1e-6


def test_gaussian_mixture_integrates_to_one_2d():
    gmm = _mixture(2, 4, seed=1)
    with torch.no_grad():
        total = _integral_2d(gmm.log_prob, -12.0, 12.0, 601)
    assert abs(total - 1.0) < 1e-3


def test_conditional_mixture_integrates_to_one_for_each_context():
    gmm = _mixture(2, 3, seed=2, context_dim=2, hidden=(8,))
    for c in torch.randn(2, 2, dtype=torch.float64):
        with torch.no_grad():
            total = _integral_2d(lambda z, c=c: gmm.log_prob(z, c), -14.0, 14.0, 351)
        assert abs(total - 1.0) < 1e-3


def test_uniform_torus_density_and_support():
    for dtype in (torch.float32, torch.float64):
        base = nf.UniformTorus(2).to(dtype)
        pi = torch.tensor(math.pi, dtype=dtype)
        inside = torch.stack([torch.stack([-pi, torch.zeros((), dtype=dtype)]),
                              torch.stack([torch.nextafter(pi, -pi), pi / 2])])
        lp = base.log_prob(inside)
        assert lp.dtype == dtype
        torch.testing.assert_close(lp, torch.full((2,), -2 * math.log(2 * math.pi), dtype=dtype))
        outside = torch.tensor([[math.pi, 0.0], [0.0, -4.0], [7.0, 7.0]], dtype=dtype)
        assert torch.equal(base.log_prob(outside), torch.full((3,), -math.inf, dtype=dtype))
    # A midpoint grid over the torus integrates exp(log_prob) to 1.
    n = 200
    h = 2 * math.pi / n
    t = -math.pi + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1)
    assert abs(float(nf.UniformTorus(2).double().log_prob(grid).exp().sum() * h * h) - 1.0) < 1e-12


# -- sampling --------------------------------------------------------------------------------------


def test_gaussian_mixture_sample_moments():
    gmm = nf.GaussianMixture(2, components=3).double()
    with torch.no_grad():
        gmm.logits.copy_(torch.tensor([0.0, 1.0, -0.5]))
        gmm.means.copy_(torch.tensor([[-3.0, 0.0], [2.0, 1.0], [0.0, -4.0]]))
        gmm.log_scales.copy_(torch.tensor([[0.0, -0.5], [-1.0, 0.3], [0.2, 0.0]]))
    w = gmm.logits.detach().softmax(0)
    mu, var = gmm.means.detach(), (2 * gmm.log_scales.detach()).exp()
    mean = w @ mu
    second = w @ (var + mu.square())
    n = 200_000
    torch.manual_seed(1)
    x = gmm.sample(n)
    assert x.shape == (n, 2) and x.dtype == torch.float64
    se = (second - mean.square()).sqrt() / math.sqrt(n)
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(x.var(0), second - mean.square(), rtol=0.02, atol=0.0)
    # Component frequencies: the fraction of samples nearest each (well-separated) mean.
    nearest = torch.cdist(x, mu).argmin(-1)
    torch.testing.assert_close(torch.bincount(nearest, minlength=3).double() / n, w, atol=0.01, rtol=0.0)


def test_sample_shapes_and_context_batch():
    gmm = nf.GaussianMixture(3, components=2, context_dim=4, hidden=(8,))
    assert gmm.sample((5, 2), torch.randn(4)).shape == (5, 2, 3)
    assert gmm.sample(6, torch.randn(7, 4)).shape == (6, 7, 3)
    assert gmm.sample((), torch.randn(4)).shape == (3,)
    assert nf.UniformTorus(3).sample((4, 5)).shape == (4, 5, 3)


def test_uniform_torus_samples():
    for dtype in (torch.float32, torch.float64):
        x = nf.UniformTorus(3).to(dtype).sample(100_000)
        assert x.dtype == dtype
        assert bool(((x >= -math.pi) & (x < math.pi)).all())
        assert x.mean().abs() < 0.02
        assert abs(float(x.var()) - math.pi**2 / 3) < 0.03


# -- k-means initialisation ------------------------------------------------------------------------


def _clusters(n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[-10.0, 0.0], [10.0, 5.0], [0.0, 15.0]], dtype=torch.float64)
    scales = torch.tensor([[1.0, 0.5], [0.7, 1.5], [1.2, 1.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    k = torch.multinomial(weights, n, replacement=True, generator=g)
    x = means[k] + scales[k] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, means, scales, weights


def _match(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Index of the found component closest to each true mean."""
    return torch.cdist(truth, found).argmin(-1)


def test_kmeans_initialisation_recovers_separated_clusters():
    x, means, scales, weights = _clusters()
    gmm = nf.GaussianMixture(2, components=3).double()
    out = gmm.initialize(x, generator=torch.Generator().manual_seed(0))
    assert out is gmm
    idx = _match(gmm.means.detach(), means)
    assert sorted(idx.tolist()) == [0, 1, 2]
    torch.testing.assert_close(gmm.means.detach()[idx], means, atol=0.1, rtol=0.0)
    torch.testing.assert_close(gmm.log_scales.detach().exp()[idx], scales, rtol=0.1, atol=0.0)
    torch.testing.assert_close(gmm.logits.detach().softmax(0)[idx], weights, atol=0.03, rtol=0.0)
    # The k-means fit is already close to maximum likelihood: within 0.05 nats of the truth.
    true = nf.GaussianMixture(2, components=3).double()
    with torch.no_grad():
        true.means.copy_(means)
        true.log_scales.copy_(scales.log())
        true.logits.copy_(weights.log())
        gap = float(true.log_prob(x).mean() - gmm.log_prob(x).mean())
    assert gap < 0.05


def test_kmeans_initialisation_is_seeded():
    x = _clusters(500, seed=3)[0]
    a = nf.GaussianMixture(2, components=5).double().initialize(x, generator=torch.Generator().manual_seed(7))
    b = nf.GaussianMixture(2, components=5).double().initialize(x, generator=torch.Generator().manual_seed(7))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert bool(torch.isfinite(a.log_prob(x)).all())


def test_initialisation_degenerate_data_stays_finite():
    # Duplicated points and singleton clusters: scales fall back to the overall spread or a floor.
    x = torch.cat([torch.zeros(10, 2), torch.ones(10, 2), torch.tensor([[5.0, 5.0]])]).double()
    gen = torch.Generator().manual_seed(0)
    gmm = nf.GaussianMixture(2, components=4).double().initialize(x, generator=gen)
    for p in gmm.parameters():
        assert bool(torch.isfinite(p).all())
    assert bool(torch.isfinite(gmm.log_prob(x)).all())


def test_initialize_resets_conditional_net_to_the_fit():
    x = _clusters(600)[0].float()
    gmm = nf.GaussianMixture(2, components=3, context_dim=2, hidden=(8,))
    _perturb(gmm, 0.3, 0)
    gmm.initialize(x, generator=torch.Generator().manual_seed(0))
    z = x[:50]
    with torch.no_grad():
        a, b = gmm.log_prob(z, torch.randn(2)), gmm.log_prob(z, torch.randn(2) * 5)
    torch.testing.assert_close(a, b)


# -- gradients and the conditional mixture -----------------------------------------------------


def test_gradients_flow_through_log_prob_and_rsample():
    gmm = _mixture(3, 4)
    gmm.log_prob(torch.randn(20, 3, dtype=torch.float64)).sum().backward()
    for name, p in gmm.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert bool(p.grad.abs().sum() > 0), name
    gmm.zero_grad()
    gmm.sample(50).square().sum().backward()
    # Reparameterised Gaussian part: means and scales; the component choice is not differentiable.
    assert bool(gmm.means.grad.abs().sum() > 0) and bool(gmm.log_scales.grad.abs().sum() > 0)
    assert gmm.logits.grad is None or bool((gmm.logits.grad == 0).all())


def test_conditional_mixture_starts_at_unconditional_init():
    torch.manual_seed(3)
    cond = nf.GaussianMixture(2, components=3, context_dim=4, hidden=(16,))
    torch.manual_seed(3)
    plain = nf.GaussianMixture(2, components=3)
    z = torch.randn(10, 2)
    with torch.no_grad():
        ref = plain.log_prob(z)
        for c in (torch.zeros(4), torch.randn(4), 10 * torch.randn(10, 4)):
            torch.testing.assert_close(cond.log_prob(z, c), ref)


def test_conditional_mixture_uses_the_context_and_trains_its_net():
    cond = nf.GaussianMixture(2, components=3, context_dim=2, hidden=(16,))
    _perturb(cond, 0.3, 1)
    z = torch.randn(8, 2)
    with torch.no_grad():
        assert float((cond.log_prob(z, torch.zeros(2)) - cond.log_prob(z, torch.ones(2))).abs().max()) > 1e-3
    cond.log_prob(z, torch.randn(8, 2)).sum().backward()
    for name, p in cond.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    with pytest.raises(ValueError, match="GaussianMixture is conditional"):
        cond.log_prob(z)
    with pytest.raises(ValueError, match="GaussianMixture"):
        cond.log_prob(z, torch.randn(8, 3))


def test_mixture_fit_by_adam_reaches_the_truth():
    x, means, scales, weights = _clusters(2000, seed=5)
    x = x / 5
    torch.manual_seed(0)
    gmm = nf.GaussianMixture(2, components=3).double()  # default random init, no k-means
    opt = torch.optim.Adam(gmm.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = -gmm.log_prob(x).mean()
        loss.backward()
        opt.step()
    true = nf.GaussianMixture(2, components=3).double()
    with torch.no_grad():
        true.means.copy_(means / 5)
        true.log_scales.copy_((scales / 5).log())
        true.logits.copy_(weights.log())
        # Within 0.01 nats of the true model's likelihood (or better: the fit is to this sample).
        assert float(-true.log_prob(x).mean() - loss.detach()) > -0.01


# -- save / load -----------------------------------------------------------------------------------


def test_flow_with_mixture_base_saves_and_loads(tmp_path):
    x = _clusters(300)[0].float() / 5
    flow = nf.Flow(nf.Compose(nf.ActNorm(2), nf.LULinear(2)), base=nf.GaussianMixture(2, components=3))
    flow.log_prob(x)  # ActNorm data-dependent init
    flow.base.initialize(flow.transform(x).detach(), generator=torch.Generator().manual_seed(0))
    _perturb(flow.bijection, 0.05, 2)
    flow.save(tmp_path / "gmm.pt")
    loaded = nf.load(tmp_path / "gmm.pt")
    assert isinstance(loaded.base, nf.GaussianMixture) and loaded.base.components == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=0)
    torch.manual_seed(5)
    a = flow.sample(4)
    torch.manual_seed(5)
    torch.testing.assert_close(loaded.sample(4), a, rtol=0, atol=0)


def test_conditional_mixture_base_saves_and_loads(tmp_path):
    flow = nf.Flow(nf.LULinear(2), base=nf.GaussianMixture(2, components=2, context_dim=3, hidden=(8,)))
    assert flow.context_dim == 3
    _perturb(flow, 0.2, 4)
    flow = flow.double()
    flow.save(tmp_path / "cond.pt")
    loaded = nf.load(tmp_path / "cond.pt")
    x, c = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert loaded.base.means.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)
    assert loaded.sample(5, context=c[0]).shape == (5, 2)


def test_uniform_torus_base_saves_and_loads(tmp_path):
    flow = nf.Flow(nf.ElementwiseShift(2), base=nf.UniformTorus(2))
    flow.save(tmp_path / "torus.pt")
    loaded = nf.load(tmp_path / "torus.pt")
    x = torch.tensor([[0.0, 1.0], [4.0, 0.0]])
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


# -- existing distributions and bad input ---------------------------------------------------------


def test_standard_and_diagonal_normal_unchanged():
    z = torch.randn(5, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(nf.StandardNormal(3).double().log_prob(z), ref)
    diag = nf.DiagonalNormal(3).double()
    torch.testing.assert_close(diag.log_prob(z), ref)
    assert diag.sample((2, 4)).shape == (2, 4, 3)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: nf.GaussianMixture(0), "GaussianMixture: event_dim"),
        (lambda: nf.GaussianMixture((2, 3)), "GaussianMixture: event_dim"),
        (lambda: nf.GaussianMixture(2, components=0), "GaussianMixture: components"),
        (lambda: nf.UniformTorus(0), "UniformTorus: dim"),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_data_raises():
    gmm = nf.GaussianMixture(2, components=4)
    with pytest.raises(ValueError, match="needs at least components=4 events, got 3"):
        gmm.initialize(torch.randn(3, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        gmm.initialize(torch.tensor([[0.0, math.nan]] * 5))
    with pytest.raises(ValueError, match=r"GaussianMixture: expected data of shape \(\*batch, 2\)"):
        gmm.initialize(torch.randn(10, 3))
    with pytest.raises(ValueError, match="iters"):
        gmm.initialize(torch.randn(10, 2), iters=-1)
    with pytest.raises(ValueError, match=r"GaussianMixture: expected input of shape .*, got \(5, 3"):
        gmm.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match="unconditional"):
        gmm.log_prob(torch.randn(5, 2), torch.randn(5, 1))
