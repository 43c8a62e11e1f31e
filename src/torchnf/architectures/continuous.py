"""Continuous-flow architecture: :class:`FFJORD`, a stack of :class:`~torchnf.ContinuousFlow`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from torchnf.architectures.core import _check_dim
from torchnf.bijections.continuous import ContinuousFlow
from torchnf.core import Compose

__all__ = ["FFJORD"]


class FFJORD(Compose):
    """FFJORD: ``layers`` continuous normalizing flows (:class:`~torchnf.ContinuousFlow`) in sequence.

    Needs ``torchdiffeq`` (``pip install torchnf[ode]``). Training mode uses Hutchinson's trace
    (``trace="hutchinson"``), eval mode the exact one. With ``kinetic`` or ``jacobian_norm`` > 0 the
    RNODE penalties of the last call are in :attr:`regularization`; add its mean to the loss.

    Args:
        dim: number of features.
        context_dim: size of the context (0: unconditional), concatenated to the dynamics' input.
        layers: number of ODE blocks.
        hidden: hidden widths of each dynamics MLP.
        activation: its (smooth) activation.
        t1: integration time of each block.
        solver: ``torchdiffeq`` method.
        atol: absolute solver tolerance.
        rtol: relative solver tolerance.
        adjoint: backpropagate with the adjoint method.
        trace: training-mode trace, ``"hutchinson"`` or ``"exact"``.
        kinetic: weight of the kinetic-energy penalty.
        jacobian_norm: weight of the Jacobian Frobenius-norm penalty.
        **options: further :class:`~torchnf.ContinuousFlow` options (``step_size``).

    Example:
        >>> flow = nf.Flow(nf.FFJORD(2, hidden=(32, 32)))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])

    References:
        Grathwohl et al., "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
        Models", ICLR 2019.
        Finlay et al., "How to train your neural ODE: the world of Jacobian and kinetic
        regularization", ICML 2020.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int = 0,
        layers: int = 1,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "tanh",
        t1: float = 1.0,
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        adjoint: bool = False,
        trace: str = "hutchinson",
        kinetic: float = 0.0,
        jacobian_norm: float = 0.0,
        **options: Any,
    ) -> None:
        _check_dim("FFJORD", dim)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"FFJORD: layers must be an integer >= 1, got {layers!r}")
        super().__init__(*(
            ContinuousFlow(dim, context_dim, hidden, activation, t1, solver, atol, rtol, adjoint=adjoint,
                           trace=trace, kinetic=kinetic, jacobian_norm=jacobian_norm, **options)
            for _ in range(layers)
        ))

    @property
    def regularization(self) -> Tensor | None:
        """Sum over blocks of their RNODE penalties from the last call (``(*batch)``; ``None`` before)."""
        values = [b.regularization for b in self.bijections]
        if any(v is None for v in values):
            return None
        return sum(values[1:], values[0])
