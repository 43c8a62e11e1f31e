"""The :class:`Transformer` interface: an elementwise invertible map driven by parameters.

A transformer is a plain object (not a module). Its parameters come from outside: free parameters
(:class:`~torchnf.Elementwise`), a coupling conditioner (:class:`~torchnf.Coupling`) or a MADE
(:class:`~torchnf.MaskedAutoregressive`). For an input ``x`` of shape ``(*batch, D)`` the parameters
have shape ``(*batch, D, *param_shape)``; every scalar gets its own parameter vector.
Constraints on the parameters (positivity, bounds) are applied inside the transformer, so any
real-valued conditioner output is valid.

A new transformer is one file plus one line in ``transformers/__init__.py``; it then works in all
three structures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchnf.core import Recorded

__all__ = ["Transformer"]


class Transformer(Recorded):
    """Elementwise, strictly increasing map ``y = tau(x; params)``.

    Attributes:
        param_shape: shape of the parameters of one scalar, e.g. ``(2,)`` for affine.
    """

    param_shape: tuple[int, ...] = ()

    @property
    def num_params(self) -> int:
        """Number of parameters per scalar (``prod(param_shape)``)."""
        n = 1
        for s in self.param_shape:
            n *= s
        return n

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the map. ``x``: ``(*b)``, ``params``: ``(*b, *param_shape)``.

        Returns ``(y, log dy/dx)``, both of shape ``(*b)``.
        """
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Invert the map. Returns ``(x, log dx/dy)``, both of shape ``(*b)``."""
        raise NotImplementedError

    def identity_params(self) -> Tensor:
        """Parameters (shape ``param_shape``) for which the map is the identity."""
        return torch.zeros(self.param_shape)

    def __repr__(self) -> str:
        _, args, kwargs = self.__dict__.get("_config", (None, (), {}))
        inner = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        return f"{type(self).__name__}({inner})"
