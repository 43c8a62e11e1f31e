"""Free-form flows for variational inference: :class:`Planar`, :class:`Radial`, :class:`Sylvester`.

Each is a thin :class:`~torchnf.Compose` of ``layers`` layers of one kind. The papers use these
flows in the generative direction, which in torchnf is ``inverse``: sampling with
:meth:`Flow.rsample_and_log_prob` is one cheap pass per layer, while ``log_prob`` of external data
solves one root per layer (planar, Sylvester) or is closed form (radial).
"""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.architectures.core import _check_dim
from torchnf.bijections.elementwise import ElementwiseAffine
from torchnf.bijections.planar import PlanarLayer, RadialLayer
from torchnf.bijections.sylvester import SylvesterLayer
from torchnf.core import Compose

__all__ = ["Planar", "Radial", "Sylvester"]


def _check_layers(name: str, dim: int, layers: int) -> int:
    _check_dim(name, dim)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{name}: layers must be an integer >= 1, got {layers!r}")
    return layers


class _FreeformStack(Compose):
    """``layers`` copies of one layer class ``layer(dim, context_dim, hidden, activation)``."""

    layer: type[PlanarLayer] | type[RadialLayer]

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 16,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
        affine: bool = True,
    ) -> None:
        n = _check_layers(type(self).__name__, dim, layers)
        parts = [self.layer(dim, context_dim, hidden, activation) for _ in range(n)]
        super().__init__(*([ElementwiseAffine(dim)] if affine else []), *parts)


class Planar(_FreeformStack):
    """Stack of :class:`~torchnf.PlanarLayer` (sampling is cheap; ``log_prob`` solves ``layers`` 1-D roots).

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional); each layer's ``u, w, b`` are then
            offsets predicted by an MLP of the context.
        layers: number of planar layers (default 16).
        hidden: hidden widths of the context MLPs.
        activation: their activation.
        affine: start (data side) with a learned per-feature scale and shift
            (:class:`~torchnf.ElementwiseAffine`, identity at init). These layers cannot scale
            axes independently, which the papers leave to a learned diagonal-Gaussian base; with
            ``Flow``'s standard-normal base the affine layer plays that part.

    Example:
        >>> flow = nf.Flow(nf.Planar(2, layers=8))
        >>> x, log_q = flow.rsample_and_log_prob(16)

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
    """

    layer = PlanarLayer


class Radial(_FreeformStack):
    """Stack of :class:`~torchnf.RadialLayer` (closed form in both directions).

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional); each layer's ``z0, alpha, beta``
            are then offsets predicted by an MLP of the context.
        layers: number of radial layers (default 16).
        hidden: hidden widths of the context MLPs.
        activation: their activation.
        affine: start (data side) with a learned per-feature scale and shift
            (:class:`~torchnf.ElementwiseAffine`, identity at init). These layers cannot scale
            axes independently, which the papers leave to a learned diagonal-Gaussian base; with
            ``Flow``'s standard-normal base the affine layer plays that part.

    Example:
        >>> flow = nf.Flow(nf.Radial(2, layers=8))
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
    """

    layer = RadialLayer


class Sylvester(Compose):
    """Stack of :class:`~torchnf.SylvesterLayer` of one ``kind``.

    For ``kind="triangular"`` the layers alternate between the identity and the reversal
    permutation (``flip``), as in the paper, so that every coordinate conditions every other.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional); ``R``, ``R~`` and ``b`` are then
            offsets predicted by an MLP of the context.
        layers: number of Sylvester layers.
        hidden: hidden widths of the context MLPs.
        activation: their activation.
        affine: start (data side) with a learned per-feature scale and shift
            (:class:`~torchnf.ElementwiseAffine`, identity at init). These layers cannot scale
            axes independently, which the papers leave to a learned diagonal-Gaussian base; with
            ``Flow``'s standard-normal base the affine layer plays that part.
        kind: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        m: number of orthonormal columns per layer (default ``dim``).
        reflections: Householder reflections per layer for ``kind="householder"``.

    Example:
        >>> flow = nf.Flow(nf.Sylvester(3, layers=4, kind="householder"))
        >>> x, log_q = flow.rsample_and_log_prob(8)

    References:
        van den Berg et al., "Sylvester Normalizing Flows for Variational Inference", UAI 2018.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 8,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
        kind: str = "orthogonal",
        m: int | None = None,
        reflections: int | None = None,
        affine: bool = True,
    ) -> None:
        n = _check_layers("Sylvester", dim, layers)
        super().__init__(*([ElementwiseAffine(dim)] if affine else []), *(
            SylvesterLayer(
                dim, m, kind, context_dim, hidden, activation, reflections,
                flip=kind == "triangular" and i % 2 == 1,
            )
            for i in range(n)
        ))
