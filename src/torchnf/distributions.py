"""Base distributions: modules with buffers, ``log_prob(z, context=None)`` and ``sample(shape, context=None)``.

``sample`` is reparameterised (differentiable) where the distribution allows it; a
:class:`~torchnf.Flow` wraps it in ``torch.no_grad`` for its own ``sample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.core import Recorded, check_context, check_input

__all__ = ["Distribution", "StandardNormal", "DiagonalNormal"]

_LOG_2PI = math.log(2 * math.pi)


def _shape(shape: int | Sequence[int] | torch.Size) -> torch.Size:
    return torch.Size((shape,) if isinstance(shape, int) else tuple(shape))


class Distribution(Recorded, nn.Module):
    """Base class of base distributions over events of shape ``event_shape``.

    Subclasses implement ``_log_prob(z, context)`` (sum over event dims; context already
    broadcast) and ``_sample(shape, context)`` returning ``(*shape, *event_shape)`` where
    ``shape`` already includes the context's batch shape.
    """

    def __init__(self, event_shape: Sequence[int] | int, context_dim: int = 0) -> None:
        nn.Module.__init__(self)
        self.event_shape = _shape(event_shape)
        self.context_dim = int(context_dim)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``z`` of shape ``(*batch, *event_shape)``; returns ``(*batch)``."""
        batch = check_input(self, z, self.event_shape)
        context, shape = check_context(self, context, self.context_dim, batch)
        if shape != batch:
            z = z.expand(*shape, *self.event_shape)
        return self._log_prob(z, context)

    def sample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        """Draw samples of shape ``(*shape, *context_batch, *event_shape)`` (reparameterised)."""
        shape = _shape(shape)
        context, cbatch = check_context(self, context, self.context_dim, torch.Size())
        if context is not None:
            context = context.expand(*shape, *context.shape)
        return self._sample(shape + cbatch, context)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _ref(self) -> Tensor:
        """A tensor carrying this module's dtype and device."""
        for t in self.buffers():
            return t
        for t in self.parameters():
            return t
        raise RuntimeError(f"{type(self).__name__} has no buffer or parameter")

    def extra_repr(self) -> str:
        s = f"event_shape={tuple(self.event_shape)}"
        return s + (f", context_dim={self.context_dim}" if self.context_dim else "")


class StandardNormal(Distribution):
    """Standard normal ``N(0, I)`` over events of shape ``event_shape``.

    Example:
        >>> base = StandardNormal(2)
        >>> base.log_prob(torch.zeros(2))
        tensor(-1.8379)
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        n = len(self.event_shape)
        d = self.event_shape.numel()
        sq = z.square().sum(dim=tuple(range(-n, 0))) if n else z.square()
        return sq * -0.5 - 0.5 * d * _LOG_2PI

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        z = self._zero
        return torch.randn(*shape, *self.event_shape, dtype=z.dtype, device=z.device)


class DiagonalNormal(Distribution):
    """Normal with trainable mean and diagonal scale (initialised at ``N(0, I)``).

    Example:
        >>> base = DiagonalNormal(3)
        >>> base.sample(5).shape
        torch.Size([5, 3])
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        n = len(self.event_shape)
        u = (z - self.loc) * torch.exp(-self.log_scale)
        lp = -0.5 * u.square() - self.log_scale - 0.5 * _LOG_2PI
        return lp.sum(dim=tuple(range(-n, 0))) if n else lp

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        eps = torch.randn(*shape, *self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.log_scale.exp()
