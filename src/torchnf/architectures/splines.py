"""Spline architectures: :class:`NSF`, :class:`LRSNSF` and :class:`ElementwiseSpline`.

Thin :class:`~torchnf.Compose` subclasses over :func:`~torchnf.architectures.core.coupling_stack`
and :func:`~torchnf.architectures.core.autoregressive_stack`. IAF-style variants (one pass to
sample, ``dim`` passes to evaluate a density) are their :class:`~torchnf.Inverse`, e.g.
``nf.Inverse(nf.NSF(4, coupling=False))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torchnf.architectures.core import _check_dim, _check_layers, autoregressive_stack, coupling_stack
from torchnf.bijections.elementwise import Elementwise
from torchnf.core import Compose
from torchnf.transformers.base import Transformer
from torchnf.transformers.circular import CircularSpline
from torchnf.transformers.linear_rational import LinearRationalSpline
from torchnf.transformers.splines import RationalQuadraticSpline

__all__ = ["NSF", "LRSNSF", "ElementwiseSpline"]


def _spline_stack(
    name: str,
    dim: int,
    transformer: Callable[[], Transformer],
    *,
    context_dim: int,
    layers: int,
    hidden: Sequence[int] | int,
    coupling: bool,
    activation: str,
    residual_blocks: bool,
    circular: bool = False,
) -> list:
    _check_layers(name, layers)
    if coupling:
        _check_dim(name, dim, 2)
        if residual_blocks:
            raise ValueError(f"{name}: residual_blocks needs the autoregressive variant (coupling=False)")
        return coupling_stack(dim, transformer, layers, context_dim, hidden, activation, circular=circular)
    _check_dim(name, dim)
    return autoregressive_stack(
        dim, transformer, layers, context_dim, hidden, residual_blocks, activation, circular=circular
    )


class NSF(Compose):
    r"""Neural spline flow: rational-quadratic spline transformers in coupling or MADE layers.

    Each of the ``layers`` transforms maps every transformed feature through a monotone
    rational-quadratic spline with ``bins`` bins on ``[-bound, bound]`` and identity tails
    (:class:`~torchnf.transformers.RationalQuadraticSpline`), its ``3 bins - 1`` parameters per
    feature predicted by the conditioner. ``coupling=True`` alternates the halves of the features
    between layers (``dim >= 2``; both directions one pass); ``coupling=False`` uses MADE
    conditioners with orders alternately reversed (density one pass, sampling ``dim`` passes).
    ``circular=True`` uses :class:`~torchnf.transformers.CircularSpline` (with a learnable
    rotation) for angle data on ``[-pi, pi)``; pair it with a uniform base on the torus.
    The IAF-style variant is ``nf.Inverse(nf.NSF(dim, coupling=False))``.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional).
        layers: number of coupling or autoregressive transforms.
        hidden: conditioner widths.
        bins: spline bins ``K``.
        bound: half-width ``B`` of the spline interval (ignored when ``circular``).
        coupling: coupling layers (``True``) or masked autoregressive layers (``False``).
        activation: conditioner activation name.
        circular: circular splines on ``[-pi, pi)`` for angles.
        residual_blocks: residual MADE blocks (autoregressive variant only).

    Example:
        >>> flow = nf.Flow(nf.NSF(2, layers=4, hidden=(64, 64)))
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])

        Dihedral angles ``(phi, psi)`` on the torus:

        >>> torus = nf.Flow(nf.NSF(2, circular=True), base=nf.UniformTorus(2))
        >>> angles = torus.sample(100)  # in [-pi, pi)^2

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019.
        Rezende et al., "Normalizing Flows on Tori and Spheres", ICML 2020 (circular splines).
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 5,
        hidden: Sequence[int] | int = (128, 128),
        bins: int = 8,
        bound: float = 5.0,
        coupling: bool = True,
        activation: str = "relu",
        circular: bool = False,
        residual_blocks: bool = False,
    ) -> None:
        if circular:
            make: Callable[[], Transformer] = partial(CircularSpline, bins, rotation=True)
        else:
            make = partial(RationalQuadraticSpline, bins, bound)
        super().__init__(*_spline_stack(
            type(self).__name__, dim, make, context_dim=context_dim, layers=layers, hidden=hidden,
            coupling=coupling, activation=activation, residual_blocks=residual_blocks, circular=circular,
        ))


class LRSNSF(Compose):
    r"""Neural spline flow with linear-rational splines (:class:`~torchnf.transformers.LinearRationalSpline`).

    Same structure and options as :class:`NSF`; each spline has ``4 bins - 1`` parameters per
    feature (an extra split point per bin) and an inverse as cheap as its forward.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional).
        layers: number of coupling or autoregressive transforms.
        hidden: conditioner widths.
        bins: spline bins ``K``.
        bound: half-width ``B`` of the spline interval.
        coupling: coupling layers (``True``) or masked autoregressive layers (``False``).
        activation: conditioner activation name.
        residual_blocks: residual MADE blocks (autoregressive variant only).

    Example:
        >>> flow = nf.Flow(nf.LRSNSF(3, layers=2, hidden=(32, 32), coupling=False))
        >>> flow.sample(4).shape
        torch.Size([4, 3])

    References:
        Dolatabadi, Erfani, Leckie, "Invertible Generative Modeling using Linear Rational
        Splines", AISTATS 2020.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 5,
        hidden: Sequence[int] | int = (128, 128),
        bins: int = 8,
        bound: float = 5.0,
        coupling: bool = True,
        activation: str = "relu",
        residual_blocks: bool = False,
    ) -> None:
        super().__init__(*_spline_stack(
            type(self).__name__, dim, partial(LinearRationalSpline, bins, bound), context_dim=context_dim,
            layers=layers, hidden=hidden,
            coupling=coupling, activation=activation, residual_blocks=residual_blocks,
        ))


class ElementwiseSpline(Elementwise):
    r"""A rational-quadratic spline on every feature, with free or context-predicted parameters.

    Without context each feature has its own learnable spline (initialised at the identity);
    with ``context_dim > 0`` an MLP maps the context to the spline parameters. Usable anywhere in
    a :class:`~torchnf.Compose`, e.g. as a learned marginal transform before a coupling stack,
    or on its own for one-dimensional data.

    Args:
        dim: number of features (or an event shape).
        bins: spline bins ``K``.
        bound: half-width ``B`` of the spline interval; identity outside.
        context_dim: size of the context (0: free parameters).
        hidden: hidden widths of the context MLP.
        activation: its activation.

    Example:
        >>> flow = nf.Flow(nf.ElementwiseSpline(1, bins=16))
        >>> flow.log_prob(torch.randn(8, 1)).shape
        torch.Size([8])

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019.
    """

    def __init__(
        self,
        dim: int | Sequence[int],
        bins: int = 8,
        bound: float = 5.0,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__(RationalQuadraticSpline(bins, bound), dim, context_dim, hidden, activation)
