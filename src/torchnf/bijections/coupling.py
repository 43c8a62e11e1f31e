"""Coupling layers: one part of the features conditions a transformer applied to the rest."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.core import Bijection
from torchnf.nn import MLP
from torchnf.transformers.affine import Affine, Shift
from torchnf.transformers.base import Transformer

__all__ = ["Coupling", "AffineCoupling", "AdditiveCoupling", "default_mask"]


def default_mask(dim: int, flip: bool = False) -> Tensor:
    """Boolean mask (``True`` = transformed): the last ``dim - dim // 2`` features, or the first
    ``dim - dim // 2`` when ``flip``."""
    mask = torch.arange(dim) >= dim // 2
    return mask.flip(0) if flip else mask


def _as_range(idx: Tensor) -> tuple[int, int] | None:
    if idx.numel() and torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + idx.numel())):
        return int(idx[0]), int(idx[0]) + idx.numel()
    return None


class Coupling(Bijection):
    r"""Coupling layer: ``z_B = tau(x_B; c(x_A, context))``, ``z_A = x_A``.

    ``mask`` marks the transformed features ``B`` (``True``); the others (``A``) pass through and
    feed the conditioner MLP, together with the context. The Jacobian is block triangular, so
    ``ladj`` is the sum of the transformer's log-derivatives; both directions are one pass.

    Args:
        transformer: elementwise map applied to the transformed features.
        mask: boolean tensor of shape ``(D,)`` or an int ``D`` (default mask: the second half).
        context_dim: size of the context.
        hidden: hidden widths of the conditioner MLP.
        activation: its activation.
        circular: the features are angles: the conditioner sees ``(cos x_A, sin x_A)``, so its
            output is continuous across the seam at ``±pi`` (Rezende et al. 2020).

    Example:
        >>> layer = Coupling(nf.transformers.Affine(), torch.tensor([True, False, True]))
        >>> z, ladj = layer(torch.randn(5, 3))

    References:
        Dinh et al., "NICE", 2015; "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self,
        transformer: Transformer,
        mask: Tensor | int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (256, 256),
        activation: str = "relu",
        circular: bool = False,
    ) -> None:
        if isinstance(mask, int):
            mask = default_mask(mask)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 1:
            raise ValueError(f"Coupling: mask must be 1-D (features,), got shape {tuple(mask.shape)}")
        n_t = int(mask.sum())
        if n_t == 0 or n_t == mask.numel():
            raise ValueError("Coupling: the mask must leave at least one feature on each side")
        super().__init__((mask.numel(),), context_dim)
        self.transformer = transformer
        idx_a = torch.nonzero(~mask).flatten()
        idx_b = torch.nonzero(mask).flatten()
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self._ra, self._rb = _as_range(idx_a), _as_range(idx_b)
        self._pshape = tuple(transformer.param_shape)
        identity = transformer.identity_params()
        self._add_identity = bool(identity.abs().sum() > 0)
        self.register_buffer("identity", identity, persistent=False)
        self.circular = bool(circular)
        n_in = idx_a.numel() * (2 if circular else 1) + context_dim
        self.net = MLP(n_in, n_t * transformer.num_params, hidden, activation)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._ra is not None and self._rb is not None:
            return x[..., self._ra[0] : self._ra[1]], x[..., self._rb[0] : self._rb[1]]
        return x.index_select(-1, self.idx_a), x.index_select(-1, self.idx_b)

    def _merge(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        if self._ra is not None and self._rb is not None:
            if self._ra[1] == self._rb[0]:
                return torch.cat([a, b], dim=-1)
            if self._rb[1] == self._ra[0]:
                return torch.cat([b, a], dim=-1)
        return x.index_copy(-1, self.idx_b, b)

    def _params(self, a: Tensor, context: Tensor | None) -> Tensor:
        if self.circular:
            a = torch.cat([a.cos(), a.sin()], dim=-1)
        h = a if context is None else torch.cat([a, context], dim=-1)
        params = self.net(h)
        params = params.view(*params.shape[:-1], self.idx_b.numel(), *self._pshape)
        return params + self.identity if self._add_identity else params

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        zb, l = self.transformer.forward(b, self._params(a, context))
        return self._merge(x, a, zb), l.sum(-1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(z)
        xb, l = self.transformer.inverse(b, self._params(a, context))
        return self._merge(z, a, xb), l.sum(-1)

    def extra_repr(self) -> str:
        return f"{self.transformer!r}, mask={self.mask.int().tolist()}, " + super().extra_repr()


class AffineCoupling(Coupling):
    """RealNVP affine coupling layer (:class:`Coupling` with :class:`~torchnf.transformers.Affine`).

    Example:
        >>> layer = AffineCoupling(4)
        >>> z, ladj = layer(torch.randn(10, 4))
    """

    def __init__(
        self,
        mask: Tensor | int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (256, 256),
        activation: str = "relu",
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__(Affine(scale_bound), mask, context_dim, hidden, activation)


class AdditiveCoupling(Coupling):
    """NICE additive (volume-preserving) coupling layer.

    Example:
        >>> layer = AdditiveCoupling(4)
        >>> z, ladj = layer(torch.randn(10, 4))  # ladj == 0
    """

    def __init__(
        self,
        mask: Tensor | int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (256, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__(Shift(), mask, context_dim, hidden, activation)
