r"""The fused rational-quadratic spline behind :class:`~torchnf.transformers.RationalQuadraticSpline`.

The transformer's map is written out here as a few passes over flat ``(N,)`` and ``(N, 3K - 1)``
tensors, with a hand-derived backward (:class:`_SplineForward`). On the hot path of every spline
flow the composed version spent most of its time on per-operation overhead (the autograd graph of
some sixty small operations per layer) and on backward passes over every ``(N, 2K)``
intermediate. Here:

- the clamped width and height logits are exponentiated and summed once (prefix sums into a table
  ``0, e_0, e_0 + e_1, ..., C`` per axis), and every knot is ``sum * scale + offset`` with two
  roundings in one place, so the bin search, the bin's edges and :func:`spline_knots` agree bit
  for bit and inputs on a knot map exactly to the knot's value;
- the bin is the number of interior knots ``<= v`` on the input axis, and its four edges are one
  ``gather``; the last knot is pinned to the bound;
- masks are floating-point weights: ``torch.lerp`` with a 0/1 weight selects exactly, and is
  several times cheaper on CPU than ``where``/``masked_fill`` on boolean masks; the per-input
  arithmetic works on ``(N,)`` columns (broadcasting ``(N, 2)`` against ``(N, 1)`` is slower);
- the backward (:func:`_rq_backward`) differentiates
  ``y = y_0 + h F(xi)``, ``F = (s xi^2 + d_0 xi (1 - xi)) / den`` and
  ``log dy/dx = log(s^2 n / den^2)`` with respect to ``xi, s, d_0, d_1`` (using
  ``dF/dxi = s n / den^2``) and chains through ``xi = (x - x_0) / w``, ``s = h / w``; the knots'
  gradients reach the logits through a scatter of the four edge gradients, one product with a
  constant triangular matrix (the reverse cumulative sum) and one with the saved ``d e / d u``.

The map is the one of the composed :class:`~torchnf.transformers.splines._Grid` and
:func:`~torchnf.transformers.splines._rq` up to rounding; the tests compare the two and run
``gradcheck``. Second derivatives (``create_graph=True``) and ``torch.compile`` use the composed
path.

On the CPU, where the compiled kernel of :mod:`~torchnf.transformers.rq_native` is built, it
serves instead of the PyTorch operations here (the same map, knots and gradients in one pass over
the inputs, several times faster); these remain the path on other devices and where no compiler
is found.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.core import needs_graph
from torchnf.transformers import rq_native

__all__ = ["LOGIT_BOUND", "spline_forward", "spline_inverse", "spline_knots"]

LOGIT_BOUND = 30.0
"""Width and height logits are clamped to ``[-30, 30]`` before the softmax: ``e^30`` is far from
float32 overflow even squared and summed over the bins, and no trained network comes near it."""

_CONSTANTS: dict = {}


def _constants(spec: tuple, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
    """Constant tensors of a spline ``spec`` for a dtype and device, built once: the knot offsets
    ``(2, K)`` (``(j + 1) * step - B`` per axis, for the right edges of the bins), the per-axis
    scale numerators ``(2, 1)``, the backward matrix of the cumulative sums ``(2K, 2K)``, the
    rows of a bin's edges in the table of right edges ``(4, 1)``, the coefficients of the end-knot
    weights ``(2, 1)`` twice, the bounds ``(2, 1)``, a one and the scale's derivative factors
    ``(2, 1)``."""
    key = (spec, dtype, device)
    found = _CONSTANTS.get(key)
    if found is None:
        K, B, mw, mh = spec[:4]
        R = 2 * B
        j = torch.arange(1, K + 1, dtype=dtype)
        offsets = torch.stack([j * (R * mw) - B, j * (R * mh) - B])
        back = torch.zeros(2 * K, 2 * K, dtype=dtype)  # back[j, i] = [i <= j] within an axis
        tri = torch.ones(K, K, dtype=dtype).tril()
        back[:K, :K], back[K:, K:] = tri, tri
        numerators = torch.tensor([[(1 - K * mw) * R], [(1 - K * mh) * R]], dtype=dtype)
        corners = torch.tensor([[-1], [0], [K - 1], [K]])  # x_k, x_k+1, y_k, y_k+1 (x_k: k >= 1)
        # end-knot weights: first = clamp(1 - k, 0, 1), last = clamp(k - (K - 2), 0, 1)
        end_offset = torch.tensor([[1.0], [2.0 - K]], dtype=dtype)
        end_sign = torch.tensor([[-1.0], [1.0]], dtype=dtype)
        bounds = torch.tensor([[-B], [B]], dtype=dtype)
        # d knot / d C = -sum * scale^2 / numerator with C the total of the axis
        dscale = -1.0 / numerators
        found = tuple(t.to(device) for t in (
            offsets, numerators, back, corners, end_offset, end_sign, bounds,
            torch.ones((), dtype=dtype), dscale))
        _CONSTANTS[key] = found
    return found


def _sums(params: Tensor, spec: tuple, with_grad: bool):
    """Cumulative sums ``(N, 2, K)`` of the exponentiated clamped logits ``exp(clamp(u))``, per
    axis ``e_0, e_0 + e_1, ..., C`` (entry ``j`` gives the right edge of bin ``j``), and with
    ``with_grad`` the derivative ``d e / d u`` ``(N, 2K)`` (``e`` where the clamp is inactive).
    The sums are one product with the block-triangular matrix of the backward (about twice as
    fast as ``cumsum`` along a short last axis at large ``N``). A matrix product may sum in any
    order, which moves a knot by at most ``K`` roundings of ``2B``; the minimum bin sizes keep the
    knots increasing only if they exceed that, so with smaller ones the sums are ``cumsum``'s
    (sequential, hence never decreasing)."""
    K = spec[0]
    raw = params.narrow(1, 0, 2 * K)
    e = raw.clamp(-LOGIT_BOUND, LOGIT_BOUND).exp_()
    de = torch.ops.aten.hardtanh_backward(e, raw, -LOGIT_BOUND, LOGIT_BOUND) if with_grad else None
    if min(spec[2], spec[3]) > 2 * K * torch.finfo(params.dtype).eps:
        back = _constants(spec, params.dtype, params.device)[2]
        return (e @ back.t()).view(-1, 2, K), de
    return e.view(-1, 2, K).cumsum(2), de


def _count_dtype(K: int) -> torch.dtype:
    """The narrowest integer type that counts the ``K - 1`` interior knots (the bin search's sum
    over booleans is fastest in bytes)."""
    return torch.uint8 if K <= 256 else torch.int64


class _Bin:
    """The bin of each input, its knots and knot derivatives, and what the backward needs. All
    knots are ``sum * scale + offset`` (two roundings, in one place), so the bin search, the bin's
    edges and :func:`spline_knots` agree bit for bit.

    The knot table holds the right edges of the bins; the left edge of bin 0 and the right edge
    of bin ``K - 1`` are pinned to ``-B`` and ``B`` by one ``lerp`` with the end weights
    ``first, last`` (the table entry gathered for ``x_0`` of bin 0 is a placeholder). Per-input
    quantities are rows of ``(r, N)`` tensors (``edges = x_0, x_1, y_0, y_1``, ``d = d_0, d_1``):
    elementwise kernels run several times faster on contiguous rows than on the strided columns
    of ``(N, r)`` tensors."""

    def __init__(self, v: Tensor, params: Tensor, spec: tuple, row: int, with_grad: bool) -> None:
        K, B, _, _, md, shift = spec
        consts = _constants(spec, v.dtype, v.device)
        offsets, numerators, _, corners, end_offset, end_sign, bounds, one, _ = consts
        sums, self.de = _sums(params, spec, with_grad)
        totals = sums.narrow(2, K - 1, 1)  # (N, 2, 1)
        scale = numerators / totals
        knots = (sums * scale).add_(offsets)  # (N, 2, K)
        k = torch.le(knots.select(1, row).narrow(1, 0, K - 1), v.unsqueeze(1)).sum(1, dtype=_count_dtype(K))
        self.index = torch.add(corners, k).clamp_(min=0)  # (4, N)
        table = knots.view(-1, 2 * K).t()
        edges = table.gather(0, self.index)
        self.ends = torch.addcmul(end_offset, end_sign, k).clamp_(0.0, 1.0)  # first, last: (2, N)
        pairs = edges.view(2, 2, -1)  # (x_0, x_1), (y_0, y_1)
        pairs.lerp_(bounds.unsqueeze(0), self.ends.unsqueeze(0))  # the end knots are -B, B exactly
        self.edges = edges
        self.size = torch.sub(pairs.select(1, 1), pairs.select(1, 0))  # widths, heights: (2, N)
        if with_grad:
            self.sums = sums.view(-1, 2 * K).t().gather(0, self.index)
            self.scale = torch.div(numerators, totals.view(-1, 2).t())
        else:
            self.sums = self.scale = None
        # knot derivatives: interior knot j has parameter column 2K - 1 + j; the end knots have 1
        self.cols = self.index.narrow(0, 0, 2).add(2 * K).clamp_(max=3 * K - 2)
        raw = params.t().gather(0, self.cols).add_(shift)
        self.d = F.softplus(raw).add_(md).lerp_(one, self.ends)
        self.dd = torch.sigmoid(raw).mul_(torch.rsub(self.ends, 1.0)) if with_grad else None
        self.inside = v.abs().le_(B)

    def saved(self) -> tuple[Tensor, ...]:
        return self.de, self.scale, self.index, self.sums, self.cols, self.dd, self.d, self.inside, self.ends


def _bin_terms(b: _Bin) -> tuple[Tensor, ...]:
    """Width, height, knot derivatives, slope ``s = h / w`` and ``d_0 + d_1 - 2 s`` of each bin."""
    w, h = b.size.unbind(0)
    d0, d1 = b.d.unbind(0)
    s = h / w
    return w, h, d0, d1, s, torch.add(b.d.sum(0), s, alpha=-2.0)


def _slope_terms(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, dsum: Tensor) -> tuple[Tensor, ...]:
    """At relative position ``xi``: ``1 - xi``, ``xi (1 - xi)``, the denominator, the numerator
    ``n`` of the derivative, ``q = s / den``, ``a = s xi + d_0 (1 - xi)`` and
    ``log dy/dx = log(q^2 n)``. (``n = xi (d_1 xi + s (1 - xi)) + (1 - xi) a``.)"""
    om = torch.rsub(xi, 1.0)
    p = xi * om
    den = torch.addcmul(s, dsum, p)
    a = torch.addcmul(s * xi, d0, om)
    n = torch.addcmul(torch.addcmul(d1 * xi, s, om).mul_(xi), om, a)
    q = s / den
    return om, p, den, n, q, a, torch.log(q * q * n)


def _rq_forward(x: Tensor, b: _Bin):
    """Rational-quadratic value and log-derivative inside, identity tails outside ``[-B, B]``."""
    w, h, d0, d1, s, dsum = _bin_terms(b)
    x0, _, y0, _ = b.edges.unbind(0)
    xi = ((x - x0) / w).clamp_(0.0, 1.0)
    om, p, den, n, q, a, log_slope = _slope_terms(xi, s, d0, d1, dsum)
    frac = (a * xi).div_(den)
    y = torch.lerp(x, torch.addcmul(y0, h, frac), b.inside)
    return y, log_slope.mul_(b.inside), (xi, om, p, s, w, h, dsum, den, frac, n, q)


def _rq_backward(gy, gl, inside, d, saved):
    """Gradients of the rational-quadratic map with respect to the input, the bin's knots
    ``x0, x1, y0, y1`` ``(4, N)`` and its knot derivatives ``d0, d1`` ``(2, N)`` (see the module
    docstring)."""
    xi, om, p, s, w, h, dsum, den, frac, n, q = saved
    a, b = gy * inside, gl * inside
    A = (a * h).div_(den)
    Bn = b / n
    Bd = (b / den).mul_(2.0)
    U = torch.addcmul(Bd, A, frac)
    xi2, om2 = xi * xi, om * om
    g_d = torch.empty_like(d)
    g_d0, g_d1 = g_d.unbind(0)
    torch.addcmul(Bn * om2, p, A - U, out=g_d0)
    torch.addcmul(Bn * xi2, p, U, value=-1.0, out=g_d1)
    g_s = torch.addcmul(torch.addcmul(A * xi2, U, xi2 + om2, value=-1.0), Bn, p, value=2.0)
    g_s.add_(b / s, alpha=2.0)
    slope = om - xi
    d0, d1 = d.unbind(0)
    half_dn = torch.addcmul(torch.addcmul(d1 * xi, s, slope), d0, om, value=-1.0)
    g_xi = torch.addcmul((A * q).mul_(n), Bn, half_dn, value=2.0)
    g_xi.addcmul_(Bd * dsum, slope, value=-1.0)
    rw = torch.reciprocal(w)
    g_x = g_xi * rw
    g_edges = torch.empty(4, xi.shape[0], dtype=xi.dtype, device=xi.device)
    g_x0, g_x1, g_y0, g_y1 = g_edges.unbind(0)
    torch.addcmul(g_s * s, g_xi, xi, out=g_x1).mul_(rw).neg_()  # dL/dw
    torch.addcmul(a * frac, g_s, rw, out=g_y1)  # dL/dh
    torch.sub(g_x1, g_x, alpha=-1.0, out=g_x0).neg_()
    torch.sub(a, g_y1, out=g_y0)
    return torch.lerp(gy, g_x, inside), g_edges, g_d


class _SplineForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, spec: tuple, reference: Callable) -> tuple[Tensor, Tensor]:
        flat, pflat = x.reshape(-1), params.reshape(-1, params.shape[-1])
        b = _Bin(flat, pflat, spec, 0, True)
        y, ladj, saved = _rq_forward(flat, b)
        ctx.save_for_backward(x, params, *b.saved(), *saved)
        ctx.spec, ctx.reference = spec, reference
        return y.view(x.shape), ladj.view(x.shape)

    @staticmethod
    def backward(ctx, gy: Tensor, gl: Tensor):
        x, params, de, scale, index, sums, cols, dd, d, inside, ends, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _reference_backward(ctx, x, params, gy, gl)
        K = ctx.spec[0]
        back, dscale = (_constants(ctx.spec, x.dtype, x.device)[i] for i in (2, 8))
        g_x, g_edges, g_d = _rq_backward(gy.reshape(-1), gl.reshape(-1), inside, d, saved)
        # the end knots are the bounds: no gradient reaches the table through them
        g_pairs = g_edges.view(2, 2, -1).mul_(torch.rsub(ends, 1.0).unsqueeze(0))
        # knot = sum * scale + offset, scale = numerator / C with C the total of the axis
        g_total = (g_pairs * sums.view(2, 2, -1)).sum(1).mul_(scale).mul_(scale).mul_(dscale)  # (2, N)
        g_pairs.mul_(scale.unsqueeze(1))
        g_sums = torch.zeros(de.shape[0], 2, K, dtype=x.dtype, device=x.device)
        g_sums.select(2, K - 1).copy_(g_total.t())
        g_sums.view(-1, 2 * K).t().scatter_add_(0, index, g_edges)
        # sums_j = e_0 + ... + e_j per axis: d sums_j / d e_i = [i <= j]
        grad_p = torch.zeros(de.shape[0], params.shape[-1], dtype=x.dtype, device=x.device)
        grad_p.narrow(1, 0, 2 * K).addcmul_(g_sums.view(-1, 2 * K) @ back, de)
        grad_p.t().scatter_add_(0, cols, g_d.mul_(dd))
        return g_x.view(x.shape), grad_p.view(params.shape), None, None


def _reference_backward(ctx, x: Tensor, params: Tensor, gy: Tensor | None, gl: Tensor | None):
    """The backward when a graph of the gradient is wanted (second derivatives): autograd through
    the composed reference."""
    xr, pr = (t if t.requires_grad else t.detach().requires_grad_() for t in (x, params))
    y, ladj = ctx.reference(xr, pr)
    outs, grads = zip(*((o, g) for o, g in ((y, gy), (ladj, gl)) if g is not None), strict=True)
    return (*torch.autograd.grad(outs, (xr, pr), grads, create_graph=True), None, None)


class _NativeSpline(torch.autograd.Function):
    """The spline through the compiled kernel: the forward saves only its inputs, the backward
    recomputes the bins as it differentiates."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, spec: tuple, reference: Callable) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, params)
        ctx.spec, ctx.reference = spec, reference
        return rq_native.forward(x, params, spec, False)

    @staticmethod
    def backward(ctx, gy: Tensor | None, gl: Tensor | None):
        x, params = ctx.saved_tensors
        if gy is None and gl is None:
            return None, None, None, None
        if torch.is_grad_enabled():
            return _reference_backward(ctx, x, params, gy, gl)
        return (*rq_native.backward(x, params, gy, gl, ctx.spec), None, None)


def spline_forward(x: Tensor, params: Tensor, spec: tuple, reference: Callable) -> tuple[Tensor, Tensor]:
    """``(y, log dy/dx)`` of the spline ``spec = (K, B, m_w, m_h, m_d, shift)`` (``K >= 2``) for
    ``x`` ``(*b)`` and ``params`` ``(*b, 3K - 1)``. ``reference(x, params)`` is the composed
    implementation, used only for second derivatives."""
    native = rq_native.serves(x, params, spec)
    if not needs_graph(x, params):
        if native:
            return rq_native.forward(x, params, spec, False)
        flat = x.reshape(-1)
        y, ladj, _ = _rq_forward(flat, _Bin(flat, params.reshape(-1, params.shape[-1]), spec, 0, False))
        return y.view(x.shape), ladj.view(x.shape)
    if torch.compiler.is_compiling():  # the compiler derives and fuses the backward of the reference
        return reference(x, params)
    return (_NativeSpline if native else _SplineForward).apply(x, params, spec, reference)


def spline_inverse(y: Tensor, params: Tensor, spec: tuple) -> tuple[Tensor, Tensor]:
    """``(x, log dx/dy)`` of :func:`spline_forward`, without a graph (sampling). The root of the
    quadratic is taken in the stable form of :func:`~torchnf.transformers.rational_quadratic`."""
    if rq_native.serves(y, params, spec):
        return rq_native.forward(y, params, spec, True)
    flat = y.reshape(-1)
    b = _Bin(flat, params.reshape(-1, params.shape[-1]), spec, 1, False)
    w, h, d0, d1, s, dsum = _bin_terms(b)
    x0, _, y0, _ = b.edges.unbind(0)
    t = ((flat - y0) / h).clamp_(0.0, 1.0)
    omt = torch.rsub(t, 1.0)
    lin = torch.addcmul(d0, t, dsum, value=-1.0)
    e = torch.addcmul(d0 * omt, d1, t, value=-1.0)
    sq = torch.addcmul(e * e, s * s, t * omt, value=4.0).sqrt_()
    pos = torch.ge(lin, 0).to(y.dtype)  # the two forms of the root, each free of cancellation on its side
    num = torch.lerp(sq - lin, (s * t).mul_(2.0), pos)
    den = torch.lerp(torch.add(s, lin, alpha=-1.0).mul_(2.0), lin + sq, pos)
    xi = (num / den).clamp_(0.0, 1.0)
    log_slope = _slope_terms(xi, s, d0, d1, dsum)[-1]
    x = torch.lerp(flat, torch.addcmul(x0, xi, w), b.inside)
    return x.view(y.shape), log_slope.neg_().mul_(b.inside).view(y.shape)


def spline_knots(params: Tensor, spec: tuple) -> Tensor:
    """All knots ``(3, N, K + 1)`` (positions, values, derivatives) with the arithmetic of
    :func:`spline_forward`, so that inputs on a knot map exactly to the knot's value; the end
    knots are reported as ``-B`` and ``B`` exactly."""
    if rq_native.serves(params, params, spec):
        return rq_native.knots(params, spec)
    K, B, md, shift = spec[0], spec[1], spec[4], spec[5]
    offsets, numerators, *_ = _constants(spec, params.dtype, params.device)
    sums, _ = _sums(params, spec, False)
    right = (sums * (numerators / sums.narrow(2, K - 1, 1))).add_(offsets)  # (N, 2, K)
    xy = F.pad(right, (1, 0), value=-B)
    xy[:, :, K] = B
    d = F.pad(F.softplus(params[:, 2 * K :] + shift) + md, (1, 1), value=1.0)
    return torch.cat([xy.transpose(0, 1), d.unsqueeze(0)], 0)
