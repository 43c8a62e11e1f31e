"""Linear and normalisation bijections: :class:`Permutation`, :class:`Reverse`, :class:`LULinear`,
:class:`ActNorm` and :class:`BatchNorm`.

All of them are cheap in both directions (``fast_direction = "both"``) and their log-determinant
does not depend on the input, so ``ladj`` is one number broadcast to the batch shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.core import Bijection

__all__ = ["Permutation", "Reverse", "LULinear", "ActNorm", "BatchNorm"]


def _dim(owner: str, dim: Any) -> int:
    if isinstance(dim, (tuple, list, torch.Size)) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"{owner}: dim must be a positive integer, got {dim!r}")
    return dim


def _check_permutation(owner: str, dim: int, permutation: Tensor | Sequence[int]) -> Tensor:
    perm = torch.as_tensor(permutation)
    if perm.is_floating_point() or perm.is_complex() or perm.dtype == torch.bool:
        raise ValueError(f"{owner}: permutation must hold integers, got dtype {perm.dtype}")
    perm = perm.long()
    if perm.shape != (dim,) or not torch.equal(perm.sort().values, torch.arange(dim)):
        raise ValueError(f"{owner}: expected a permutation of range({dim}), got {perm.tolist()}")
    return perm


def _batch(x: Tensor, event_shape: torch.Size) -> torch.Size:
    return x.shape[: x.dim() - len(event_shape)]


def _channels_last(x: Tensor, event_shape: torch.Size) -> Tensor:
    """``(*batch, C, *spatial) -> (N, C)``: every scalar of a channel becomes one row entry."""
    return x.movedim(x.dim() - len(event_shape), -1).reshape(-1, event_shape[0])


def _param_shape(event_shape: torch.Size) -> tuple[int, ...]:
    """Shape of per-channel parameters that broadcast over ``(C, *spatial)``."""
    return (event_shape[0],) + (1,) * (len(event_shape) - 1)


class Permutation(Bijection):
    """Fixed permutation of the features: ``z[..., i] = x[..., permutation[i]]``; ``ladj = 0``.

    The permutation is given, or drawn at random (reproducibly with ``seed``). It is stored in a
    persistent buffer, so a random permutation survives ``state_dict`` and save/load.

    Args:
        dim: number of features ``D``.
        permutation: a permutation of ``range(D)`` (integers); default: random.
        seed: seed of the random permutation (ignored if ``permutation`` is given; passing both
            is an error). ``None`` draws from torch's global generator.

    Example:
        >>> p = Permutation(4, permutation=[2, 0, 3, 1])
        >>> p(torch.tensor([10.0, 11.0, 12.0, 13.0]))[0]
        tensor([12., 10., 13., 11.])
        >>> Permutation(4, seed=0).permutation.shape
        torch.Size([4])
    """

    def __init__(
        self,
        dim: int,
        permutation: Tensor | Sequence[int] | None = None,
        seed: int | None = None,
    ) -> None:
        name = type(self).__name__
        dim = _dim(name, dim)
        if permutation is None:
            gen = None if seed is None else torch.Generator().manual_seed(int(seed))
            perm = torch.randperm(dim, generator=gen)
        else:
            if seed is not None:
                raise ValueError(f"{name}: pass either permutation or seed, not both")
            perm = _check_permutation(name, dim, permutation)
        super().__init__((dim,))
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.index_select(-1, self.permutation), x.new_zeros(_batch(x, self.event_shape))

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z.index_select(-1, self.inverse_permutation), z.new_zeros(_batch(z, self.event_shape))


class Reverse(Permutation):
    """Reverse the order of the features: ``z[..., i] = x[..., D - 1 - i]``; ``ladj = 0``.

    Args:
        dim: number of features ``D``.

    Example:
        >>> Reverse(3)(torch.tensor([1.0, 2.0, 3.0]))[0]
        tensor([3., 2., 1.])

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(self, dim: int) -> None:
        dim = _dim("Reverse", dim)
        super().__init__(dim, torch.arange(dim - 1, -1, -1))


class LULinear(Bijection):
    r"""Invertible linear map ``z = W x + b`` with ``W = P L U`` (LU-parameterised).

    ``L`` is unit lower triangular, ``U`` upper triangular with positive diagonal
    ``exp(log_diag)``, ``P`` a fixed permutation of the rows (default: none). Then
    ``log|det W| = sum(log_diag)`` costs ``O(D)``, and the inverse
    ``x = U^{-1} L^{-1} P^T (z - b)`` is two triangular solves. All parameters start at zero, so
    the layer starts at the identity (with ``P = I``). ``W`` is rebuilt from the parameters on
    every call (no cache to invalidate).

    Args:
        dim: number of features ``D``.
        bias: learn the offset ``b``.
        permutation: optional fixed row permutation ``p`` (``(P y)_i = y_{p_i}``), e.g. a random
            one as in Glow; it makes the initial map that permutation instead of the identity.

    Shapes:
        ``(*batch, D) -> (*batch, D)``; ``ladj``: ``(*batch)``.

    Example:
        >>> layer = LULinear(4)
        >>> z, ladj = layer(torch.randn(10, 4))
        >>> torch.allclose(layer.inverse(z)[0], z)  # identity at initialisation
        True

    References:
        Kingma, Dhariwal, "Glow: Generative flow with invertible 1x1 convolutions", NeurIPS 2018.
    """

    def __init__(
        self, dim: int, bias: bool = True, permutation: Tensor | Sequence[int] | None = None
    ) -> None:
        dim = _dim("LULinear", dim)
        super().__init__((dim,))
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.register_buffer("eye", torch.eye(dim), persistent=False)
        if permutation is not None:
            perm = _check_permutation("LULinear", dim, permutation)
            self.register_buffer("row_perm", perm, persistent=False)
            self.register_buffer("row_perm_inv", torch.argsort(perm), persistent=False)
        else:
            self.row_perm = self.row_perm_inv = None

    def _factors(self) -> tuple[Tensor, Tensor]:
        L = self.lower.tril(-1) + self.eye
        U = self.upper.triu(1) + torch.diag_embed(self.log_diag.exp())
        return L, U

    def matrix(self) -> Tensor:
        """The matrix ``W = P L U`` of shape ``(D, D)``."""
        L, U = self._factors()
        W = L @ U
        return W if self.row_perm is None else W.index_select(0, self.row_perm)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z = F.linear(x, self.matrix(), self.bias)
        return z, self.log_diag.sum().expand(_batch(x, self.event_shape))

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = _batch(z, self.event_shape)
        y = z if self.bias is None else z - self.bias
        if self.row_perm_inv is not None:
            y = y.index_select(-1, self.row_perm_inv)
        L, U = self._factors()
        # Rows of y solve x L U = ... transposed: t L^T = y, then x U^T = t.
        y = y.reshape(-1, y.shape[-1])
        t = torch.linalg.solve_triangular(L.mT, y, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(U.mT, t, upper=False, left=False)
        return x.reshape(*batch, -1), (-self.log_diag.sum()).expand(batch)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", bias=False" if self.bias is None else "")


class ActNorm(Bijection):
    r"""Activation normalisation: per-feature (or per-channel) ``z = (x - loc) * exp(-log_scale)``.

    For vectors ``(D,)`` every feature has its own ``loc``/``log_scale``; for images ``(C, H, W)``
    (any ``(C, *spatial)``) every channel does. ``ladj = -sum(log_scale) * prod(spatial)``.

    Data-dependent initialisation: the first ``forward`` in training mode sets ``loc`` and
    ``log_scale`` to the batch's per-channel mean and log standard deviation (floored at ``1e-6``),
    so that batch comes out with zero mean and unit variance; call :meth:`initialize` to do it
    explicitly. The flag is a persistent buffer ``initialized``, so a saved and reloaded layer
    is not initialised again; a Python mirror of it keeps the hot path free of tensor reads.
    Both parameters stay trainable. Before initialisation the layer is the identity.

    Args:
        event_shape: ``D`` or ``(D,)`` for vectors, ``(C, H, W)`` for images.

    Example:
        >>> layer = ActNorm(3)
        >>> z, ladj = layer(torch.randn(256, 3) * 5 + 2)  # initialises: z has mean 0, std 1
        >>> bool(layer.initialized)
        True

    References:
        Kingma, Dhariwal, "Glow: Generative flow with invertible 1x1 convolutions", NeurIPS 2018.
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)
        if len(self.event_shape) == 0 or self.event_shape.numel() < 1:
            raise ValueError(f"ActNorm: expected a non-empty event shape, got {tuple(self.event_shape)}")
        shape = _param_shape(self.event_shape)
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False
        self._spatial = self.event_shape.numel() // self.event_shape[0]

    @torch.no_grad()
    def initialize(self, x: Tensor) -> ActNorm:
        """Set ``loc``/``log_scale`` so that ``x`` (``(*batch, *event_shape)``) is standardised
        per channel, and mark the layer initialised. Returns ``self``."""
        x, _ = self._prepare(x, None, self.event_shape)
        flat = _channels_last(x.detach(), self.event_shape)
        self.loc.copy_(flat.mean(0).view_as(self.loc))
        std = flat.var(0, unbiased=False).sqrt().clamp_min(1e-6)
        self.log_scale.copy_(std.log().view_as(self.log_scale))
        self.initialized.fill_(True)
        self._initialized = True
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and not self._initialized:
            self.initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        ladj = self.log_scale.sum() * -self._spatial
        return z, ladj.expand(_batch(x, self.event_shape))

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(self.log_scale) + self.loc
        ladj = self.log_scale.sum() * self._spatial
        return x, ladj.expand(_batch(z, self.event_shape))


class BatchNorm(Bijection):
    r"""Batch normalisation as a flow layer.

    .. math::
        z = \frac{x - \mu}{\sqrt{\max(\sigma^2, \epsilon)}}\, e^{\gamma} + \beta, \qquad
        \log|\det J| = \sum \Big(\gamma - \tfrac12 \log \max(\sigma^2, \epsilon)\Big),

    per feature (or per channel for ``(C, *spatial)`` events, the sum then counting every
    position). In training mode ``mu`` and ``sigma^2`` are the batch's mean and (biased)
    variance, treated as constants in the log-determinant as in the references, and the running
    averages are updated with ``momentum`` (unbiased variance); in eval mode the running
    averages are used. The inverse always uses the running averages, so the round trip is exact
    in **eval mode**. ``log_gamma`` and ``beta`` are trainable and start at zero and the running
    averages at ``(0, 1)``, so a fresh layer in eval mode is exactly the identity (``eps`` is a
    floor on the variance rather than an offset, which keeps that exact).

    Args:
        dim: number of features ``D`` (or an event shape ``(C, *spatial)``).
        momentum: weight of the current batch in the running averages, in ``(0, 1]``.
        eps: floor on the variance.

    Raises:
        ValueError: in training mode, for a batch with fewer than two values per channel.

    Example:
        >>> bn = BatchNorm(3)
        >>> z, ladj = bn(torch.randn(64, 3) * 4)  # training mode: z is standardised
        >>> x, _ = bn.eval().inverse(z)

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017 (Sec. 3.7).
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
        NeurIPS 2017 (appendix B).
    """

    def __init__(self, dim: Sequence[int] | int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in (0, 1], got {momentum!r}")
        if not float(eps) > 0.0:
            raise ValueError(f"BatchNorm: eps must be positive, got {eps!r}")
        super().__init__(dim)
        if len(self.event_shape) == 0 or self.event_shape.numel() < 1:
            raise ValueError(f"BatchNorm: expected a non-empty event shape, got {tuple(self.event_shape)}")
        self.momentum, self.eps = float(momentum), float(eps)
        shape = _param_shape(self.event_shape)
        self.log_gamma = nn.Parameter(torch.zeros(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self._spatial = self.event_shape.numel() // self.event_shape[0]

    def _batch_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = _channels_last(x, self.event_shape)
        n = flat.shape[0]
        if n < 2:
            raise ValueError(
                f"BatchNorm: training mode needs at least 2 values per channel, got batch shape "
                f"{tuple(_batch(x, self.event_shape))}; call .eval() to use the running statistics"
            )
        mean, var = flat.mean(0), flat.var(0, unbiased=False)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.lerp_(mean.detach().view_as(self.running_mean), m)
            self.running_var.lerp_(var.detach().view_as(self.running_var) * (n / (n - 1)), m)
        return mean.view_as(self.running_mean), var.view_as(self.running_var)

    def _log_scale(self, var: Tensor) -> Tensor:
        return self.log_gamma - 0.5 * torch.log(var.clamp_min(self.eps))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training:
            mean, var = self._batch_stats(x)
        else:
            mean, var = self.running_mean, self.running_var
        log_s = self._log_scale(var)
        z = (x - mean) * log_s.exp() + self.beta
        return z, (log_s.sum() * self._spatial).expand(_batch(x, self.event_shape))

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_s = self._log_scale(self.running_var)
        x = (z - self.beta) * torch.exp(-log_s) + self.running_mean
        return x, (log_s.sum() * -self._spatial).expand(_batch(z, self.event_shape))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}, eps={self.eps}"
