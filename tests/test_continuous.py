"""Continuous flows beyond the harness: tight float64 round trips, exact-trace log-det vs autograd,
Hutchinson's mean vs the exact trace, RNODE regularisers, the adjoint method, the missing-torchdiffeq
message, FFJORD wiring, save/load and a short fit."""

from __future__ import annotations

import copy
import pickle
import sys

import pytest
import torch

import torchnf as nf
from test_residual import fit_correlated_gaussian

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}


def _perturbed(layer: nf.Bijection, scale: float = 0.5, seed: int = 0) -> nf.Bijection:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _flow(context_dim: int = 0, **kw) -> nf.ContinuousFlow:
    torch.manual_seed(0)
    return _perturbed(nf.ContinuousFlow(2, context_dim, hidden=(16, 16), **{**TIGHT, **kw})).double()


def _se(draws: torch.Tensor) -> torch.Tensor:
    return draws.std(0) / draws.shape[0] ** 0.5


def test_identity_and_zero_regularisation_at_initialisation():
    layer = nf.ContinuousFlow(3, hidden=(8, 8), kinetic=1.0, jacobian_norm=1.0)
    x = torch.randn(5, 3)
    z, ladj = layer(x)
    torch.testing.assert_close(z, x, rtol=5e-6, atol=1e-7)  # a few ulp: the solver interpolates
    assert torch.equal(ladj, torch.zeros(5)) and torch.equal(layer.regularization, torch.zeros(5))


def test_round_trip_float64_with_context():
    layer = _flow(context_dim=2).eval()
    x, c = torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)
    z, ladj = layer(x, c)
    x2, ladj2 = layer.inverse(z, c)
    torch.testing.assert_close(x2, x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ladj + ladj2, torch.zeros(6, dtype=F64), rtol=0, atol=1e-8)
    assert (z - x).abs().max() > 0.1 and ladj.abs().max() > 0.1  # a non-trivial map
    z_other = layer(x, torch.randn(6, 2, dtype=F64))[0]
    assert (z_other - z).abs().max() > 1e-3  # the context matters


def test_exact_trace_logdet_matches_autograd_slogdet():
    layer = _flow().eval()
    x = torch.randn(3, 2, dtype=F64)
    ladj = layer(x)[1]
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[i])
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(jac)[1], rtol=1e-7, atol=1e-7)
    layer.train()
    layer.trace = "exact"  # the exact trace is also available in training mode
    torch.testing.assert_close(layer(x)[1], ladj, rtol=1e-9, atol=1e-9)


def test_hutchinson_mean_matches_exact_trace():
    layer = _flow(atol=1e-6, rtol=1e-6)
    x = torch.randn(2, dtype=F64)
    exact = layer.eval()(x)[1]
    layer.train()
    with torch.no_grad():  # every row draws its own probe: 3000 rows = 3000 draws
        draws = layer(x.expand(3000, 2))[1]
    se = _se(draws)
    assert abs(draws.mean() - exact) < 4 * se + 1e-5
    assert draws.std() > 1e-3  # really stochastic


def test_regularisers_non_negative_and_estimated_without_bias():
    layer = _flow(atol=1e-6, rtol=1e-6, kinetic=1.0, jacobian_norm=0.0).train()
    x = torch.randn(2, dtype=F64)
    layer(x.expand(4, 2))
    kinetic = layer.regularization
    assert kinetic.shape == (4,) and (kinetic > 0).all()
    torch.testing.assert_close(kinetic, kinetic[:1].expand(4), rtol=1e-5, atol=0)  # no noise in K
    layer.kinetic, layer.jacobian_norm = 0.0, 1.0
    with torch.no_grad():
        layer(x.expand(3000, 2))
    draws = layer.regularization
    assert (draws >= 0).all()
    layer.trace = "exact"
    with torch.no_grad():
        layer(x)
    exact = layer.regularization
    assert abs(draws.mean() - exact) < 4 * _se(draws)
    layer.eval()
    layer(x)
    assert torch.equal(layer.regularization, torch.zeros((), dtype=F64))


def test_regularisation_has_a_gradient_and_does_not_break_copies():
    layer = _flow(kinetic=0.5, jacobian_norm=0.5, atol=1e-5, rtol=1e-5).train()
    layer(torch.randn(8, 2, dtype=F64))
    layer.regularization.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    clone = copy.deepcopy(layer)  # the stored tensor (with a graph) is not copied
    assert clone.regularization is None
    assert pickle.loads(pickle.dumps(layer)).regularization is None
    assert "regularization" not in "".join(layer.state_dict())


def test_adjoint_gradients_match_backpropagation():
    layers = [_flow(context_dim=1, adjoint=adjoint).eval() for adjoint in (False, True)]
    grads = []
    for layer in layers:
        x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        c = torch.randn(4, 1, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        z, ladj = layer(x, c)
        (z.square().sum() + ladj.sum()).backward()
        grads.append([x.grad, c.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_fixed_step_solver_and_float32():
    layer = _perturbed(nf.ContinuousFlow(2, hidden=(8,), solver="rk4", step_size=0.05)).eval()
    x = torch.randn(10, 2)
    z, ladj = layer(x)
    x2, ladj2 = layer.inverse(z)
    assert z.dtype == torch.float32 and ladj.dtype == torch.float32
    torch.testing.assert_close(x2, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ladj + ladj2, torch.zeros(10), rtol=0, atol=1e-4)


def test_missing_torchdiffeq_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # `import torchdiffeq` now fails
    with pytest.raises(ImportError, match=r"^FFJORD needs torchdiffeq: pip install torchnf\[ode\]$"):
        nf.ContinuousFlow(2)
    with pytest.raises(ImportError, match="pip install torchnf"):
        nf.FFJORD(2)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"solver": "rk45"}, "unknown solver"), ({"trace": "skilling"}, "trace must be"),
     ({"t1": 0.0}, "t1 must be"), ({"kinetic": -1.0}, "kinetic and jacobian_norm"),
     ({"atol": 0.0}, "atol and rtol")],
)
def test_bad_arguments_raise(kwargs, needle):
    with pytest.raises(ValueError, match="ContinuousFlow") as info:
        nf.ContinuousFlow(2, **kwargs)
    assert needle in str(info.value)


def test_ffjord_wiring_regularisation_and_save_load(tmp_path):
    torch.manual_seed(0)
    arch = _perturbed(nf.FFJORD(2, context_dim=1, layers=2, hidden=(8,), kinetic=1.0))
    assert len(arch) == 2 and all(isinstance(b, nf.ContinuousFlow) for b in arch)
    assert arch.regularization is None
    flow = nf.Flow(arch)
    x, c = torch.randn(5, 2), torch.randn(5, 1)
    flow.log_prob(x, c)
    torch.testing.assert_close(arch.regularization, arch[0].regularization + arch[1].regularization)
    flow.eval()
    flow.save(tmp_path / "ffjord.pt")
    loaded = nf.load(tmp_path / "ffjord.pt").eval()
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)
    with pytest.raises(ValueError, match="FFJORD: layers"):
        nf.FFJORD(2, layers=0)


@pytest.mark.slow
def test_fit_reaches_the_gaussian_entropy():
    """A short maximum-likelihood fit (with a small kinetic penalty) approaches the Gaussian's entropy."""
    torch.manual_seed(0)
    flow = nf.Flow(nf.FFJORD(2, hidden=(32, 32), atol=1e-4, rtol=1e-4, kinetic=0.01))
    nll, entropy = fit_correlated_gaussian(flow, 100, 2e-2, lambda: flow.bijection.regularization.mean())
    assert entropy - 0.05 < nll < entropy + 0.15, f"NLL {nll:.3f} vs entropy {entropy:.3f}"
