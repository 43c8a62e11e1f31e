"""The :class:`Target` base class and the helpers every target uses."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from torchnf.core import all_finite

__all__ = ["Target"]

_LOG_2PI = math.log(2 * math.pi)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _as64(name: str, what: str, value: object, shape: tuple[int, ...] | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name}: expected {what} of shape {shape}, got {tuple(t.shape)}")
    if not all_finite(t):
        raise ValueError(f"{name}: {what} contains NaN or inf")
    return t


class Target(nn.Module):
    """Base class of the targets: an (unnormalised) log-density on ``R^dim``.

    Subclasses implement ``_log_prob(x)`` for ``x`` of shape ``(*batch, dim)`` (already checked)
    and, where they can, ``_sample(n, generator, dtype)``. Constant tensors are float64 buffers that
    are cast to the input's dtype and device on use, so one target serves float32 and float64.

    Attributes:
        dim: number of coordinates.
        log_normalizer: ``log Z`` with ``Z = \\int exp(log_prob)``, or ``None`` if unknown.
    """

    log_normalizer: float | None = None

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be a positive integer, got {dim!r}")
        self.dim = dim

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density (up to ``log_normalizer``) of ``x`` of shape ``(*batch, dim)`` -> ``(*batch)``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{type(self).__name__}: expected a floating-point tensor, got {got}")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}: expected x of shape (*batch, {self.dim}), got {tuple(x.shape)}"
            )
        return self._log_prob(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x)

    def sample(self, n: int, seed: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """``n`` exact samples of shape ``(n, dim)`` (float64 unless ``dtype`` is given)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: n must be an integer >= 0, got {n!r}")
        return self._sample(n, _generator(seed)).to(dtype or torch.float64)

    @property
    def mean(self) -> Tensor | None:
        """Exact mean ``(dim,)`` (float64), or ``None`` if unknown."""
        return None

    @property
    def cov(self) -> Tensor | None:
        """Exact covariance ``(dim, dim)`` (float64), or ``None`` if unknown."""
        return None

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
