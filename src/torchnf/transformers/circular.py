r"""Circular rational-quadratic splines for angles (Rezende et al. 2020): :class:`CircularSpline`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.transformers.base import Transformer
from torchnf.transformers.splines import (
    _check_spline_args,
    _Grid,
    _rq,
    _softplus_shift,
    _split,
)

__all__ = ["CircularSpline"]

_PI = math.pi


def _wrap(a: Tensor) -> Tensor:
    """Angle ``a`` mapped to ``[-pi, pi)``."""
    return torch.remainder(a + _PI, 2 * _PI) - _PI


class CircularSpline(Transformer):
    r"""Rational-quadratic spline mapping the circle ``[-pi, pi)`` onto itself.

    The knots run from :math:`(-\pi, -\pi)` to :math:`(\pi, \pi)` and the derivative at the last
    knot equals the derivative at the first, so the map is a diffeomorphism of the circle: value
    and derivative are continuous across the seam at :math:`\pm\pi`. The ``3K`` raw parameters per
    angle are ``K`` width logits, ``K`` height logits and ``K`` derivative parameters (knots
    ``0 .. K-1``; knot ``K`` shares knot 0's). With ``rotation=True`` a further parameter
    :math:`\phi` rotates the output, :math:`y = ((\mathrm{spline}(x) + \phi + \pi) \bmod 2\pi) - \pi`,
    so the seam itself can move (``ladj`` is unchanged by the rotation). All-zero parameters are
    the identity. Inputs are angles in ``[-pi, pi)``; values just outside continue linearly with
    the seam derivative (they are not wrapped).

    Coupling and autoregressive conditioners see the raw angles of the other features; feeding
    them :math:`(\cos x, \sin x)` instead makes the conditional densities continuous on the torus.

    Args:
        bins: number of bins ``K``.
        min_width: minimum bin width, as a fraction of ``2 pi``.
        min_height: minimum bin height, as a fraction of ``2 pi``.
        min_derivative: minimum derivative at the knots.
        rotation: add a learnable rotation of the output (one more parameter).

    Example:
        >>> t = CircularSpline(bins=8, rotation=True)
        >>> params = torch.randn(10, *t.param_shape)
        >>> angles = torch.rand(10) * 2 * math.pi - math.pi
        >>> y, ladj = t.forward(angles, params)
        >>> bool(((y >= -math.pi) & (y < math.pi)).all())
        True

    References:
        Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan, Cranmer, "Normalizing Flows
        on Tori and Spheres", ICML 2020.
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019.
    """

    def __init__(
        self,
        bins: int = 8,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
        rotation: bool = False,
    ) -> None:
        _check_spline_args(type(self).__name__, bins, _PI, min_width, min_height, min_derivative)
        self.bins, self.rotation = bins, bool(rotation)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self._sizes = (min_width, min_height)
        self.param_shape = (3 * bins + int(self.rotation),)
        self._sizes_of_rest = (bins, 1) if self.rotation else (bins,)
        self._shift = _softplus_shift(min_derivative)

    def knots(self, params: Tensor) -> Tensor:
        """All knots ``(3, *b, K+1)``; the derivative row is periodic (``d_K = d_0``)."""
        logits, raw, *_ = _split(self, params, *self._sizes_of_rest)
        grid = _Grid(logits, -_PI, _PI, self._sizes)
        x, y = (F.pad(grid.knots(r), (1, 0), value=-_PI) for r in (0, 1))
        d = F.softplus(torch.cat([raw, raw[..., :1]], dim=-1) + self._shift) + self.min_derivative
        return torch.stack([x, y, d], 0)

    def _spline(self, v: Tensor, raw: Tensor, logits: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        idx, x0, x1, y0, y1 = _Grid(logits, -_PI, _PI, self._sizes).locate(v, int(inverse))
        index = torch.cat([idx, (idx + 1).remainder(self.bins)], dim=-1)
        d = F.softplus(raw.gather(-1, index) + self._shift) + self.min_derivative
        return _rq(v, x0, x1, y0, y1, d[..., 0], d[..., 1], inverse)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        logits, raw, *rot = _split(self, params, *self._sizes_of_rest)
        y, ladj = self._spline(x, raw, logits, inverse=False)
        if self.rotation:
            y = _wrap(y + rot[0][..., 0])
        return y, ladj

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        logits, raw, *rot = _split(self, params, *self._sizes_of_rest)
        if self.rotation:
            y = _wrap(y - rot[0][..., 0])
        return self._spline(y, raw, logits, inverse=True)
