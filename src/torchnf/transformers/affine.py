"""Affine and additive transformers (NICE, RealNVP, MAF, IAF)."""

from __future__ import annotations

import torch
from torch import Tensor

from torchnf.transformers.base import Transformer

__all__ = ["Affine", "Shift"]


class Affine(Transformer):
    r"""Affine map ``y = x * exp(s) + t`` with a bounded log-scale.

    The raw parameters are ``(t, u)``; the log-scale is the soft clamp
    :math:`s = c \tanh(u / c)` with ``c = scale_bound``, so ``|s| < c`` and ``exp(s)`` never over-
    or underflows, while ``s ~ u`` near zero. Zero parameters give the identity.

    Args:
        scale_bound: bound ``c`` on ``|log scale|`` per layer (default 3, i.e. scales in
            ``[0.05, 20]``).

    Example:
        >>> t = Affine()
        >>> y, ladj = t.forward(torch.zeros(4), torch.zeros(4, 2))

    References:
        Dinh et al., "Density estimation using Real NVP", ICLR 2017.
        Papamakarios et al., "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    """

    param_shape = (2,)

    def __init__(self, scale_bound: float = 3.0) -> None:
        if not scale_bound > 0:
            raise ValueError(f"Affine: scale_bound must be positive, got {scale_bound}")
        self.scale_bound = float(scale_bound)

    def _log_scale(self, u: Tensor) -> Tensor:
        c = self.scale_bound
        return torch.tanh(u * (1.0 / c)) * c

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, u = params.unbind(-1)
        s = self._log_scale(u)
        return torch.addcmul(t, x, s.exp()), s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, u = params.unbind(-1)
        s = self._log_scale(u)
        return (y - t) * torch.exp(-s), -s


class Shift(Transformer):
    """Additive map ``y = x + t`` (NICE); volume preserving, ``ladj = 0``.

    Example:
        >>> y, ladj = Shift().forward(torch.zeros(3), torch.ones(3, 1))
        >>> y, ladj
        (tensor([1., 1., 1.]), tensor([0., 0., 0.]))

    References:
        Dinh et al., "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop.
    """

    param_shape = (1,)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t = params[..., 0]
        return x + t, torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t = params[..., 0]
        return y - t, torch.zeros_like(y)
