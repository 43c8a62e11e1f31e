"""Monotonic-network transformers (UMNN, DeepSigmoid) and their architectures (UMNNMAF, NAF).

The generic bijection properties run through the harness (``tests/cases/monotonic.py``); these
tests check what is specific: quadrature accuracy, the bisection's tolerance, cap and errors,
gradients of the bisection inverse, stability far in the tails, and short fits.
"""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf
from torchnf.transformers import UMNN, DeepSigmoid
from torchnf.transformers.monotonic import bisect, clenshaw_curtis

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_params(t, n: int, scale: float, seed: int = 0, dtype=F64) -> torch.Tensor:
    p = t.identity_params().to(dtype)
    return p + scale * torch.randn(n, *t.param_shape, generator=_gen(seed), dtype=dtype)


# -- quadrature --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 8, 9, 20])
def test_clenshaw_curtis_exact_on_polynomials(n):
    s, w = clenshaw_curtis(n)
    assert s.dtype == F64 and bool((w > 0).all())
    for k in range(n):  # degree n - 1 is integrated exactly
        exact = 0.0 if k % 2 else 2.0 / (k + 1)
        assert abs(float((w * s**k).sum()) - exact) < 1e-13


@pytest.mark.parametrize("n", [12, 20])
def test_clenshaw_curtis_on_closed_form_integrals(n):
    s, w = clenshaw_curtis(n)
    a, b = -0.5, 2.0
    t = (b - a) / 2 * s + (b + a) / 2
    for f, exact in [(torch.exp, math.exp(b) - math.exp(a)),
                     (lambda t: torch.cos(3 * t), (math.sin(3 * b) - math.sin(3 * a)) / 3),
                     (lambda t: 1 / (1 + t**2), math.atan(b) - math.atan(a))]:
        approx = float((b - a) / 2 * (w * f(t)).sum())
        assert abs(approx - exact) < (1e-6 if n == 12 else 1e-9)


def test_umnn_quadrature_accuracy_and_convergence():
    # Against an independent reference: composite Simpson on 20001 points of the same integrand.
    t = UMNN(hidden=4)
    params = _random_params(t, 9, 0.7, seed=4)
    x = torch.linspace(-4, 4, 9, dtype=F64)
    u, c, v, d, b = t._split(params)
    grid = x[:, None] * torch.linspace(0, 1, 20001, dtype=F64)
    g = t._g(t._net(grid, u, c, v, d))
    simpson = torch.ones(20001, dtype=F64)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    ref = b + x * (g * simpson).sum(-1) / (3 * 20000)
    errors = {}
    for q in (8, 20, 40):
        y, _ = UMNN(hidden=4, quadrature=q).forward(x, params)
        errors[q] = float(((y - ref) / ref.abs().clamp(min=1)).abs().max())
    assert errors[20] < 2e-6 and errors[40] < 1e-10 and errors[40] < errors[20] < errors[8]


def test_umnn_autograd_derivative_is_the_integrand():
    t = UMNN(hidden=6)
    params = _random_params(t, 50, 1.0)
    x = torch.linspace(-4, 4, 50, dtype=F64).requires_grad_(True)
    y, ladj = t.forward(x, params)
    (dy,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(dy.log(), ladj, rtol=0, atol=1e-13)


# -- bisection ---------------------------------------------------------------------------------


def test_bisect_honours_tolerance():
    fn = lambda x: x**3 + x  # noqa: E731
    root = torch.linspace(-20, 20, 41, dtype=F64)
    y = fn(root)
    for tol in (1e-2, 1e-5, 1e-9):
        x = bisect(fn, y, torch.full_like(y, -1.0), torch.full_like(y, 1.0), tol, 200, "test")
        err = (x - root).abs() / root.abs().clamp(min=1)
        assert float(err.max()) <= tol / 2 + 1e-15  # midpoint of a bracket of relative width tol
        assert tol > 1e-9 or float(err.max()) < 1e-9


def test_bisect_cap_and_errors():
    fn = lambda x: x  # noqa: E731
    y = torch.tensor([0.3, -5.0], dtype=F64)
    lo, hi = torch.full_like(y, -10.0), torch.full_like(y, 10.0)
    with pytest.raises(RuntimeError, match=r"test: bisection did not reach the tolerance .* max_iter=3"):
        bisect(fn, y, lo, hi, 1e-8, 3, "test")
    with pytest.raises(RuntimeError, match="non-finite"):
        bisect(fn, torch.tensor([float("nan")], dtype=F64), lo[:1], hi[:1], 1e-8, 100, "test")
    with pytest.raises(RuntimeError, match="could not bracket"):
        bisect(torch.tanh, torch.tensor([2.0], dtype=F64), lo[:1], hi[:1], 1e-8, 100, "test")


@pytest.mark.parametrize("make", [lambda **k: UMNN(hidden=4, **k), lambda **k: DeepSigmoid(4, **k)],
                         ids=["UMNN", "DeepSigmoid"])
def test_transformer_inverse_tolerance_and_cap(make):
    t = make(bisection_tol=1e-12)
    params = _random_params(t, 200, 1.0)
    x = 3 * torch.randn(200, generator=_gen(1), dtype=F64)
    y = t.forward(x, params)[0]
    x2, ladj2 = t.inverse(y, params)
    assert float((x2 - x).abs().max()) < 1e-10
    assert torch.allclose(ladj2, -t.forward(x, params)[1], rtol=0, atol=1e-10)
    with pytest.raises(RuntimeError, match=type(t).__name__ + ": bisection did not reach"):
        make(max_iter=4).inverse(y, params)


# -- gradients of the inverse ------------------------------------------------------------------


def test_inverse_gradients_match_analytic_inverse_dsf():
    # One sigmoid unit: DSF(x) = a x + b, so y = (1 - e)(a x + b) + e x has a closed-form inverse.
    t = DeepSigmoid(hidden=1, eps=0.05)
    raw = torch.tensor([[[0.7], [-0.4], [0.0]]], dtype=F64).expand(5, 1, 3, 1).clone().requires_grad_(True)
    y = torch.linspace(-3, 3, 5, dtype=F64).requires_grad_(True)
    x, ladj = t.inverse(y, raw)
    gy, graw = torch.autograd.grad((x * torch.arange(1, 6)).sum() + ladj.sum(), (y, raw))
    a = torch.nn.functional.softplus(2 * raw[..., 0, 0, 0]) + 1e-3
    b = 3 * raw[..., 0, 1, 0]
    slope = (1 - t.eps) * a + t.eps
    x_ref = (y - (1 - t.eps) * b) / slope
    ey, eraw = torch.autograd.grad((x_ref * torch.arange(1, 6)).sum() - slope.log().sum(), (y, raw))
    assert torch.allclose(x, x_ref, rtol=0, atol=1e-12)
    assert torch.allclose(gy, ey, rtol=0, atol=1e-10) and torch.allclose(graw, eraw, rtol=0, atol=1e-10)


def test_inverse_gradients_match_analytic_inverse_umnn():
    # v = 0: constant integrand g = e + (1 - e) softplus(d + log(e - 1)), so x = (y - b) / g;
    # compared on the parameters this closed form depends on (d, b) and on y.
    t = UMNN(hidden=2)
    params = torch.tensor([0.5, 1.0, 0.1, -1.0, 0.0, 0.0, -0.7, 0.3], dtype=F64).expand(4, 8).clone()
    params.requires_grad_(True)
    y = torch.tensor([-2.0, -0.1, 0.4, 5.0], dtype=F64, requires_grad=True)
    x, ladj = t.inverse(y, params)
    gy, gp = torch.autograd.grad((x**2).sum() + ladj.sum(), (y, params))
    d, b = params[:, 6], params[:, 7]
    g = t.min_slope + (1 - t.min_slope) * torch.nn.functional.softplus(d + math.log(math.e - 1))
    x_ref = (y - b) / g
    ey, ep = torch.autograd.grad((x_ref**2).sum() - g.log().sum(), (y, params))
    assert torch.allclose(x, x_ref, rtol=0, atol=1e-12)
    assert torch.allclose(gy, ey, rtol=0, atol=1e-10)
    assert torch.allclose(gp[:, 6:], ep[:, 6:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("make", [lambda: UMNN(hidden=3, quadrature=40), lambda: DeepSigmoid(3, layers=2)],
                         ids=["UMNN", "DeepSigmoid"])
def test_inverse_gradients_match_finite_differences(make):
    # UMNN's inverse inverts the quadrature but differentiates with the exact integrand, so the two
    # agree up to the quadrature error: enough nodes make that negligible here.
    t = make()
    params = _random_params(t, 3, 0.8, seed=2)
    y = torch.tensor([-1.5, 0.2, 2.5], dtype=F64)

    def f(y, params):
        x, ladj = t.inverse(y, params)
        return (x * torch.tensor([1.0, -2.0, 0.5], dtype=F64)).sum() + ladj.sum()

    yv, pv = y.clone().requires_grad_(True), params.clone().requires_grad_(True)
    gy, gp = torch.autograd.grad(f(yv, pv), (yv, pv))
    h = 1e-6
    eye = torch.eye(3, dtype=F64)
    fd_y = torch.stack([(f(y + h * e, params) - f(y - h * e, params)) / (2 * h) for e in eye])
    assert torch.allclose(gy, fd_y, rtol=1e-6, atol=1e-7)
    flat = params.flatten()
    for i in torch.randperm(flat.numel(), generator=_gen(3))[:12].tolist():
        e = torch.zeros_like(flat)
        e[i] = h
        fd = (f(y, (flat + e).view_as(params)) - f(y, (flat - e).view_as(params))) / (2 * h)
        assert abs(float(gp.flatten()[i] - fd)) < 1e-6 * (1 + abs(float(fd))), i


def test_inverse_does_not_backpropagate_through_the_loop():
    # The graph of the inverse holds one Newton step, not one node per bisection step.
    t = UMNN(hidden=3)
    params = _random_params(t, 4, 0.5).requires_grad_(True)
    x, _ = t.inverse(torch.randn(4, dtype=F64), params)
    seen, stack, n = set(), [x.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        n += 1
        stack.extend(f for f, _ in node.next_functions)
    assert n < 80


# -- numerics ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_deep_sigmoid_log_derivative_stable_far_out(dtype):
    t = DeepSigmoid(hidden=5, layers=2)
    params = _random_params(t, 8, 1.0, dtype=dtype)
    x = torch.tensor([-1e30, -1e8, -1e4, -50.0, 50.0, 1e4, 1e8, 1e30], dtype=dtype).requires_grad_(True)
    y, ladj = t.forward(x, params)
    assert bool(torch.isfinite(y).all() & torch.isfinite(ladj).all())
    (gx,) = torch.autograd.grad(y.sum() + ladj.sum(), x)
    assert bool(torch.isfinite(gx).all())
    # Far out each block is affine with slope (1 - e) min_j a_j + e, so ladj is the sum of logs.
    a = torch.nn.functional.softplus(2 * params[:, :, 0, :]) + 1e-3
    slope = ((1 - t.eps) * a.min(-1).values + t.eps).log().sum(-1)
    far = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert torch.allclose(ladj[far], slope[far], rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-9)
    xi, li = t.inverse(y[1:-1].detach(), params[1:-1])
    assert torch.allclose(xi, x[1:-1].detach(), rtol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("t", [UMNN(hidden=5), DeepSigmoid(6), DeepSigmoid(3, layers=3)], ids=str)
def test_strictly_increasing_under_random_parameters(t):
    params = _random_params(t, 1, 3.0, seed=5).expand(2001, *t.param_shape)
    x = torch.linspace(-10, 10, 2001, dtype=F64)
    y, ladj = t.forward(x, params)
    assert bool((y.diff() > 0).all()) and bool(torch.isfinite(ladj).all())


def test_deep_sigmoid_near_identity_at_init():
    t = DeepSigmoid(8)
    x = torch.linspace(-20, 20, 4001, dtype=F64)
    y, ladj = t.forward(x, t.identity_params().to(F64).expand(4001, 1, 3, 8))
    assert float((y - x).abs().max()) < 0.75 and float((y - x)[[0, -1]].abs().max()) > 0.7
    assert float(ladj.max()) <= 1e-12 and float(ladj.min()) > math.log(0.71)
    assert abs(float(t.forward(torch.zeros(1, dtype=F64), t.identity_params().to(F64)[None])[0])) < 1e-14


def test_constructor_errors_name_the_class():
    for make, needle in [(lambda: UMNN(hidden=0), "UMNN: hidden"),
                         (lambda: UMNN(quadrature=1), "UMNN: quadrature"),
                         (lambda: UMNN(bisection_tol=0), "UMNN: bisection_tol"),
                         (lambda: DeepSigmoid(eps=1.0), "DeepSigmoid: eps"),
                         (lambda: DeepSigmoid(max_iter=0), "DeepSigmoid: max_iter"),
                         (lambda: nf.NAF(1, coupling=True), "NAF: dim"),
                         (lambda: nf.UMNNMAF(3, layers=0), "UMNNMAF: layers")]:
        with pytest.raises(ValueError, match=needle):
            make()


# -- architectures -----------------------------------------------------------------------------


def _banana(n: int, seed: int) -> torch.Tensor:
    u = torch.randn(n, 2, generator=_gen(seed))
    return torch.stack([u[:, 0], 0.5 * u[:, 1] + 0.5 * (u[:, 0] ** 2 - 1)], dim=-1)


def _gaussian_loglik(x: torch.Tensor) -> float:
    """Average log-likelihood of the best full-covariance Gaussian (the baseline to beat)."""
    cov = torch.cov(x.T)
    return float(-0.5 * (x.shape[1] * (1 + math.log(2 * math.pi)) + torch.logdet(cov)))


@pytest.mark.parametrize("arch", ["UMNNMAF", "NAF"])
def test_architecture_fit_on_banana(arch):
    # True log-likelihood of the banana: -log(2 pi e) + log 2 = -2.145; best Gaussian: -2.71 on this
    # test set. 100 Adam steps (batch 128) reach -2.19 (UMNNMAF) and -2.20 (NAF), seed 0.
    torch.manual_seed(0)
    x, x_test = _banana(2000, 0), _banana(2000, 1)
    kw = {"integrand_hidden": 8, "quadrature": 12} if arch == "UMNNMAF" else {"sigmoid_units": 6}
    flow = nf.Flow(getattr(nf, arch)(2, layers=2, hidden=(32, 32), **kw))
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(100):
        idx = torch.randint(0, 2000, (128,))
        loss = -flow.log_prob(x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ll = float(flow.log_prob(x_test).mean())
    assert _gaussian_loglik(x_test) < -2.6 and ll > -2.3, (ll, _gaussian_loglik(x_test))
    s = flow.sample(500)
    assert bool(torch.isfinite(s).all())
