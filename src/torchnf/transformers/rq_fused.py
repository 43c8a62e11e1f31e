r"""The fused rational-quadratic spline behind :class:`~torchnf.transformers.RationalQuadraticSpline`.

The transformer's map is written out here as a few passes over flat ``(N,)`` and ``(N, 3K - 1)``
tensors, with a hand-derived backward (:class:`_SplineForward`). On the hot path of every spline
flow the composed version spent most of its time on per-operation overhead (the autograd graph of
some sixty small operations per layer) and on backward passes over every ``(N, 2K)``
intermediate. Here:

- the clamped width and height logits are exponentiated and summed once (``cumsum`` into a table
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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOGIT_BOUND", "needs_graph", "spline_forward", "spline_inverse", "spline_knots"]

LOGIT_BOUND = 30.0
"""Width and height logits are clamped to ``[-30, 30]`` before the softmax: ``e^30`` is far from
float32 overflow even squared and summed over the bins, and no trained network comes near it."""

_CONSTANTS: dict = {}


def _constants(spec: tuple, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
    """Constant tensors of a spline ``spec`` for a dtype and device, built once: the knot offsets
    ``(2, K + 1)`` (``j * step - B`` per axis), the per-axis scale numerators ``(2,)``, the
    backward matrix of the cumulative sums ``(2K + 2, 2K)``, the columns of a bin's edges in the
    knot table ``(4,)``, a one and the bound ``()``."""
    key = (spec, dtype, device)
    found = _CONSTANTS.get(key)
    if found is None:
        K, B, mw, mh = spec[:4]
        R = 2 * B
        j = torch.arange(K + 1, dtype=dtype)
        offsets = torch.stack([j * (R * mw) - B, j * (R * mh) - B])
        back = torch.zeros(2 * K + 2, 2 * K, dtype=dtype)  # back[j, i] = [i < j] within an axis
        tri = torch.ones(K + 1, K, dtype=dtype).tril(-1)
        back[: K + 1, :K], back[K + 1 :, K:] = tri, tri
        numerators = torch.tensor([[(1 - K * mw) * R], [(1 - K * mh) * R]], dtype=dtype)
        corners = torch.tensor([0, 1, K + 1, K + 2])  # x_k, x_k+1, y_k, y_k+1
        scalars = torch.ones((), dtype=dtype), torch.tensor(B, dtype=dtype)
        found = tuple(t.to(device) for t in (offsets, numerators, back, corners, *scalars))
        _CONSTANTS[key] = found
    return found


def _sums(params: Tensor, K: int, with_grad: bool):
    """Cumulative sums ``(N, 2, K + 1)`` of the exponentiated clamped logits ``exp(clamp(u))``,
    per axis ``0, e_0, e_0 + e_1, ..., C`` (bin ``j`` spans entries ``j`` and ``j + 1``), and with
    ``with_grad`` the derivative ``d e / d u`` ``(N, 2K)``."""
    u = params[:, : 2 * K].clamp(-LOGIT_BOUND, LOGIT_BOUND)
    de = (u.abs() < LOGIT_BOUND).to(u.dtype) if with_grad else None
    e = u.exp_()
    if de is not None:
        de.mul_(e)
    if torch.compiler.is_compiling():  # the compiler fuses the pad; it cannot trace a strided out=
        return F.pad(e.view(-1, 2, K).cumsum(-1), (1, 0)), de
    sums = e.new_zeros(e.shape[0], 2, K + 1)
    torch.cumsum(e.view(-1, 2, K), -1, out=sums[:, :, 1:])
    return sums, de


class _Bin:
    """The bin of each input, its knots and knot derivatives as ``(N,)`` columns, and what the
    backward needs. All knots are ``sum * scale + offset`` (two roundings, in one place), so the
    bin search, the bin's edges and :func:`spline_knots` agree bit for bit."""

    def __init__(self, v: Tensor, params: Tensor, spec: tuple, row: int, with_grad: bool) -> None:
        K, B, _, _, md, shift = spec
        offsets, numerators, _, corners, one, bound = _constants(spec, v.dtype, v.device)
        sums, self.de = _sums(params, K, with_grad)
        self.scale = numerators / sums[:, :, K:]  # (N, 2, 1)
        knots = (sums * self.scale).add_(offsets)  # (N, 2, K + 1)
        k = (knots[:, row, 1:K] <= v.unsqueeze(-1)).sum(-1, keepdim=True)  # interior knots <= v
        self.index = k + corners
        edges = knots.view(-1, 2 * K + 2).gather(1, self.index)
        kf = k.to(v.dtype)
        ends = torch.cat([(1.0 - kf).clamp_(0.0, 1.0), kf.sub_(K - 2).clamp_(0.0, 1.0)], 1)
        self.last = ends[:, 1]
        edges[:, 1].lerp_(bound, self.last)  # the last knot is the bound exactly
        edges[:, 3].lerp_(bound, self.last)
        self.x0, self.y0 = edges[:, 0], edges[:, 2]
        self.size = edges[:, 1::2] - edges[:, 0::2]  # widths, heights
        self.sums = sums.view(-1, 2 * K + 2).gather(1, self.index) if with_grad else None
        # knot derivatives: interior knot j has parameter column 2K - 1 + j; the end knots have 1
        self.cols = self.index[:, :2].add(2 * K - 1).clamp_(max=3 * K - 2)
        raw = params.gather(1, self.cols).add_(shift)
        self.d = F.softplus(raw).add_(md).lerp_(one, ends)
        self.dd = torch.sigmoid(raw).mul_(1.0 - ends) if with_grad else None
        self.inside = (v.abs() <= B).to(v.dtype)

    def saved(self) -> tuple[Tensor, ...]:
        return self.de, self.scale, self.index, self.sums, self.cols, self.dd, self.d, self.inside, self.last


def _bin_terms(b: _Bin) -> tuple[Tensor, ...]:
    """Width, height, knot derivatives, slope ``s = h / w`` and ``d_0 + d_1 - 2 s`` of each bin."""
    w, h, d0, d1 = b.size[:, 0], b.size[:, 1], b.d[:, 0], b.d[:, 1]
    s = h / w
    return w, h, d0, d1, s, torch.add(d0 + d1, s, alpha=-2.0)


def _slope_terms(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, dsum: Tensor) -> tuple[Tensor, ...]:
    """At relative position ``xi``: ``1 - xi``, ``xi (1 - xi)``, the denominator, the numerator
    ``n`` of the derivative, ``q = s / den`` and ``log dy/dx = log(q^2 n)``."""
    om = 1.0 - xi
    p = xi * om
    den = torch.addcmul(s, dsum, p)
    n = torch.addcmul(torch.addcmul(d1 * xi * xi, d0 * om, om), s, p, value=2.0)
    q = s / den
    return om, p, den, n, q, torch.log(q * q * n)


def _rq_forward(x: Tensor, b: _Bin):
    """Rational-quadratic value and log-derivative inside, identity tails outside ``[-B, B]``."""
    w, h, d0, d1, s, dsum = _bin_terms(b)
    xi = ((x - b.x0) / w).clamp_(0.0, 1.0)
    om, p, den, n, q, log_slope = _slope_terms(xi, s, d0, d1, dsum)
    frac = torch.addcmul(s * xi, d0, om).mul_(xi).div_(den)
    y = torch.lerp(x, torch.addcmul(b.y0, h, frac), b.inside)
    return y, log_slope.mul_(b.inside), (xi, om, p, s, w, h, dsum, den, frac, n, q)


def _rq_backward(gy, gl, inside, d, saved):
    """Gradients of the rational-quadratic map with respect to the input, the bin's knots
    ``x0, x1, y0, y1`` and its knot derivatives ``d0, d1`` (see the module docstring)."""
    xi, om, p, s, w, h, dsum, den, frac, n, q = saved
    a, b = gy * inside, gl * inside
    A = (a * h).div_(den)
    Bn = b / n
    Bd = (b / den).mul_(2.0)
    U = torch.addcmul(Bd, A, frac)
    xi2, om2 = xi * xi, om * om
    g_d1 = torch.addcmul(Bn * xi2, p, U, value=-1.0)
    g_d0 = torch.addcmul(Bn * om2, p, A - U)
    g_s = torch.addcmul(torch.addcmul(A * xi2, U, xi2 + om2, value=-1.0), Bn, p, value=2.0)
    g_s.add_(b / s, alpha=2.0)
    slope = om - xi
    half_dn = torch.addcmul(torch.addcmul(d[:, 1] * xi, s, slope), d[:, 0], om, value=-1.0)
    g_xi = torch.addcmul((A * q).mul_(n), Bn, half_dn, value=2.0)
    g_xi.addcmul_(Bd * dsum, slope, value=-1.0)
    rw = 1.0 / w
    g_x = g_xi * rw
    neg_gw = torch.addcmul(g_s * s, g_xi, xi).mul_(rw)  # -dL/dw
    g_h = torch.addcmul(a * frac, g_s, rw)
    edges = (neg_gw - g_x, neg_gw.neg_(), a - g_h, g_h)  # x0, x1, y0, y1
    return torch.lerp(gy, g_x, inside), edges, torch.stack([g_d0, g_d1], 1)


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
        x, params, de, scale, index, sums, cols, dd, d, inside, last, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: differentiate the reference
            xr, pr = (t if t.requires_grad else t.detach().requires_grad_() for t in (x, params))
            y, ladj = ctx.reference(xr, pr)
            return (*torch.autograd.grad((y, ladj), (xr, pr), (gy, gl), create_graph=True), None, None)
        K, B, mw, mh = ctx.spec[:4]
        back = _constants(ctx.spec, x.dtype, x.device)[2]
        g_x, (g_x0, g_x1, g_y0, g_y1), g_d = _rq_backward(gy.reshape(-1), gl.reshape(-1), inside, d, saved)
        pinned = 1.0 - last  # the last knot is the bound
        g_x1.mul_(pinned)
        g_y1.mul_(pinned)
        # knot = sum * scale + offset, scale = numerator / C with C the total of the axis
        cs = sums.unbind(1)
        sx, sy = scale[:, 0, 0], scale[:, 1, 0]
        # sums = [0, e_0, e_0 + e_1, ..., C] per axis: d sums_j / d e_i = [i < j]
        g_sums = torch.zeros(de.shape[0], 2, K + 1, dtype=x.dtype, device=x.device)
        for axis, (g0, g1, s_, m) in enumerate(((g_x0, g_x1, sx, mw), (g_y0, g_y1, sy, mh))):
            g_scale = torch.addcmul(g0 * cs[2 * axis], g1, cs[2 * axis + 1])
            g_sums[:, axis, K] = g_scale.mul_(s_).mul_(s_).mul_(-1.0 / ((1 - K * m) * 2 * B))
        g_bin = torch.stack([g_x0 * sx, g_x1 * sx, g_y0 * sy, g_y1 * sy], 1)
        g_sums.view(-1, 2 * K + 2).scatter_add_(1, index, g_bin)
        grad_p = torch.zeros(de.shape[0], params.shape[-1], dtype=x.dtype, device=x.device)
        grad_p[:, : 2 * K].addcmul_(g_sums.view(-1, 2 * K + 2) @ back, de)
        grad_p.scatter_add_(1, cols, g_d.mul_(dd))
        return g_x.view(x.shape), grad_p.view(params.shape), None, None


def needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd records a call on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def spline_forward(x: Tensor, params: Tensor, spec: tuple, reference: Callable) -> tuple[Tensor, Tensor]:
    """``(y, log dy/dx)`` of the spline ``spec = (K, B, m_w, m_h, m_d, shift)`` (``K >= 2``) for
    ``x`` ``(*b)`` and ``params`` ``(*b, 3K - 1)``. ``reference(x, params)`` is the composed
    implementation, used only for second derivatives."""
    if not needs_graph(x, params):
        flat = x.reshape(-1)
        y, ladj, _ = _rq_forward(flat, _Bin(flat, params.reshape(-1, params.shape[-1]), spec, 0, False))
        return y.view(x.shape), ladj.view(x.shape)
    if torch.compiler.is_compiling():  # the compiler derives and fuses the backward of the reference
        return reference(x, params)
    return _SplineForward.apply(x, params, spec, reference)


def spline_inverse(y: Tensor, params: Tensor, spec: tuple) -> tuple[Tensor, Tensor]:
    """``(x, log dx/dy)`` of :func:`spline_forward`, without a graph (sampling). The root of the
    quadratic is taken in the stable form of :func:`~torchnf.transformers.rational_quadratic`."""
    flat = y.reshape(-1)
    b = _Bin(flat, params.reshape(-1, params.shape[-1]), spec, 1, False)
    w, h, d0, d1, s, dsum = _bin_terms(b)
    t = ((flat - b.y0) / h).clamp_(0.0, 1.0)
    omt = 1.0 - t
    lin = torch.addcmul(d0, t, dsum, value=-1.0)
    e = torch.addcmul(d0 * omt, d1, t, value=-1.0)
    sq = torch.addcmul(e * e, s * s, t * omt, value=4.0).sqrt_()
    pos = (lin >= 0).to(y.dtype)  # the two forms of the root, each free of cancellation on its side
    num = torch.lerp(sq - lin, (s * t).mul_(2.0), pos)
    den = torch.lerp(torch.add(s, lin, alpha=-1.0).mul_(2.0), lin + sq, pos)
    xi = (num / den).clamp_(0.0, 1.0)
    log_slope = _slope_terms(xi, s, d0, d1, dsum)[-1]
    x = torch.lerp(flat, torch.addcmul(b.x0, xi, w), b.inside)
    return x.view(y.shape), log_slope.neg_().mul_(b.inside).view(y.shape)


def spline_knots(params: Tensor, spec: tuple) -> Tensor:
    """All knots ``(3, N, K + 1)`` (positions, values, derivatives) with the arithmetic of
    :func:`spline_forward`, so that inputs on a knot map exactly to the knot's value; the end
    knots are reported as ``-B`` and ``B`` exactly."""
    K, B, md, shift = spec[0], spec[1], spec[4], spec[5]
    offsets, numerators, *_ = _constants(spec, params.dtype, params.device)
    sums, _ = _sums(params, K, False)
    xy = (sums * (numerators / sums[:, :, K:])).add_(offsets)  # (N, 2, K + 1)
    xy[:, :, K] = B
    d = F.pad(F.softplus(params[:, 2 * K :] + shift) + md, (1, 1), value=1.0)
    return torch.cat([xy.transpose(0, 1), d.unsqueeze(0)], 0)
