"""Residual flows beyond the harness: spectral normalisation, LipSwish, the log-det estimators (series,
Russian roulette, Neumann gradient) against exact values, the fixed-point inverse and its implicit
gradient, the non-convergence error, architectures, save/load and a short fit."""

from __future__ import annotations

import pytest
import torch

import torchnf as nf
from cases.residual import perturbed
from torchnf.bijections.lipschitz import LipschitzMLP, LipSwish, SpectralLinear

F64 = torch.float64


def _block(dim: int = 3, seed: int = 0, **kw) -> nf.ResidualBlock:
    torch.manual_seed(seed)
    return perturbed(nf.ResidualBlock(dim, hidden=(8,), **kw), seed=seed).double()


def _jac_g(block: nf.ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    """Jacobian of the residual branch at one point (``(D, D)``)."""
    return torch.autograd.functional.jacobian(lambda v: block(v)[0] - v, x)


def _mean_se(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5


# spectral normalisation and LipSwish ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (16, 16), (4, 20)])
def test_spectral_norm_honours_the_coefficient(shape):
    layer = SpectralLinear(shape[1], shape[0], coeff=0.7).double()
    with torch.no_grad():
        layer.weight.mul_(10.0)  # spectral norm far above the coefficient
    layer.converge_()
    sigma = torch.linalg.matrix_norm(layer.weight_normalized().detach(), 2)
    assert 0.7 * (1 - 1e-4) <= sigma <= 0.7 * (1 + 1e-5)
    # training mode: one step per call from stale vectors converges as well
    layer.u.copy_(torch.nn.functional.normalize(torch.randn(shape[0], dtype=F64), dim=0))
    layer.train()
    for _ in range(200):
        w = layer.weight_normalized()
    assert torch.linalg.matrix_norm(w.detach(), 2) <= 0.7 * (1 + 1e-4)


def test_small_weights_are_left_alone():
    layer = SpectralLinear(4, 4, coeff=0.9).double()
    with torch.no_grad():
        layer.weight.mul_(0.01)
    layer.converge_()
    assert torch.equal(layer.weight_normalized().detach(), layer.weight.detach())


def test_power_iteration_mutates_only_in_training():
    layer = SpectralLinear(6, 5, coeff=0.9)
    with torch.no_grad():
        layer.weight.add_(torch.randn(5, 6))  # vectors now stale
    u, v = layer.u.clone(), layer.v.clone()
    layer.eval()
    layer(torch.randn(3, 6))
    assert torch.equal(layer.u, u) and torch.equal(layer.v, v)
    layer.train()
    layer(torch.randn(3, 6))
    assert not torch.equal(layer.u, u)
    assert "u" in layer.state_dict() and "v" in layer.state_dict()


def test_zero_weight_keeps_the_power_iteration_alive():
    layer = SpectralLinear(4, 3, coeff=0.5, zero_init=True)
    for _ in range(3):
        layer(torch.randn(2, 4))
    assert torch.isfinite(layer.u).all() and torch.allclose(layer.u.norm(), torch.tensor(1.0))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 4) * 5)
    layer.converge_()
    assert torch.linalg.matrix_norm(layer.weight_normalized().detach(), 2) <= 0.5 * (1 + 1e-4)


@pytest.mark.parametrize("beta", [0.05, 1.0, 20.0])
def test_lipswish_is_one_lipschitz(beta):
    act = LipSwish().double()
    with torch.no_grad():
        act.raw_beta.fill_(torch.log(torch.expm1(torch.tensor(beta))))
    x = torch.linspace(-20 / beta, 20 / beta, 20001, dtype=F64, requires_grad=True)
    (d,) = torch.autograd.grad(act(x).sum(), x)
    assert d.abs().max() <= 1.0
    assert d.abs().max() > 0.5  # not trivially contractive


def test_lipschitz_mlp_bound_holds_pointwise():
    torch.manual_seed(1)
    g = LipschitzMLP(4, hidden=(16, 16), lipschitz=0.8, activation="elu").double()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p))
    for layer in g.linears:
        layer.converge_(tol=1e-10, max_iter=5000)
    g.eval()
    norms = [torch.linalg.matrix_norm(torch.autograd.functional.jacobian(g, x), 2)
             for x in torch.randn(20, 4, dtype=F64)]
    assert max(norms) <= 0.8 * (1 + 1e-6)


# the residual block -------------------------------------------------------------------------------


def test_identity_at_initialisation():
    block = nf.ResidualBlock(3, hidden=(8, 8))
    x = torch.randn(5, 3)
    z, ladj = block(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(5))


@pytest.mark.parametrize("activation", ["elu", "lipswish", "tanh", "softplus"])
def test_round_trip_and_exact_logdet_float64(activation):
    block = _block(activation=activation).eval()
    x = torch.randn(6, 3, dtype=F64) * 2
    z, ladj = block(x)
    x2, ladj2 = block.inverse(z)
    torch.testing.assert_close(x2, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ladj + ladj2, torch.zeros(6, dtype=F64), rtol=0, atol=1e-10)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: block(v)[0], x[i])
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
    assert ladj.abs().min() > 0.1  # a non-trivial map


def test_series_estimator_matches_truncated_series():
    block = _block(estimator="series", n_terms=4).train()
    x = torch.randn(3, dtype=F64)
    jac = _jac_g(block, x)
    powers = [torch.linalg.matrix_power(jac, k) for k in range(1, 5)]
    truncated = sum((-1) ** (k + 1) * torch.trace(p) / k for k, p in enumerate(powers, start=1))
    # every row of a batch draws its own probe: 4000 rows = 4000 draws
    with torch.no_grad():
        draws = block(x.expand(4000, 3))[1]
    mean, se = _mean_se(draws)
    assert abs(mean - truncated) < 4 * se
    assert se < 0.05 * abs(truncated)


@pytest.mark.parametrize("neumann", [False, True])
def test_roulette_estimator_is_unbiased(neumann):
    block = _block(estimator="roulette", neumann_grad=neumann)
    x = torch.randn(3, dtype=F64)
    exact = block.eval()(x)[1]
    block.train()
    with torch.no_grad():  # the roulette draws one number of terms per call: 300 calls of 20 rows
        draws = torch.stack([block(x.expand(20, 3))[1].mean() for _ in range(300)])
    mean, se = _mean_se(draws)
    assert abs(mean - exact) < 4 * se
    assert se < 0.05 * abs(exact)


@pytest.mark.parametrize("estimator", ["roulette", "series"])
def test_neumann_gradient_is_unbiased(estimator):
    block = _block(estimator=estimator, n_terms=40, neumann_grad=True)
    weight = block.g.linears[0].weight
    x = torch.randn(3, dtype=F64)
    (exact,) = torch.autograd.grad(block.eval()(x)[1], weight)
    block.train()
    draws = []
    for _ in range(150):
        (grad,) = torch.autograd.grad(block(x.expand(20, 3))[1].mean(), weight)
        draws.append(grad)
    mean, se = _mean_se(torch.stack(draws))
    z = ((mean - exact).abs() / se).max()
    assert z < 4.5, f"largest deviation {float(z):.2f} standard errors"
    assert (mean - exact).norm() < 0.1 * exact.norm()


def test_backprop_through_series_matches_neumann_gradient_in_expectation():
    grads = {}
    for neumann in (False, True):
        block = _block(estimator="series", n_terms=30, neumann_grad=neumann).train()
        x = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(3))
        ladj = block(x.expand(4000, 3))[1].mean()
        grads[neumann] = torch.autograd.grad(ladj, block.g.linears[0].weight)[0]
    torch.testing.assert_close(grads[True], grads[False], rtol=0.05, atol=0.05 * grads[False].abs().max())


def test_training_gradient_flows_to_inputs_and_every_parameter():
    block = _block(estimator="roulette", neumann_grad=True, activation="lipswish").train()
    x = torch.randn(7, 3, dtype=F64, requires_grad=True)
    z, ladj = block(x)
    (z.square().sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_high_dimensional_eval_uses_a_deterministic_series():
    """Above ``exact_max_dim`` eval averages ``eval_probes`` single-probe series: deterministic, and
    within a few standard errors (measured from training-mode single-probe draws) of the exact value."""
    probes = 16
    block = _block(dim=6, exact_max_dim=2, eval_terms=40, eval_probes=probes, estimator="series", n_terms=40)
    x = torch.randn(4, 6, dtype=F64)
    with torch.no_grad():
        block.eval()
        approx = block(x)[1]
        torch.testing.assert_close(block(x)[1], approx, rtol=0, atol=0)
        block.exact_max_dim = 64
        exact = block(x)[1]
        block.train()
        sd = torch.stack([block(x)[1] for _ in range(200)]).std(0)
    assert ((approx - exact).abs() < 4 * sd / probes**0.5).all()


def test_inverse_gradient_matches_unrolled_iteration():
    block = _block(context_dim=2).eval()
    z = torch.randn(4, 3, dtype=F64, requires_grad=True)
    c = torch.randn(4, 2, dtype=F64, requires_grad=True)
    params = [z, c, *block.parameters()]
    x, _ = block.inverse(z, c)
    implicit = torch.autograd.grad(x.square().sum(), params)
    weights = block.g.weights()
    xu = z
    for _ in range(300):  # differentiate through the iterations themselves
        xu = z - block.g.evaluate(xu, weights, c)
    torch.testing.assert_close(x, xu, rtol=1e-10, atol=1e-12)
    unrolled = torch.autograd.grad(xu.square().sum(), params)
    for a, b in zip(implicit, unrolled):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_inverse_that_cannot_converge_raises():
    block = _block(lipschitz=0.999, max_iter=3).eval()
    z = block(torch.randn(5, 3, dtype=F64) * 3)[0]
    with pytest.raises(RuntimeError, match=r"ResidualBlock.inverse: .* did not converge in max_iter=3"):
        block.inverse(z)
    block.max_iter = 2000
    block.inverse(z)  # converges with a realistic cap


def test_inverse_tolerances_are_honoured():
    block = _block(lipschitz=0.95, atol=1e-4, rtol=0.0).eval()
    x = torch.randn(50, 3, dtype=F64)
    z = block(x)[0]
    err = (block.inverse(z)[0] - x).abs().max()
    assert 1e-13 < err < 1e-4 * 0.95 / (1 - 0.95)  # stopped early, within the contraction bound


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"lipschitz": 1.0}, "lipschitz must be in (0, 1)"), ({"estimator": "taylor"}, "estimator must be"),
     ({"activation": "relu"}, "1-Lipschitz"), ({"n_terms": 0}, "n_terms must be"),
     ({"geom_p": 1.5}, "geom_p")],
)
def test_bad_arguments_raise(kwargs, needle):
    with pytest.raises(ValueError, match="LipschitzMLP|ResidualBlock") as info:
        nf.ResidualBlock(2, **kwargs)
    assert needle in str(info.value)


def test_wrong_shape_names_the_class():
    with pytest.raises(ValueError, match="ResidualBlock"):
        nf.ResidualBlock(3)(torch.randn(4, 2))


# architectures ------------------------------------------------------------------------------------


def test_architectures_wire_blocks_and_actnorm():
    iresnet = nf.IResNet(2, layers=3, hidden=(8,))
    assert [type(b).__name__ for b in iresnet] == ["ResidualBlock"] * 3
    assert iresnet[0].estimator == "series" and iresnet.fast_direction == "forward"
    resflow = nf.ResidualFlow(2, layers=3, hidden=(8,))
    assert [type(b).__name__ for b in resflow] == ["ResidualBlock", "ActNorm"] * 2 + ["ResidualBlock"]
    assert resflow[0].estimator == "roulette" and resflow[0].neumann_grad
    assert resflow[0].g.lipschitz == 0.98 and isinstance(resflow[0].g.activations[0], LipSwish)
    assert len(nf.ResidualFlow(2, layers=3, actnorm=False)) == 3
    with pytest.raises(ValueError, match="IResNet: layers"):
        nf.IResNet(2, layers=0)


def test_save_and_load_rebuild_the_flow(tmp_path):
    flow = nf.Flow(perturbed(nf.ResidualFlow(3, context_dim=2, layers=2, hidden=(8,))))
    flow.eval()
    x, c = torch.randn(5, 3), torch.randn(5, 2)
    flow.save(tmp_path / "resflow.pt")
    loaded = nf.load(tmp_path / "resflow.pt").eval()
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)
    torch.testing.assert_close(loaded.inverse_transform(loaded.transform(x, c), c), x, rtol=1e-4, atol=1e-5)


def fit_correlated_gaussian(flow: nf.Flow, steps: int, lr: float, penalty=None) -> tuple[float, float]:
    """Fit a correlated 2-D Gaussian by maximum likelihood (Adam, batch 256, plus ``penalty()`` if
    given); return the held-out NLL in eval mode and the Gaussian's entropy (the best NLL possible)."""
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]]) * 2.0
    data = torch.distributions.MultivariateNormal(torch.tensor([1.0, -1.0]), cov)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        loss = -flow.log_prob(data.sample((256,))).mean()
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        nll = -flow.log_prob(data.sample((20000,))).mean()
    return float(nll), float(data.entropy())


@pytest.mark.parametrize("arch", ["IResNet", "ResidualFlow"])
def test_fit_reaches_the_gaussian_entropy(arch):
    """Maximum likelihood on a correlated 2-D Gaussian approaches its entropy."""
    torch.manual_seed(0)
    nll, entropy = fit_correlated_gaussian(nf.Flow(getattr(nf, arch)(2, layers=2, hidden=(32,))), 150, 1e-2)
    assert entropy - 0.05 < nll < entropy + 0.15, f"NLL {nll:.3f} vs entropy {entropy:.3f}"
