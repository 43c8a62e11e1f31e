"""Architectures with monotonic-network transformers: :class:`UMNNMAF` and :class:`NAF`.

Both are masked autoregressive by default (``coupling=False``), as in their papers: density
evaluation is one MADE pass per layer, sampling needs ``dim`` passes, each inverting the
transformer by bisection. With ``coupling=True`` they use alternating coupling layers instead
(both directions one conditioner pass; still a bisection for the inverse).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchnf.architectures.core import _check_dim, _check_layers, autoregressive_stack, coupling_stack
from torchnf.core import Bijection, Compose
from torchnf.transformers.base import Transformer
from torchnf.transformers.monotonic import UMNN, DeepSigmoid

__all__ = ["UMNNMAF", "NAF"]


def _stack(
    name: str,
    dim: int,
    transformer: Callable[[], Transformer],
    layers: int,
    context_dim: int,
    hidden: Sequence[int] | int,
    coupling: bool,
    residual_blocks: bool,
    activation: str,
) -> list[Bijection]:
    _check_layers(name, layers)
    if coupling:
        _check_dim(name, dim, 2)
        if residual_blocks:
            raise ValueError(f"{name}: residual_blocks applies to the autoregressive variant only")
        return coupling_stack(dim, transformer, layers, context_dim, hidden, activation)
    _check_dim(name, dim)
    return autoregressive_stack(dim, transformer, layers, context_dim, hidden, residual_blocks, activation)


class UMNNMAF(Compose):
    """UMNN-MAF: masked autoregressive layers whose transformer is a :class:`~torchnf.transformers.UMNN`.

    Each scalar is mapped by ``y = b + integral_0^x g(t) dt`` with a positive integrand network of
    width ``integrand_hidden`` whose weights the MADE predicts; orders alternate between layers.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional).
        layers: number of autoregressive (or coupling) layers.
        hidden: MADE (or coupling MLP) widths.
        integrand_hidden: width of the per-scalar integrand network.
        quadrature: number of Clenshaw-Curtis nodes.
        coupling: use coupling layers instead of MADE (default ``False``: autoregressive).
        residual_blocks: residual MADE (autoregressive variant only).
        activation: conditioner activation.
        bisection_tol: relative tolerance of the inverse (sampling).
        max_iter: cap on the bisection halvings.

    Example:
        >>> flow = nf.Flow(nf.UMNNMAF(3, layers=2, hidden=(32, 32)))
        >>> flow.log_prob(torch.randn(4, 3)).shape
        torch.Size([4])

    References:
        Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 5,
        hidden: Sequence[int] | int = (128, 128),
        integrand_hidden: int = 16,
        quadrature: int = 20,
        coupling: bool = False,
        residual_blocks: bool = False,
        activation: str = "relu",
        bisection_tol: float = 1e-10,
        max_iter: int = 120,
    ) -> None:
        def make() -> Transformer:
            return UMNN(integrand_hidden, quadrature, bisection_tol, max_iter)

        super().__init__(
            *_stack("UMNNMAF", dim, make, layers, context_dim, hidden, coupling, residual_blocks, activation)
        )


class NAF(Compose):
    """Neural autoregressive flow: MADE layers with deep sigmoidal transformers.

    The transformer is :class:`~torchnf.transformers.DeepSigmoid` (``sigmoid_layers`` blocks of
    ``sigmoid_units`` sigmoids per scalar, weights predicted by the MADE); orders alternate.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional).
        layers: number of autoregressive (or coupling) layers.
        hidden: MADE (or coupling MLP) widths.
        sigmoid_units: sigmoid units per DSF block.
        sigmoid_layers: stacked DSF blocks per transformer.
        coupling: use coupling layers instead of MADE (default ``False``: autoregressive).
        residual_blocks: residual MADE (autoregressive variant only).
        activation: conditioner activation.
        eps: weight of each DSF block's linear skip (tail slope floor).
        bisection_tol: relative tolerance of the inverse (sampling).
        max_iter: cap on the bisection halvings.

    Example:
        >>> flow = nf.Flow(nf.NAF(3, layers=2, hidden=(32, 32), sigmoid_units=4))
        >>> flow.log_prob(torch.randn(4, 3)).shape
        torch.Size([4])

    References:
        Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", ICML 2018.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 5,
        hidden: Sequence[int] | int = (128, 128),
        sigmoid_units: int = 8,
        sigmoid_layers: int = 1,
        coupling: bool = False,
        residual_blocks: bool = False,
        activation: str = "relu",
        eps: float = 1e-3,
        bisection_tol: float = 1e-10,
        max_iter: int = 120,
    ) -> None:
        def make() -> Transformer:
            return DeepSigmoid(sigmoid_units, sigmoid_layers, eps, bisection_tol, max_iter)

        super().__init__(
            *_stack("NAF", dim, make, layers, context_dim, hidden, coupling, residual_blocks, activation)
        )
