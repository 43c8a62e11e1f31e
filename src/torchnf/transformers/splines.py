r"""Monotone rational-quadratic splines: the functional kernel :func:`rational_quadratic` and the
:class:`RationalQuadraticSpline` transformer (neural spline flows).

The kernel takes explicit knots (rows ``x_k``, ``y_k``, ``d_k`` stacked row-major, one
``searchsorted`` on a contiguous row and one ``gather`` of every row at the bin's two columns).
The transformers never build their knot tensors: :class:`_Grid` finds the bin from cumulative
sums of the exponentiated logits and maps only the gathered knots to positions, and the
derivative parameters of the two knots of the bin are gathered raw and constrained afterwards,
so the cost per input is a handful of passes over the ``3K - 1`` parameters plus a few dozen
scalar operations.

Outside ``[x_0, x_K]`` the map continues linearly with the end derivative through the end knots
(clamp, compute, select with ``torch.where``), so the spline is defined on the whole real line,
is continuously differentiable at the end knots and stays finite in values and gradients far out
in the tails.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.core import needs_graph
from torchnf.transformers.base import Transformer
from torchnf.transformers.rq_fused import (
    LOGIT_BOUND,
    spline_forward,
    spline_inverse,
    spline_knots,
)

__all__ = ["rational_quadratic", "RationalQuadraticSpline"]


# --------------------------------------------------------------------------------------------
# Shared machinery (also used by the linear-rational and circular splines)
# --------------------------------------------------------------------------------------------


def _gather_bins(v: Tensor, knots: Tensor, row: int) -> tuple[Tensor, ...]:
    """Bin search of ``v`` in explicit ``knots[row]`` and a single gather of every row at ``(k, k+1)``.

    Args:
        v: points, shape ``(*b)``.
        knots: ``(R, *b, K+1)``, ``knots[row]`` increasing along the last axis.
        row: which row to search (0: positions, forward; 1: values, inverse).

    Returns:
        ``2 R`` tensors of shape ``(*b)``: the left and right value of each row in the bin of
        ``v`` (``row0_left, row0_right, row1_left, ...``). Points below the first knot land in
        the first bin, points above the last knot in the last bin.
    """
    bins = knots.shape[-1] - 1
    idx = torch.searchsorted(knots[row], v.unsqueeze(-1).contiguous(), right=True)
    idx = (idx - 1).clamp_(0, bins - 1)
    index = torch.cat([idx, idx + 1], dim=-1).expand(knots.shape[0], *idx.shape[:-1], 2)
    g = knots.gather(-1, index)
    return tuple(t for r in g.unbind(0) for t in r.unbind(-1))


class _Grid:
    r"""Knot positions on both axes from width and height logits ``(*b, 2, K)``.

    Bins have sizes :math:`m + (1 - K m)\,\mathrm{softmax}(g(u))` of ``hi - lo``, so the right edge
    of bin ``j`` is :math:`lo + (hi - lo)\,[(1 - K m)\, c_j / c_{K-1} + m (j + 1)]` with
    :math:`c = \mathrm{cumsum}(e^{g(u)})` and :math:`g(u) = \mathrm{clamp}(u, -30, 30)`: the
    sizes are the softmax of the logits (for any logit a network produces in practice), and every
    term and its gradient stay finite in float32 (even :math:`c_{K-1}^2 < 10^{29}`) with no max
    pass. On CPU, ``torch.softmax`` over a last axis of a few bins, or a max shift of the strided
    logits, is several times slower than a clamp, an exponential and ``cumsum``. The
    normalisation and the minimum sizes are applied only to
    the knots that are used: :meth:`knots` evaluates the formula on one axis (for the bin search,
    without gradient) and :meth:`locate` on the gathered edges, with the same arithmetic, so both
    agree bit for bit and inputs on a knot are exact. The end knots are ``lo`` and ``hi`` exactly.
    """

    def __init__(self, logits: Tensor, lo: float, hi: float, min_sizes: tuple[float, float]) -> None:
        K = logits.shape[-1]
        self.bins, self.lo, self.hi, self.m = K, lo, hi, min_sizes
        cs = logits.clamp(-LOGIT_BOUND, LOGIT_BOUND).exp_().cumsum(-1)  # (*b, 2, K)
        self.rows = cs.unbind(-2)  # cumulative widths, cumulative heights: (*b, K) each
        self.scales = [(1 - K * m) / c[..., K - 1 :] for m, c in zip(min_sizes, self.rows)]  # (*b, 1)

    def _map(self, c: Tensor, count: Tensor, row: int) -> Tensor:
        return (c * self.scales[row] + count * self.m[row]) * (self.hi - self.lo) + self.lo

    def knots(self, row: int) -> Tensor:
        """Right edges of bins ``0 .. K-1`` on axis ``row`` (0: x, 1: y), ``(*b, K)``."""
        count = torch.arange(1, self.bins + 1, dtype=self.rows[0].dtype, device=self.rows[0].device)
        k = self._map(self.rows[row], count, row)
        return torch.cat([k[..., :-1], torch.full_like(k[..., -1:], self.hi)], -1)

    def locate(self, v: Tensor, row: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Bin ``idx`` ``(*b, 1)`` of ``v`` ``(*b)`` searched on axis ``row`` and the bin's edges
        ``x0, x1, y0, y1`` ``(*b)``, from one ``searchsorted`` and a ``gather`` per axis. (Every
        tensor here is ``(*b)`` or ``(*b, n)`` with broadcasting on the last axis only: on CPU,
        broadcasting over small middle axes is an order of magnitude slower.)"""
        K, lo, hi = self.bins, self.lo, self.hi
        with torch.no_grad():
            edges = self.knots(row)
            idx = torch.searchsorted(edges, v.detach().unsqueeze(-1).contiguous(), right=True)
            idx = idx.clamp_(max=K - 1)
        index = torch.cat([(idx - 1).clamp(min=0), idx], dim=-1)  # (*b, 2): entries of the edges
        count = (index + 1).to(self.rows[0].dtype)
        x, y = (self._map(self.rows[r].gather(-1, index), count, r) for r in (0, 1))
        first, last = idx[..., 0] == 0, idx[..., 0] == K - 1  # end knots pinned to lo and hi
        x0 = torch.where(first, lo, x[..., 0])
        y0 = torch.where(first, lo, y[..., 0])
        x1 = torch.where(last, hi, x[..., 1])
        y1 = torch.where(last, hi, y[..., 1])
        return idx, x0, x1, y0, y1


def _knot_derivatives(raw: Tensor, idx: Tensor, shift: float, minimum: float) -> tuple[Tensor, Tensor]:
    """Derivatives at the two knots of bin ``idx`` ``(*b, 1)``: ``minimum + softplus(raw + shift)``
    at the ``K - 1`` interior knots (``raw``: ``(*b, K - 1)``), 1 at the two end knots."""
    K = raw.shape[-1] + 1
    if K == 1:
        one = torch.ones(idx.shape[:-1], dtype=raw.dtype, device=raw.device)
        return one, one
    index = torch.cat([idx - 1, idx], dim=-1).clamp_(0, K - 2)
    d = F.softplus(raw.gather(-1, index) + shift) + minimum
    return torch.where(idx[..., 0] == 0, 1.0, d[..., 0]), torch.where(idx[..., 0] == K - 1, 1.0, d[..., 1])


def _split(owner: object, params: Tensor, *sizes: int) -> list[Tensor]:
    """Check the last axis of ``params`` against ``owner.param_shape`` and split it into the
    width and height logits ``(*b, 2, K)`` and the remaining groups of ``sizes``."""
    n, K = owner.param_shape[0], owner.bins
    if params.shape[-1] != n:
        raise ValueError(
            f"{type(owner).__name__}: expected parameters of shape (..., {n}), got {tuple(params.shape)}"
        )
    logits, *rest = params.split([2 * K, *sizes], dim=-1)
    return [logits.unflatten(-1, (2, K)), *rest]


def _with_tails(
    v: Tensor,
    r: Tensor,
    inner: Tensor,
    inner_deriv: Tensor,
    anchors: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    inverse: bool,
) -> tuple[Tensor, Tensor]:
    """Select the spline value inside ``[lo, hi]`` and the linear tails outside.

    Args:
        v: the input points.
        r: their unclamped relative position in the bin (``< 0``: below, ``> 1``: above).
        inner: the spline evaluated at the clamped position.
        inner_deriv: the forward derivative ``dy/dx`` there.
        anchors: ``(in_lo, in_hi, out_lo, out_hi, d_lo, d_hi)``: end knots on the input axis,
            on the output axis, and the end derivatives.
        inverse: whether ``v`` is on the output axis (tails divide by the derivative).

    Returns:
        ``(out, log |d out / d v|)``.
    """
    in_lo, in_hi, out_lo, out_hi, d_lo, d_hi = anchors
    inside = (r >= 0) & (r <= 1)
    below = r < 0
    d = torch.where(below, d_lo, d_hi)
    step = v - torch.where(below, in_lo, in_hi)
    tail = torch.where(below, out_lo, out_hi) + (step / d if inverse else step * d)
    out = torch.where(inside, inner, tail)
    ladj = torch.log(torch.where(inside, inner_deriv, d))
    return out, -ladj if inverse else ladj


def _check_spline_args(
    owner: str, bins: int, bound: float, min_width: float, min_height: float, min_derivative: float
) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"{owner}: bins must be an integer >= 1, got {bins!r}")
    if not bound > 0:
        raise ValueError(f"{owner}: bound must be positive, got {bound!r}")
    for name, m in (("min_width", min_width), ("min_height", min_height)):
        if not 0 <= m * bins < 1:
            raise ValueError(f"{owner}: {name} * bins must lie in [0, 1), got {name}={m!r} with bins={bins}")
    if not 0 <= min_derivative < 1:
        raise ValueError(f"{owner}: min_derivative must lie in [0, 1), got {min_derivative!r}")


def _softplus_shift(min_derivative: float) -> float:
    """``c`` with ``min_derivative + softplus(c) == 1``: zero raw derivatives give slope 1."""
    return math.log(math.expm1(1.0 - min_derivative))


# --------------------------------------------------------------------------------------------
# Rational-quadratic kernel
# --------------------------------------------------------------------------------------------


def _rq_derivative(s: Tensor, d0: Tensor, d1: Tensor, xi: Tensor, om: Tensor, den: Tensor) -> Tensor:
    """``dy/dx = s^2 (d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2) / den^2``."""
    return (s * s) * (d1 * xi * xi + 2 * s * xi * om + d0 * om * om) / (den * den)


def _rq(
    v: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, d0: Tensor, d1: Tensor, inverse: bool
) -> tuple[Tensor, Tensor]:
    """Rational-quadratic spline of the bin ``[x0, x1] x [y0, y1]`` with end slopes ``d0, d1``
    (all ``(*b)``), linear tails outside; see :func:`rational_quadratic`."""
    w = x1 - x0
    h = y1 - y0
    s = h / w
    dsum = d0 + d1 - 2 * s
    if inverse:
        r = (v - y0) / h
        t = r.clamp(0, 1)
        # t (s + dsum xi (1 - xi)) = s xi^2 + d0 xi (1 - xi)  <=>  a xi^2 + b xi + c = 0 with
        # a = s - b, b = d0 - t dsum, c = -s t. The root in [0, 1] is 2c / (-b - sqrt(D)); where
        # b < 0 the equivalent (sqrt(D) - b) / (2a) avoids the cancellation (a = s - b > 0). The
        # discriminant b^2 - 4ac = (d0 (1 - t) - d1 t)^2 + 4 s^2 t (1 - t) is a sum of two
        # non-negative terms, so it needs no clamp, never cancels and is > 0 for d > 0.
        b = d0 - t * dsum
        e = d0 * (1 - t) - d1 * t
        sq = torch.sqrt(e * e + 4 * (s * s) * t * (1 - t))
        pos = b >= 0
        xi = (torch.where(pos, 2 * s * t, sq - b) / torch.where(pos, b + sq, 2 * (s - b))).clamp(0, 1)
        om = 1 - xi
        inner = x0 + xi * w
        anchors = (y0, y1, x0, x1, d0, d1)
    else:
        r = (v - x0) / w
        xi = r.clamp(0, 1)
        om = 1 - xi
        inner = y0 + h * (s * xi * xi + d0 * xi * om) / (s + dsum * xi * om)
        anchors = (x0, x1, y0, y1, d0, d1)
    den = s + dsum * xi * om
    return _with_tails(v, r, inner, _rq_derivative(s, d0, d1, xi, om, den), anchors, inverse)


def _stack_knots(owner: str, x: Tensor, *rows: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast ``x`` ``(...)`` and knot rows ``(..., K+1)`` and stack the rows row-major."""
    n = rows[0].shape[-1] if rows[0].dim() else 0
    for name, t in zip(("xk", "yk", "dk", "lk"), rows):
        if t.dim() == 0 or t.shape[-1] != n or n < 2:
            raise ValueError(
                f"{owner}: expected knot tensors of shape (..., K+1) with the same K+1 >= 2, got {name} "
                f"of shape {tuple(t.shape)} (xk: {tuple(rows[0].shape)})"
            )
    try:
        batch = torch.broadcast_shapes(x.shape, *(t.shape[:-1] for t in rows))
    except RuntimeError:
        raise ValueError(
            f"{owner}: input of shape {tuple(x.shape)} does not broadcast with knots of shape "
            f"{tuple(rows[0].shape)}"
        ) from None
    knots = torch.stack([t.expand(*batch, n) for t in rows], 0)
    return x.expand(batch), knots


def rational_quadratic(
    x: Tensor, xk: Tensor, yk: Tensor, dk: Tensor, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Monotone rational-quadratic spline through explicit knots, with linear tails.

    In bin :math:`k` (:math:`x_k \le x < x_{k+1}`), with :math:`w = x_{k+1} - x_k`,
    :math:`h = y_{k+1} - y_k`, :math:`s = h / w` and :math:`\xi = (x - x_k) / w`,

    .. math::
        y = y_k + \frac{h\,[s \xi^2 + d_k \xi (1 - \xi)]}{s + (d_k + d_{k+1} - 2 s)\,\xi (1 - \xi)},
        \qquad
        \frac{dy}{dx} = \frac{s^2\,[d_{k+1} \xi^2 + 2 s \xi (1 - \xi) + d_k (1 - \xi)^2]}
                             {[s + (d_k + d_{k+1} - 2 s)\,\xi (1 - \xi)]^2}.

    Outside :math:`[x_0, x_K]` the map is the line of slope :math:`d_0` (below) or :math:`d_K`
    (above) through the end knot, so with end knots :math:`\pm B` on both axes and end
    derivatives 1 the tails are the identity. The inverse solves the quadratic
    :math:`a \xi^2 + b \xi + c = 0` in its stable form :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})`
    (the conjugate form where :math:`b < 0`), with the discriminant written as the sum of squares
    :math:`(d_k (1 - t) - d_{k+1} t)^2 + 4 s^2 t (1 - t)`, :math:`t = (y - y_k) / h`, so it is never
    negative and does not cancel near the knots. Values on a knot map
    exactly to the knot's value; values and gradients are finite for tail and knot inputs.

    Args:
        x: points, shape ``(...)`` (the outputs ``y`` when ``inverse``).
        xk: knot positions, ``(..., K+1)``, strictly increasing; broadcasts against ``x``.
        yk: knot values, ``(..., K+1)``, strictly increasing.
        dk: derivatives at the knots, ``(..., K+1)``, positive.
        inverse: evaluate the inverse map.

    Returns:
        ``(y, log |dy/dx|)`` (or ``(x, log |dx/dy|)`` when ``inverse``), both of the broadcast
        shape of ``x`` and the knots' batch shape.

    Example:
        >>> xk = torch.tensor([-2.0, 0.0, 2.0])
        >>> yk = torch.tensor([-2.0, 1.0, 2.0])
        >>> y, ladj = rational_quadratic(torch.tensor([-2.0, 0.0, 3.0]), xk, yk, torch.ones(3))
        >>> y  # knots map to knots; identity tail above 2
        tensor([-2.,  1.,  3.])

    References:
        Gregory & Delbourgo, "Piecewise rational quadratic interpolation to monotonic data",
        IMA Journal of Numerical Analysis, 1982.
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019.
    """
    x, knots = _stack_knots("rational_quadratic", x, xk, yk, dk)
    return _rq(x, *_gather_bins(x, knots, int(inverse)), inverse)


# --------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------


class RationalQuadraticSpline(Transformer):
    r"""Monotone rational-quadratic spline on ``[-B, B]`` with identity tails (neural spline flows).

    The ``3K - 1`` raw parameters per scalar are ``K`` width logits, ``K`` height logits and
    ``K - 1`` interior derivative parameters. Bin widths are
    :math:`m_w + (1 - K m_w)\,\mathrm{softmax}(g(u))` of the interval ``2B`` (heights likewise),
    with the logits clamped to :math:`[-30, 30]` (see :class:`_Grid`); knots are their
    cumulative sums from ``-B``; interior derivatives are
    :math:`m_d + \mathrm{softplus}(v + c)` with :math:`c` chosen so that :math:`v = 0` gives slope
    1; the end derivatives are 1, so the spline joins the identity tails smoothly. All-zero
    parameters are the identity map (no offset needed in the conditioner). See
    :func:`rational_quadratic` for the formulas. Both directions are one analytic pass.

    Args:
        bins: number of bins ``K``.
        bound: half-width ``B`` of the spline's square ``[-B, B]^2``.
        min_width: minimum bin width, as a fraction of ``2B``.
        min_height: minimum bin height, as a fraction of ``2B``.
        min_derivative: minimum derivative at the interior knots.

    Example:
        >>> t = RationalQuadraticSpline(bins=8, bound=5.0)
        >>> params = torch.randn(10, *t.param_shape)
        >>> y, ladj = t.forward(torch.randn(10), params)
        >>> x, _ = t.inverse(y, params)

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019.
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        _check_spline_args(type(self).__name__, bins, bound, min_width, min_height, min_derivative)
        self.bins, self.bound = bins, float(bound)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self._sizes = (min_width, min_height)
        self.param_shape = (3 * bins - 1,)
        self._shift = _softplus_shift(min_derivative)
        self._spec = (bins, self.bound, min_width, min_height, min_derivative, self._shift)

    def knots(self, params: Tensor) -> Tensor:
        """All knots ``(3, *b, K+1)`` (positions, values, derivatives), e.g. for plotting; the
        transformer itself only computes the knots of the bin of each input."""
        if self.bins >= 2:
            _split(self, params, self.bins - 1)  # shape check
            flat = params.reshape(-1, params.shape[-1])
            return spline_knots(flat, self._spec).view(3, *params.shape[:-1], self.bins + 1)
        logits, raw = _split(self, params, self.bins - 1)
        grid = _Grid(logits, -self.bound, self.bound, self._sizes)
        x, y = (F.pad(grid.knots(r), (1, 0), value=-self.bound) for r in (0, 1))
        d = F.pad(F.softplus(raw + self._shift) + self.min_derivative, (1, 1), value=1.0)
        return torch.stack([x, y, d], 0)

    def _spline(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The composed implementation (any ``K``, broadcasting, any order of derivatives)."""
        logits, raw = _split(self, params, self.bins - 1)
        idx, x0, x1, y0, y1 = _Grid(logits, -self.bound, self.bound, self._sizes).locate(v, int(inverse))
        d0, d1 = _knot_derivatives(raw, idx, self._shift, self.min_derivative)
        return _rq(v, x0, x1, y0, y1, d0, d1, inverse)

    def _fused(self, v: Tensor, params: Tensor) -> bool:
        """Whether the fused kernel serves this call: not for one bin, broadcasting parameters, mixed
        dtypes (the composed path promotes) or under ``torch.func`` transforms (``grad``, ``vmap``,
        ``jacrev``), which trace the composed path."""
        if params.shape[-1] != self.param_shape[0]:
            _split(self, params, self.bins - 1)  # raises the shape error
        if self.bins < 2 or v.shape != params.shape[:-1] or v.dtype != params.dtype:
            return False
        return not torch._C._are_functorch_transforms_active()

    def _forward_composed(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, inverse=False)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        if self._fused(x, params):
            return spline_forward(x, params, self._spec, self._forward_composed)
        return self._forward_composed(x, params)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        if self._fused(y, params) and not needs_graph(y, params):  # with a graph: composed + autograd
            return spline_inverse(y, params, self._spec)
        return self._spline(y, params, inverse=True)
