"""Core architectures (NICE, RealNVP, MAF, IAF) and the shared builders.

Architectures are thin :class:`~torchnf.Compose` subclasses that wire parts together.

Every architecture has the same signature shape, so swapping one for another is one word::

    Arch(dim, *, context_dim=0, layers=..., hidden=(...), **family_options)

``layers`` counts transforms (coupling or autoregressive steps), not the permutations or
normalisations between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from torchnf.bijections.autoregressive import MaskedAutoregressive
from torchnf.bijections.coupling import Coupling, default_mask
from torchnf.bijections.elementwise import Elementwise
from torchnf.core import Bijection, Compose, Inverse
from torchnf.transformers.affine import Affine, Shift
from torchnf.transformers.base import Transformer

__all__ = ["NICE", "RealNVP", "MAF", "IAF", "coupling_stack", "autoregressive_stack"]


def _check_dim(name: str, dim: int, minimum: int = 1) -> int:
    if not isinstance(dim, int) or dim < minimum:
        extra = " (coupling needs two or more features; use MAF)" if minimum == 2 else ""
        raise ValueError(f"{name}: dim must be an integer >= {minimum}, got {dim!r}{extra}")
    return dim


def _check_layers(name: str, layers: int) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{name}: layers must be an integer >= 1, got {layers!r}")
    return layers


def coupling_stack(
    dim: int,
    transformer: Callable[[], Transformer],
    layers: int,
    context_dim: int = 0,
    hidden: Sequence[int] | int = (128, 128),
    activation: str = "relu",
    circular: bool = False,
) -> list[Bijection]:
    """``layers`` coupling layers whose masks alternate between the two halves of the features."""
    return [
        Coupling(transformer(), default_mask(dim, flip=i % 2 == 1), context_dim, hidden, activation,
                 circular=circular)
        for i in range(layers)
    ]


def autoregressive_stack(
    dim: int,
    transformer: Callable[[], Transformer],
    layers: int,
    context_dim: int = 0,
    hidden: Sequence[int] | int = (128, 128),
    residual_blocks: bool = False,
    activation: str = "relu",
    inverse: bool = False,
    circular: bool = False,
) -> list[Bijection]:
    """``layers`` MADE layers whose orders alternate between identity and reversed (no permutation
    layers needed); wrapped in :class:`~torchnf.Inverse` when ``inverse`` (IAF-style)."""
    out: list[Bijection] = []
    for i in range(layers):
        order = torch.arange(dim) if i % 2 == 0 else torch.arange(dim).flip(0)
        b: Bijection = MaskedAutoregressive(
            transformer(), dim, order, context_dim, hidden, residual_blocks, activation, circular=circular
        )
        out.append(Inverse(b) if inverse else b)
    return out


class NICE(Compose):
    """NICE: additive coupling layers and a final learned diagonal scaling.

    Example:
        >>> flow = nf.Flow(nf.NICE(4, layers=4, hidden=(64, 64)))

    References:
        Dinh, Krueger, Bengio, "NICE: Non-linear Independent Components Estimation", 2015.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 4,
        hidden: Sequence[int] | int = (128, 128),
        activation: str = "relu",
    ) -> None:
        _check_layers("NICE", layers)
        _check_dim("NICE", dim, 2)
        parts = coupling_stack(dim, Shift, layers, context_dim, hidden, activation)
        super().__init__(*parts, Elementwise(Affine(), dim))


class RealNVP(Compose):
    """RealNVP: affine coupling layers with alternating masks.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional).
        layers: number of coupling layers.
        hidden: conditioner MLP widths.
        activation: conditioner activation.
        scale_bound: bound on each layer's log-scale (see :class:`~torchnf.transformers.Affine`).

    Example:
        >>> flow = nf.Flow(nf.RealNVP(2))
        >>> flow.sample(3).shape
        torch.Size([3, 2])

    References:
        Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 8,
        hidden: Sequence[int] | int = (128, 128),
        activation: str = "relu",
        scale_bound: float = 3.0,
    ) -> None:
        _check_layers("RealNVP", layers)
        _check_dim("RealNVP", dim, 2)
        parts = coupling_stack(dim, lambda: Affine(scale_bound), layers, context_dim, hidden, activation)
        super().__init__(*parts)


class _AffineAutoregressive(Compose):
    """Affine MADE layers with alternating orders; ``_invert_layers`` wraps each in :class:`Inverse` (IAF)."""

    _invert_layers = False

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 5,
        hidden: Sequence[int] | int = (128, 128),
        residual_blocks: bool = False,
        activation: str = "relu",
        scale_bound: float = 3.0,
    ) -> None:
        name = type(self).__name__
        _check_layers(name, layers)
        _check_dim(name, dim)
        parts = autoregressive_stack(
            dim, lambda: Affine(scale_bound), layers, context_dim, hidden, residual_blocks, activation,
            inverse=self._invert_layers,
        )
        super().__init__(*parts)


class MAF(_AffineAutoregressive):
    """Masked autoregressive flow: affine MADE layers, orders alternately reversed.

    Density evaluation (``forward``) is one pass per layer; sampling needs ``dim`` passes.

    Example:
        >>> flow = nf.Flow(nf.MAF(3, layers=2, hidden=(32, 32)))
        >>> flow.log_prob(torch.randn(4, 3)).shape
        torch.Size([4])

    References:
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation", 2017.
    """


class IAF(_AffineAutoregressive):
    """Inverse autoregressive flow: the :class:`~torchnf.Inverse` of affine MADE layers.

    Sampling (``inverse``) is one pass per layer, which suits variational inference; density
    evaluation of external data needs ``dim`` passes.

    Example:
        >>> flow = nf.Flow(nf.IAF(3, layers=2, hidden=(32, 32)))
        >>> x, log_q = flow.sample_and_log_prob(10)

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", 2016.
    """

    _invert_layers = True
