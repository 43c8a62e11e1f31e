"""The fused rational-quadratic spline (transformers/rq_fused.py) against the composed reference
implementation of the same map: values, log-derivatives, hand-written gradients (gradcheck) and
second derivatives, in float64, over inputs inside, on the knots of and outside the spline.

Every test runs twice: through the compiled kernel (transformers/rq_native.cpp) and through the
PyTorch operations of rq_fused.py."""

import contextlib
import os
import re
import shutil

import pytest
import torch

from torchnf.transformers import RationalQuadraticSpline, rq_native
from torchnf.transformers.rq_fused import spline_forward, spline_inverse


@pytest.fixture(autouse=True, params=["native", "torch"])
def path(request):
    if request.param == "native" and not rq_native.available():
        pytest.skip(f"compiled spline kernel not built: {rq_native.status()}")
    with rq_native.disabled() if request.param == "torch" else contextlib.nullcontext():
        yield request.param


def test_the_kernel_builds_where_a_compiler_is_found():
    if shutil.which("c++") or shutil.which("g++"):
        assert rq_native.available(), rq_native.status()


def test_a_compiler_without_openmp_builds_a_one_thread_kernel(tmp_path, monkeypatch, path):
    """Where ``-fopenmp`` is refused (Apple clang), the next build leaves it out, and that kernel
    computes the same map."""
    real = shutil.which("c++") or shutil.which("g++")
    if path == "torch" or real is None:
        pytest.skip("needs a C++ compiler; runs once")
    fake = tmp_path / "cxx"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("TORCHNF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(rq_native._state, "flags", None)
    lib = rq_native._build()
    assert "-fopenmp" not in rq_native._state["flags"] and "-march=native" in rq_native._state["flags"]
    monkeypatch.setitem(rq_native._state, "lib", lib)
    t, x, p = _case(8, n=5000, seed=15)
    _assert_no_grad_calls_match_the_composed_map(t, x, p)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc (Linux)")
def test_the_kernel_shares_the_openmp_runtime_that_torch_loaded(path):
    """Two OpenMP runtimes would keep two pools of spinning threads on the same cores."""
    if path == "native":
        x, p = torch.zeros(5000), torch.zeros(5000, 23)
        spline_forward(x, p, RationalQuadraticSpline(8)._spec, None)
    with open("/proc/self/maps") as f:
        runtimes = set(re.findall(r"\S*/libgomp[^/\s]*\.so[^/\s]*", f.read()))
    assert len(runtimes) <= 1, runtimes


def _case(bins: int, n: int = 300, seed: int = 0, scale: float = 2.0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    t = RationalQuadraticSpline(bins, bound=3.0, **kwargs)
    p = torch.randn(n, 3 * bins - 1, generator=g, dtype=torch.float64) * scale
    x = torch.randn(n, generator=g, dtype=torch.float64) * 2.5  # about 1 in 4 in the tails
    return t, x, p


@pytest.mark.parametrize("bins", [2, 3, 8])
@pytest.mark.parametrize("kwargs", [
    {}, {"min_width": 0.05, "min_height": 0.01, "min_derivative": 0.1},
    {"min_width": 0.0, "min_height": 0.0},  # the prefix sums by cumsum rather than a matrix product
])
def test_fused_matches_the_composed_map(bins, kwargs):
    t, x, p = _case(bins, **kwargs)
    pairs = ((spline_forward(x, p, t._spec, None), False), (spline_inverse(x, p, t._spec), True))
    for fused, inverse in pairs:
        ref = t._spline(x, p, inverse)
        torch.testing.assert_close(fused[0], ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fused[1], ref[1], rtol=1e-10, atol=1e-10)
    assert ((x.abs() > 3.0).sum() > 20) and ((x.abs() < 3.0).sum() > 100)


@pytest.mark.parametrize("minimum", [1e-3, 0.0])
def test_float32_knots_never_decrease_and_inputs_on_knots_hit_them(minimum):
    """Logits far apart put many bins at the minimum size, where the prefix sums' rounding shows:
    with a minimum size the knots strictly increase (matrix-product sums); without one the
    interior knots may tie but never decrease (cumsum; the last of them may round an ulp past the
    pinned bound, a bin no input inside the bound can reach)."""
    g = torch.Generator().manual_seed(11)
    t = RationalQuadraticSpline(8, bound=5.0, min_width=minimum, min_height=minimum)
    p = torch.randn(4096, 23, generator=g) * 8
    knots = t.knots(p)
    steps = knots[:2].diff(dim=-1)
    if not minimum:
        interior = steps[:, :, 1:-1]
        assert (interior >= 0).all() and (interior == 0).any()
    else:
        assert (steps > 0).all()
        y, _ = t.forward(knots[0, :, 1:-1].T.contiguous(), p.expand(7, -1, -1))
        torch.testing.assert_close(y, knots[1, :, 1:-1].T, rtol=0, atol=0)


@pytest.mark.parametrize("bins", [2, 5, 8])
def test_fused_backward_passes_gradcheck_and_gradgradcheck(bins):
    t, x, p = _case(bins, n=40, seed=1)
    x = x.clamp(-2.9, 2.9).requires_grad_()  # away from the non-differentiable bound
    p = p.requires_grad_()

    def fn(a, b):
        return spline_forward(a, b, t._spec, t._forward_composed)

    assert torch.autograd.gradcheck(fn, (x, p))
    assert torch.autograd.gradgradcheck(fn, (x, p))


def test_fused_gradients_match_autograd_of_the_reference_and_stay_finite_on_knots():
    t, x, p = _case(8, n=64, seed=2)
    knots = t.knots(p)
    x = torch.cat([x[:32], knots[0, 32:, 3], torch.tensor([-50.0, 50.0], dtype=torch.float64)])
    p = torch.cat([p[:32], p[32:], p[:2]])
    gy, gl = torch.randn(2, x.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for fn in (lambda a, b: spline_forward(a, b, t._spec, None), t._forward_composed):
        xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
        y, ladj = fn(xr, pr)
        grads.append(torch.autograd.grad((y, ladj), (xr, pr), (gy, gl)))
    smooth = torch.ones(x.numel(), dtype=torch.bool)
    smooth[32:64] = False  # on a knot the log-derivative has a kink: one-sided slopes differ
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a[smooth], b[smooth], rtol=1e-9, atol=1e-9)


def test_fused_float32_error_is_that_of_the_composed_map():
    t, x, p = _case(8, n=2000, seed=4)
    y64, l64 = t.forward(x, p)
    errors = []
    for y32, l32 in (t.forward(x.float(), p.float()), t._spline(x.float(), p.float(), False)):
        errors.append(((y32.double() - y64).abs().max(), (l32.double() - l64).abs().max()))
    for fused, composed in zip(*errors):
        assert fused <= 4 * composed + 1e-6
    # round trip: these random splines have near-flat bins, so compare with the composed map's
    xf, pf = x.float(), p.float()
    fused_rt = (t.inverse(t.forward(xf, pf)[0], pf)[0] - xf).abs()
    composed_rt = (t._spline(t._spline(xf, pf, False)[0], pf, True)[0] - xf).abs()
    assert fused_rt.max() <= 2 * composed_rt.max() + 1e-6
    assert fused_rt.median() < 1e-6


def test_transformer_uses_the_composed_path_for_an_inverse_with_a_graph():
    t, x, p = _case(8, n=50, seed=5)
    pr = p.clone().requires_grad_()
    xi, ladj = t.inverse(x, pr)
    (g,) = torch.autograd.grad(xi.sum() + ladj.sum(), pr)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(xi.detach(), t.inverse(x, p)[0], rtol=1e-12, atol=1e-12)


def test_transformer_with_broadcast_parameters_takes_the_composed_path():
    t, x, p = _case(4, n=10, seed=6)
    y, ladj = t.forward(x.view(10, 1).expand(10, 3), p[:1].expand(10, 3, -1))
    ref = t._spline(x.view(10, 1).expand(10, 3), p[:1].expand(10, 3, -1), False)
    torch.testing.assert_close(y, ref[0])
    torch.testing.assert_close(ladj, ref[1])


def test_torch_func_transforms_take_the_composed_path():
    import torchnf as nf

    torch.manual_seed(7)
    flow = nf.Flow(nf.NSF(3, layers=2, hidden=(16,), bins=4)).double()
    x = torch.randn(5, 3, dtype=torch.float64) * 2
    per_point = torch.func.grad(lambda v: flow.log_prob(v).sum())(x)
    xr = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(flow.log_prob(xr).sum(), xr)
    torch.testing.assert_close(per_point, expected, rtol=1e-10, atol=1e-10)


def test_mixed_dtypes_promote_like_the_composed_path():
    t, x, p = _case(8, n=20, seed=8)
    for fn, inverse in ((t.forward, False), (t.inverse, True)):
        y, ladj = fn(x.float(), p)
        ref = t._spline(x.float(), p, inverse)
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, ref[0])
        torch.testing.assert_close(ladj, ref[1])


def _assert_no_grad_calls_match_the_composed_map(t, x, p):
    for fn, inverse in ((t.forward, False), (t.inverse, True)):
        with torch.no_grad():
            out = fn(x, p)
        ref = t._spline(x, p, inverse)
        torch.testing.assert_close(out[0], ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[1], ref[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [0, 1, 5, 17, 10_001])
def test_blocks_partial_and_split_over_threads_match_the_composed_map(n):
    """The kernel works in blocks of 8 or 16 inputs, a partial block padded, and splits large calls
    over threads: every size gives the composed map's values and gradients."""
    t, x, p = _case(8, n=n, seed=9)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _assert_no_grad_calls_match_the_composed_map(t, x, p)
        gy, gl = torch.randn(2, n, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
        grads = []
        for fn in (t.forward, t._forward_composed):
            xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
            grads.append(torch.autograd.grad(fn(xr, pr), (xr, pr), (gy, gl)))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("used", ["value", "log_derivative"])
def test_gradient_of_one_output_alone(used):
    """Autograd passes no gradient for an unused output; it counts as zero."""
    t, x, p = _case(8, n=100, seed=12)
    grads = []
    for fn in (t.forward, t._forward_composed):
        xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
        y, ladj = fn(xr, pr)
        out = (y if used == "value" else ladj).pow(2).sum()
        grads.append(torch.autograd.grad(out, (xr, pr)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_nan_logits_give_nan_and_infinite_ones_are_clamped():
    """A diverged conditioner must show in the loss: a NaN width or height logit moves every knot,
    so an input inside the bound gets NaN; an infinite logit is clamped like any large one (finite
    output); the other inputs stay as they were."""
    t, x, p = _case(8, n=40, seed=13)
    x = x.clamp(-2.5, 2.5)
    bad = p.clone()
    bad[3, 0], bad[7, 12], bad[11, 9] = float("nan"), float("nan"), float("inf")
    for fn in (t.forward, t.inverse):
        with torch.no_grad():
            y, ladj = fn(x, bad)
            y_ok, ladj_ok = fn(x, p)
        for i in (3, 7):
            assert torch.isnan(y[i]) and torch.isnan(ladj[i])
        assert torch.isfinite(y[11]) and torch.isfinite(ladj[11])
        rest = torch.ones(40, dtype=torch.bool)
        rest[[3, 7, 11]] = False
        torch.testing.assert_close(y[rest], y_ok[rest], rtol=0, atol=0)
        torch.testing.assert_close(ladj[rest], ladj_ok[rest], rtol=0, atol=0)


@pytest.mark.parametrize("bins", [64, 65])
def test_many_bins_match_the_composed_map(bins, path):
    """The kernel holds up to 64 bins per input in registers and stack arrays; beyond that the
    PyTorch version serves. Both give the composed map."""
    t, x, p = _case(bins, n=50, seed=14, scale=1.0)
    assert rq_native.serves(x, p, t._spec) == (bins <= 64 and path == "native")
    _assert_no_grad_calls_match_the_composed_map(t, x, p)
    xr, pr = x.clone().clamp(-2.9, 2.9).requires_grad_(), p.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: t.forward(a, b), (xr, pr))
