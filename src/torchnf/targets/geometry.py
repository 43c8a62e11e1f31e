"""Targets with bad geometry for fixed-step samplers: the banana and Neal's funnel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchnf.targets.base import _LOG_2PI, Target

__all__ = ["Banana", "Funnel"]


class Banana(Target):
    r"""Rosenbrock-type twisted Gaussian (Haario, Saksman, Tamminen 1999).

    With ``u ~ N(0, I)``: ``x_1 = a u_1``, ``x_2 = u_2 + b (x_1^2 - a^2)`` and ``x_i = u_i`` for
    ``i > 2``. The map has unit Jacobian, so

    .. math::
        \log \tilde p(x) = -\tfrac12\Big[(x_1/a)^2 + \big(x_2 - b(x_1^2 - a^2)\big)^2
        + \sum_{i>2} x_i^2\Big], \qquad \log Z = \tfrac{d}{2}\log 2\pi + \log a,

    and the moments are exact: mean 0, ``Var x_1 = a^2``, ``Var x_2 = 1 + 2 a^4 b^2``, all
    covariances 0. ``log_prob`` is the unnormalised :math:`\log\tilde p`.

    Args:
        dim: number of coordinates (>= 2).
        a: scale of ``x_1``.
        b: curvature of the banana.

    Example:
        >>> t = Banana()
        >>> x = t.sample(1000, seed=0)
        >>> (t.log_prob(x) - t.log_normalizer).shape
        torch.Size([1000])

    References:
        Haario, Saksman, Tamminen, "Adaptive proposal distribution for random walk Metropolis
        algorithm", Computational Statistics, 1999.
    """

    def __init__(self, dim: int = 2, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__(dim)
        if dim < 2 or not a > 0 or not math.isfinite(b):
            raise ValueError(f"Banana: need dim >= 2, a > 0 and a finite b, got dim={dim}, a={a}, b={b}")
        self.a, self.b = float(a), float(b)
        self.log_normalizer = 0.5 * dim * _LOG_2PI + math.log(self.a)

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, x2 = x[..., 0], x[..., 1]
        r = (x1 / self.a).square() + (x2 - self.b * (x1.square() - self.a**2)).square()
        return -0.5 * (r + x[..., 2:].square().sum(-1))

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        u = torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
        x1 = self.a * u[:, 0]
        x2 = u[:, 1] + self.b * (x1.square() - self.a**2)
        return torch.cat([x1[:, None], x2[:, None], u[:, 2:]], dim=1)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        v = torch.ones(self.dim, dtype=torch.float64)
        v[0], v[1] = self.a**2, 1 + 2 * self.a**4 * self.b**2
        return torch.diag(v)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, a={self.a}, b={self.b}"


class Funnel(Target):
    r"""Neal's funnel: ``x_1 ~ N(0, s^2)`` and ``x_i | x_1 ~ N(0, e^{x_1})`` for ``i = 2..dim``.

    .. math::
        \log p(x) = \log N(x_1; 0, s^2) + \sum_{i\ge2} \log N(x_i; 0, e^{x_1}),

    normalised (``log_normalizer = 0``). Exact moments: mean 0, ``Var x_1 = s^2``,
    ``Var x_i = E[e^{x_1}] = e^{s^2/2}``. The neck (``x_1 << 0``) defeats fixed-step samplers; the
    map ``(x_1/s, x_i e^{-x_1/2})`` makes it a standard normal.

    Args:
        dim: number of coordinates (>= 2).
        scale: standard deviation ``s`` of ``x_1`` (Neal used 3).

    Example:
        >>> t = Funnel(5)
        >>> t.log_prob(t.sample(4, seed=0)).shape
        torch.Size([4])

    References:
        Neal, "Slice sampling", Annals of Statistics, 2003.
    """

    log_normalizer = 0.0

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        super().__init__(dim)
        if dim < 2 or not scale > 0:
            raise ValueError(f"Funnel: need dim >= 2 and scale > 0, got dim={dim}, scale={scale}")
        self.scale = float(scale)

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, rest = x[..., 0], x[..., 1:]
        lp1 = -0.5 * (x1 / self.scale).square() - math.log(self.scale) - 0.5 * _LOG_2PI
        u = rest * torch.exp(-0.5 * x1)[..., None]
        return lp1 - 0.5 * u.square().sum(-1) - 0.5 * (self.dim - 1) * (x1 + _LOG_2PI)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        u = torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
        x1 = self.scale * u[:, :1]
        return torch.cat([x1, u[:, 1:] * torch.exp(0.5 * x1)], dim=1)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        v = torch.full((self.dim,), math.exp(0.5 * self.scale**2), dtype=torch.float64)
        v[0] = self.scale**2
        return torch.diag(v)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"
