r"""Monotone linear-rational splines (Dolatabadi et al. 2020): :class:`LinearRationalSpline`.

Each bin is split at a learned fraction :math:`\lambda` of its width into two pieces, each the
ratio of two linear functions; the inverse of each piece is again linear-rational, so both
directions are one analytic pass with the same cost. Bin search, tails and knot construction are
shared with :mod:`torchnf.transformers.splines`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.transformers.base import Transformer
from torchnf.transformers.splines import (
    _check_spline_args,
    _Grid,
    _knot_derivatives,
    _softplus_shift,
    _split,
    _with_tails,
)

__all__ = ["LinearRationalSpline"]


def _lrs(
    v: Tensor,
    x0: Tensor,
    x1: Tensor,
    y0: Tensor,
    y1: Tensor,
    d0: Tensor,
    d1: Tensor,
    lam: Tensor,
    inverse: bool,
) -> tuple[Tensor, Tensor]:
    r"""Linear-rational spline of the bin ``[x0, x1] x [y0, y1]`` with end slopes ``d0, d1`` and
    split fraction ``lam`` (all ``(*b)``), linear tails outside.

    In normalised bin coordinates (:math:`\phi = (x - x_k)/w`, :math:`\bar y = (y - y_k)/h`,
    :math:`s = h / w`) the weights are :math:`w_a = 1`, :math:`w_b = \sqrt{d_k / d_{k+1}}`,
    :math:`w_c = (\lambda d_k + (1 - \lambda) w_b d_{k+1}) / s`, and the split point has
    :math:`\bar y_c = \lambda w_b / (1 - \lambda + \lambda w_b)`. Each half goes from
    :math:`(\phi_l, \bar y_l, w_l)` to :math:`(\phi_r, \bar y_r, w_r)` (``(0, 0, w_a)`` to
    ``(lambda, y_c, w_c)``, then on to ``(1, 1, w_b)``); with :math:`u = (\phi - \phi_l) /
    (\phi_r - \phi_l)`,

    .. math::
        \bar y = \frac{w_l \bar y_l (1 - u) + w_r \bar y_r u}{w_l (1 - u) + w_r u}, \qquad
        \frac{dy}{dx} = \frac{s\, w_l w_r (\bar y_r - \bar y_l)}{(\phi_r - \phi_l)\,[w_l (1 - u) + w_r u]^2},

    and the inverse is
    :math:`u = w_l (\bar y - \bar y_l) / [w_l (\bar y - \bar y_l) + w_r (\bar y_r - \bar y)]`.
    The slopes at the knots are :math:`d_k` and :math:`d_{k+1}`.
    """
    w = x1 - x0
    h = y1 - y0
    s = h / w
    wb = torch.sqrt(d0 / d1)
    wc = (lam * d0 + (1 - lam) * wb * d1) / s
    yc = lam * wb / (1 - lam + lam * wb)
    r = (v - y0) / h if inverse else (v - x0) / w
    t = r.clamp(0, 1)
    left = t <= (yc if inverse else lam)
    wl = torch.where(left, 1.0, wc)
    wr = torch.where(left, wc, wb)
    yl = torch.where(left, 0.0, yc)
    yr = torch.where(left, yc, 1.0)
    pl = torch.where(left, 0.0, lam)
    pr = torch.where(left, lam, 1.0)
    if inverse:
        a = wl * (t - yl)
        u = a / (a + wr * (yr - t))
        inner = x0 + w * (pl + u * (pr - pl))
        anchors = (y0, y1, x0, x1, d0, d1)
    else:
        u = (t - pl) / (pr - pl)
        inner = y0 + h * ((wl * yl * (1 - u) + wr * yr * u) / (wl * (1 - u) + wr * u))
        anchors = (x0, x1, y0, y1, d0, d1)
    den = wl * (1 - u) + wr * u
    deriv = s * wl * wr * (yr - yl) / ((pr - pl) * den * den)
    return _with_tails(v, r, inner, deriv, anchors, inverse)


class LinearRationalSpline(Transformer):
    r"""Monotone linear-rational spline on ``[-B, B]`` with identity tails.

    The ``4K - 1`` raw parameters per scalar are ``K`` width logits, ``K`` height logits,
    ``K - 1`` interior derivative parameters (as in
    :class:`~torchnf.transformers.RationalQuadraticSpline`) and ``K`` split parameters
    :math:`\lambda = m_\lambda + (1 - 2 m_\lambda)\,\sigma(\cdot)` placing the junction of the two
    linear-rational pieces of each bin. All-zero parameters are the identity. Inverse and
    log-derivative are analytic (see :func:`_lrs` for the formulas); both directions are one pass.

    Args:
        bins: number of bins ``K``.
        bound: half-width ``B`` of the spline's square ``[-B, B]^2``.
        min_width: minimum bin width, as a fraction of ``2B``.
        min_height: minimum bin height, as a fraction of ``2B``.
        min_derivative: minimum derivative at the interior knots.
        min_lambda: keeps the split point inside ``[min_lambda, 1 - min_lambda]`` of the bin.

    Example:
        >>> t = LinearRationalSpline(bins=8, bound=5.0)
        >>> params = torch.randn(10, *t.param_shape)
        >>> y, ladj = t.forward(torch.randn(10), params)
        >>> x, _ = t.inverse(y, params)

    References:
        Dolatabadi, Erfani, Leckie, "Invertible Generative Modeling using Linear Rational
        Splines", AISTATS 2020.
        Fuhr, "Monotone piecewise linear rational interpolation", 1992 (the weights).
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
        min_lambda: float = 0.025,
    ) -> None:
        name = type(self).__name__
        _check_spline_args(name, bins, bound, min_width, min_height, min_derivative)
        if not 0 <= min_lambda < 0.5:
            raise ValueError(f"{name}: min_lambda must lie in [0, 0.5), got {min_lambda!r}")
        self.bins, self.bound = bins, float(bound)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self._sizes = (min_width, min_height)
        self.min_lambda = min_lambda
        self.param_shape = (4 * bins - 1,)
        self._shift = _softplus_shift(min_derivative)

    def _lambda(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw) * (1 - 2 * self.min_lambda) + self.min_lambda

    def knots(self, params: Tensor) -> Tensor:
        """All knots ``(4, *b, K+1)`` (positions, values, derivatives, split fractions padded with
        one unused entry), e.g. for plotting."""
        logits, raw, raw_lam = _split(self, params, self.bins - 1, self.bins)
        grid = _Grid(logits, -self.bound, self.bound, self._sizes)
        x, y = (F.pad(grid.knots(r), (1, 0), value=-self.bound) for r in (0, 1))
        d = F.pad(F.softplus(raw + self._shift) + self.min_derivative, (1, 1), value=1.0)
        lam = F.pad(self._lambda(raw_lam), (0, 1), value=0.5)
        return torch.stack([x, y, d, lam], 0)

    def _spline(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        logits, raw, raw_lam = _split(self, params, self.bins - 1, self.bins)
        idx, x0, x1, y0, y1 = _Grid(logits, -self.bound, self.bound, self._sizes).locate(v, int(inverse))
        d0, d1 = _knot_derivatives(raw, idx, self._shift, self.min_derivative)
        lam = self._lambda(raw_lam.gather(-1, idx)[..., 0])
        return _lrs(v, x0, x1, y0, y1, d0, d1, lam, inverse)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(y, params, inverse=True)
