"""Elementwise bijections: :class:`Elementwise` (any transformer, free or context-driven parameters),
its conveniences :class:`ElementwiseAffine` and :class:`ElementwiseShift`, and the fixed maps
:class:`Sigmoid`, :class:`Logit`, :class:`Tanh` and :class:`LeakyReLU`.

Fixed maps have no parameters; their log-derivatives are written in forms that stay finite for
large inputs (``|x| = 1e4``), and the inverses of the bounded maps clamp their input to the open
interval with a dtype-aware margin, so a value that rounded onto the boundary maps back finitely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.core import Bijection, sum_event
from torchnf.nn import MLP
from torchnf.transformers.affine import Affine, Shift
from torchnf.transformers.base import Transformer

__all__ = [
    "Elementwise",
    "ElementwiseAffine",
    "ElementwiseShift",
    "Sigmoid",
    "Logit",
    "Tanh",
    "LeakyReLU",
]


class Elementwise(Bijection):
    """Apply one transformer to every scalar, with its own parameters per position.

    Without context the parameters are free (initialised at the identity); with ``context_dim > 0``
    an MLP maps the context to offsets from the identity parameters.

    Args:
        transformer: the elementwise map (e.g. :class:`~torchnf.transformers.Affine`).
        event_shape: shape of one event, or an int ``D`` for vectors.
        context_dim: size of the context; 0 for free parameters.
        hidden: hidden widths of the context MLP.
        activation: activation of the context MLP.

    Example:
        >>> b = Elementwise(nf.transformers.Affine(), 3)
        >>> z, ladj = b(torch.randn(8, 3))
    """

    def __init__(
        self,
        transformer: Transformer,
        event_shape: Sequence[int] | int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__(event_shape, context_dim)
        self.transformer = transformer
        ps = tuple(transformer.param_shape)
        self._pshape = ps
        identity = transformer.identity_params()
        if context_dim:
            n = self.event_shape.numel() * transformer.num_params
            self.net = MLP(context_dim, n, hidden, activation)
            self.register_buffer("identity", identity, persistent=False)
        else:
            self.params = nn.Parameter(identity.expand(*self.event_shape, *ps).clone())

    def _params(self, batch: torch.Size, context: Tensor | None) -> Tensor:
        if context is None:
            return self.params.expand(*batch, *self.event_shape, *self._pshape)
        out = self.net(context).view(*batch, *self.event_shape, *self._pshape)
        return out + self.identity

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        z, l = self.transformer.forward(x, self._params(batch, context))
        return z, sum_event(l, len(self.event_shape))

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = z.shape[: z.dim() - len(self.event_shape)]
        x, l = self.transformer.inverse(z, self._params(batch, context))
        return x, sum_event(l, len(self.event_shape))

    def extra_repr(self) -> str:
        return f"{self.transformer!r}, " + super().extra_repr()


class ElementwiseAffine(Elementwise):
    r"""Learnable per-feature affine map ``z = x * exp(s) + t`` (free or context-driven).

    Shorthand for ``Elementwise(Affine(scale_bound), event_shape, ...)``; the log-scale is
    soft-clamped to ``|s| < scale_bound``. Starts at the identity. ``ladj = sum(s)``.

    Args:
        event_shape: shape of one event, or an int ``D``.
        context_dim: size of the context; 0 for free parameters.
        hidden: hidden widths of the context MLP.
        activation: activation of the context MLP.
        scale_bound: bound on the log-scale.

    Example:
        >>> b = ElementwiseAffine(3)
        >>> z, ladj = b(torch.randn(8, 3))

    References:
        Dinh, Krueger, Bengio, "NICE: Non-linear Independent Components Estimation", 2015
        (the final diagonal scaling layer).
    """

    def __init__(
        self,
        event_shape: Sequence[int] | int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__(Affine(scale_bound), event_shape, context_dim, hidden, activation)


class ElementwiseShift(Elementwise):
    """Learnable per-feature shift ``z = x + t`` (volume preserving, ``ladj = 0``).

    Shorthand for ``Elementwise(Shift(), event_shape, ...)``. Starts at the identity.

    Args:
        event_shape: shape of one event, or an int ``D``.
        context_dim: size of the context; 0 for free parameters.
        hidden: hidden widths of the context MLP.
        activation: activation of the context MLP.

    Example:
        >>> b = ElementwiseShift(3)
        >>> z, ladj = b(torch.randn(8, 3))

    References:
        Dinh, Krueger, Bengio, "NICE: Non-linear Independent Components Estimation", 2015.
    """

    def __init__(
        self,
        event_shape: Sequence[int] | int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__(Shift(), event_shape, context_dim, hidden, activation)


# -- fixed maps ---------------------------------------------------------------------------------


def _sigmoid(x: Tensor) -> tuple[Tensor, Tensor]:
    """``sigmoid(x)`` and ``log sigmoid'(x) = -softplus(-x) - softplus(x)`` (finite for any x)."""
    return torch.sigmoid(x), -F.softplus(-x) - F.softplus(x)


def _logit(y: Tensor) -> tuple[Tensor, Tensor]:
    """``logit(y)`` and its log-derivative ``-log y - log(1 - y)``, with ``y`` clamped into
    ``[tiny, 1 - eps/2]`` of its dtype (the open interval's representable extremes)."""
    fi = torch.finfo(y.dtype)
    y = y.clamp(fi.tiny, 1.0 - fi.eps / 2)
    log_y, log_1my = torch.log(y), torch.log1p(-y)
    return log_y - log_1my, -log_y - log_1my


class _FixedMap(Bijection):
    """Parameter-free elementwise map given by ``_map`` / ``_unmap`` (value, log-derivative)."""

    def _map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _unmap(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, logd = self._map(x)
        return z, sum_event(logd, len(self.event_shape))

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x, logd = self._unmap(z)
        return x, sum_event(logd, len(self.event_shape))


class Sigmoid(_FixedMap):
    r"""Logistic sigmoid ``z = 1 / (1 + exp(-x))``, mapping ``R`` onto ``(0, 1)``.

    ``log dz/dx = -softplus(-x) - softplus(x)``, finite for every finite ``x``. The inverse
    ``x = log z - log(1 - z)`` clamps ``z`` into ``[tiny, 1 - eps/2]`` of its dtype, so a value
    that rounded to 0 or 1 (``|x|`` beyond ~17 in float32, ~37 in float64) maps back finitely.

    Args:
        event_shape: shape of one event, or an int ``D``.

    Example:
        >>> b = Sigmoid(2)
        >>> z, ladj = b(torch.tensor([[0.0, 1e4]]))
        >>> z
        tensor([[0.5000, 1.0000]])

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)

    def _map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _sigmoid(x)

    def _unmap(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return _logit(z)


class Logit(_FixedMap):
    r"""Logit ``z = logit(alpha + (1 - 2 alpha) x)``, mapping ``[0, 1]`` data onto ``R``.

    With ``alpha > 0`` the data are first squeezed into ``[alpha, 1 - alpha]``, so pixels at
    exactly 0 or 1 stay finite (RealNVP squeezes ``alpha + (1 - alpha) x``; this is the symmetric
    form, safe at both ends). ``log dz/dx = log(1 - 2 alpha) - log y - log(1 - y)`` with
    ``y = alpha + (1 - 2 alpha) x``. The forward clamps ``y`` into the open interval like
    :class:`Sigmoid`'s inverse; the inverse is ``x = (sigmoid(z) - alpha) / (1 - 2 alpha)``.

    Args:
        event_shape: shape of one event, or an int ``D``.
        alpha: squeeze margin in ``[0, 0.5)``; 0 for the plain logit on ``(0, 1)``.

    Example:
        >>> b = Logit((1, 4, 4), alpha=0.05)
        >>> z, ladj = b(torch.rand(8, 1, 4, 4))

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017 (Sec. 4.1).
    """

    def __init__(self, event_shape: Sequence[int] | int, alpha: float = 0.0) -> None:
        if not 0.0 <= float(alpha) < 0.5:
            raise ValueError(f"Logit: alpha must be in [0, 0.5), got {alpha!r}")
        super().__init__(event_shape)
        self.alpha = float(alpha)
        self._log_width = math.log1p(-2.0 * self.alpha)

    def _map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x * (1.0 - 2.0 * self.alpha) + self.alpha if self.alpha else x
        z, logd = _logit(y)
        return z, logd + self._log_width

    def _unmap(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y, logd = _sigmoid(z)
        x = (y - self.alpha) * (1.0 / (1.0 - 2.0 * self.alpha)) if self.alpha else y
        return x, logd - self._log_width

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", alpha={self.alpha}" if self.alpha else "")


class Tanh(_FixedMap):
    r"""Hyperbolic tangent ``z = tanh(x)``, mapping ``R`` onto ``(-1, 1)``.

    ``log dz/dx = log(1 - tanh^2 x) = 2 (log 2 - x - softplus(-2x))``, finite for every finite
    ``x``. The inverse ``x = atanh(z)`` clamps ``|z| <= 1 - eps/2`` of its dtype and uses
    ``log dx/dz = -log1p(z) - log1p(-z)``.

    Args:
        event_shape: shape of one event, or an int ``D``.

    Example:
        >>> b = Tanh(2)
        >>> z, ladj = b(torch.tensor([[0.0, 1e4]]))
        >>> ladj.isfinite().all()
        tensor(True)

    References:
        Haarnoja et al., "Soft Actor-Critic", ICML 2018 (appendix C, the tanh log-derivative).
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)

    def _map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.tanh(x), (math.log(2.0) - x - F.softplus(-2.0 * x)) * 2.0

    def _unmap(self, z: Tensor) -> tuple[Tensor, Tensor]:
        bound = 1.0 - torch.finfo(z.dtype).eps / 2
        z = z.clamp(-bound, bound)
        return torch.atanh(z), -torch.log1p(z) - torch.log1p(-z)


class LeakyReLU(_FixedMap):
    r"""Leaky ReLU ``z = x`` for ``x >= 0`` and ``z = a x`` otherwise (``a > 0``).

    Piecewise linear, so ``log dz/dx`` is 0 or ``log a``; the inverse divides by ``a`` on the
    negative side.

    Args:
        event_shape: shape of one event, or an int ``D``.
        negative_slope: slope ``a > 0`` on the negative half-line.

    Example:
        >>> b = LeakyReLU(2, negative_slope=0.5)
        >>> b(torch.tensor([[-2.0, 3.0]]))[0]
        tensor([[-1.,  3.]])

    References:
        Maas, Hannun, Ng, "Rectifier nonlinearities improve neural network acoustic models",
        ICML 2013.
    """

    def __init__(self, event_shape: Sequence[int] | int, negative_slope: float = 0.01) -> None:
        a = float(negative_slope)
        if not (a > 0 and math.isfinite(a)):
            raise ValueError(f"LeakyReLU: negative_slope must be positive and finite, got {negative_slope!r}")
        super().__init__(event_shape)
        self.negative_slope = a
        self._log_slope = math.log(a)

    def _map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        neg = x < 0
        return torch.where(neg, x * self.negative_slope, x), neg.to(x.dtype) * self._log_slope

    def _unmap(self, z: Tensor) -> tuple[Tensor, Tensor]:
        neg = z < 0
        return torch.where(neg, z * (1.0 / self.negative_slope), z), neg.to(z.dtype) * -self._log_slope

    def extra_repr(self) -> str:
        return super().extra_repr() + f", negative_slope={self.negative_slope}"
