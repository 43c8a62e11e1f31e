"""Elementwise bijections: :class:`Elementwise` (any transformer, free or context-driven parameters)
and fixed maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.core import Bijection, sum_event
from torchnf.nn import MLP
from torchnf.transformers.base import Transformer

__all__ = ["Elementwise"]


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
