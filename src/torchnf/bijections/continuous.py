r"""Continuous normalizing flows (Neural ODE / FFJORD) through ``torchdiffeq``.

``torchdiffeq`` is an optional dependency (``pip install torchnf[ode]``); it is imported when a
:class:`ContinuousFlow` is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from torchnf.bijections.residual import _leaf, _rademacher, batched_jacobian
from torchnf.core import Bijection
from torchnf.nn import MLP

__all__ = ["ContinuousFlow"]

_TRACES = ("hutchinson", "exact")


def _torchdiffeq() -> ModuleType:
    try:
        return importlib.import_module("torchdiffeq")
    except ImportError:
        raise ImportError("FFJORD needs torchdiffeq: pip install torchnf[ode]") from None


class _LastCall:
    """Holds a value from the last call; deliberately not copied (``deepcopy``) nor pickled."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __deepcopy__(self, memo: dict) -> _LastCall:
        return _LastCall()

    def __reduce__(self) -> tuple[type, tuple]:
        return _LastCall, ()


class ContinuousFlow(Bijection):
    r"""Continuous normalizing flow (FFJORD): ``dz/dt = f(z, t, context)`` from ``t = 0`` to ``t1``.

    ``forward`` (data -> base) integrates :math:`z(0) = x` to :math:`z(t_1)`, ``inverse`` integrates
    back; both are one ODE solve (``fast_direction = "both"``). The log-determinant is integrated
    alongside the state (instantaneous change of variables):

    .. math:: \log\left|\det \frac{\partial z(t_1)}{\partial x}\right|
              = \int_0^{t_1} \operatorname{tr}\frac{\partial f}{\partial z}(z(t), t)\, dt,

    so ``log p(x) = log p_Z(z(t1)) + ladj`` and the inverse's ``ladj`` is the negative integral along
    the backward solve. The trace is

    * in training mode with ``trace="hutchinson"``: Hutchinson's estimate :math:`e^\top (\partial f/
      \partial z) e` with one Rademacher vector ``e`` per sample, fixed for the whole solve (one
      vector-Jacobian product per function evaluation; unbiased up to the solver's error);
    * in eval mode, or with ``trace="exact"``: exact, from the full Jacobian (the batch replicated ``D``
      times, one backward pass; cost ``~D`` times the Hutchinson one, so meant for moderate ``D``).

    ``f`` is an MLP on ``cat([z, t, context])`` whose last layer starts at zero, so the flow starts
    as the identity. ``adjoint=True`` backpropagates by solving the adjoint ODE (memory independent
    of the number of solver steps; the gradient then matches the discrete one to the tolerances).

    **Regularisation (RNODE).** With ``kinetic > 0`` or ``jacobian_norm > 0`` (training mode only)
    the integrals :math:`\int \|f\|^2 dt` and :math:`\int \|\partial f/\partial z\|_F^2 dt` (the latter
    estimated as :math:`\|e^\top \partial f/\partial z\|^2`, or exact with the exact trace) are
    integrated alongside. After each call, :attr:`regularization` holds ``kinetic * K +
    jacobian_norm * J`` per sample (shape ``(*batch)``, with a gradient; zeros when disabled or in
    eval). A training loop adds it to the loss::

        loss = -flow.log_prob(x).mean() + sum(m.regularization.mean() for m in flow.modules()
                                               if isinstance(m, nf.ContinuousFlow))

    The value is a per-call side output: it is not saved, copied, or part of the ``state_dict``.

    Shapes: ``x``, ``z`` ``(*batch, dim)``; ``context`` ``(*batch, context_dim)``; ``ladj`` ``(*batch)``.

    Args:
        dim: number of features ``D``.
        context_dim: size of the context, concatenated to the input of ``f``.
        hidden: hidden widths of ``f``.
        activation: activation of ``f`` (smooth ones: ``"tanh"``, ``"softplus"``, ``"elu"``, ``"silu"``).
        t1: integration time.
        solver: a ``torchdiffeq`` method (``"dopri5"``, ``"rk4"``, ...).
        atol: absolute tolerance of adaptive solvers (raised to ``8 * eps`` of the dtype if below).
        rtol: relative tolerance (same floor).
        step_size: step of fixed-grid solvers (``"rk4"``, ``"euler"``, ...).
        adjoint: backpropagate with the adjoint method.
        trace: ``"hutchinson"`` or ``"exact"``, the training-mode trace.
        kinetic: weight of the kinetic-energy regulariser.
        jacobian_norm: weight of the Jacobian Frobenius-norm regulariser.

    Example:
        >>> flow = nf.Flow(ContinuousFlow(2, hidden=(32, 32)))
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])

    References:
        Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018.
        Grathwohl et al., "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
        Models", ICLR 2019.
        Finlay et al., "How to train your neural ODE: the world of Jacobian and kinetic
        regularization" (RNODE), ICML 2020.
    """

    fast_direction = "both"

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "tanh",
        t1: float = 1.0,
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
        trace: str = "hutchinson",
        kinetic: float = 0.0,
        jacobian_norm: float = 0.0,
    ) -> None:
        name = type(self).__name__
        tde = _torchdiffeq()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{name}: dim must be an integer >= 1, got {dim!r}")
        solvers = getattr(importlib.import_module("torchdiffeq._impl.odeint"), "SOLVERS", None)
        if solvers is not None and solver not in solvers:
            raise ValueError(f"{name}: unknown solver {solver!r}; torchdiffeq offers {sorted(solvers)}")
        if trace not in _TRACES:
            raise ValueError(f"{name}: trace must be one of {_TRACES}, got {trace!r}")
        if not t1 > 0:
            raise ValueError(f"{name}: t1 must be > 0, got {t1}")
        if not (atol > 0 and rtol > 0):
            raise ValueError(f"{name}: atol and rtol must be > 0, got atol={atol}, rtol={rtol}")
        if kinetic < 0 or jacobian_norm < 0:
            raise ValueError(
                f"{name}: kinetic and jacobian_norm must be >= 0, got {kinetic} and {jacobian_norm}"
            )
        super().__init__((dim,), context_dim)
        self._odeint = tde.odeint_adjoint if adjoint else tde.odeint
        self.net = MLP(dim + 1 + self.context_dim, dim, hidden, activation)
        self.t1, self.solver, self.atol, self.rtol = float(t1), solver, float(atol), float(rtol)
        self.step_size, self.adjoint, self.trace = step_size, bool(adjoint), trace
        self.kinetic, self.jacobian_norm = float(kinetic), float(jacobian_norm)
        self._last = _LastCall()

    @property
    def regularization(self) -> Tensor | None:
        """``kinetic * K + jacobian_norm * J`` per sample from the last call (``None`` before any)."""
        return self._last.value

    def _dynamics(self, t: Tensor, z: Tensor, context: Tensor | None) -> Tensor:
        tt = t.to(z).expand(*z.shape[:-1], 1)
        return self.net(torch.cat([z, tt] if context is None else [z, tt, context], dim=-1))

    def _solve(self, x: Tensor, context: Tensor | None, t0: float, t1: float) -> tuple[Tensor, Tensor]:
        batch, dim = x.shape[:-1], self.event_shape[0]
        z0 = x.reshape(-1, dim)
        c = None if context is None else context.reshape(-1, self.context_dim)
        exact = not self.training or self.trace == "exact"
        regularize = self.training and (self.kinetic > 0 or self.jacobian_norm > 0)
        noise = None if exact else _rademacher(z0)

        def func(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            create = torch.is_grad_enabled()
            with torch.enable_grad():
                z = _leaf(state[0])
                if exact:
                    def dyn(zi: Tensor, *ci: Tensor) -> Tensor:
                        return self._dynamics(t, zi, ci[0] if ci else None)

                    rows = () if c is None else (c,)
                    jac, f = batched_jacobian(dyn, z, *rows, create_graph=create)
                    div = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
                    frob = jac.square().sum((-2, -1)) if regularize else None
                else:
                    f = self._dynamics(t, z, c)
                    ej = torch.autograd.grad(f, z, noise, create_graph=create)[0]
                    div = (ej * noise).sum(-1)
                    frob = ej.square().sum(-1) if regularize else None
            out = (f, div) if not regularize else (f, div, f.square().sum(-1), frob)
            return out if create else tuple(o.detach() for o in out)

        zeros = z0.new_zeros(z0.shape[0])
        state0 = (z0, zeros) + ((zeros, zeros) if regularize else ())
        times = torch.tensor([t0, t1], dtype=z0.dtype, device=z0.device)
        floor = 8 * torch.finfo(z0.dtype).eps
        kwargs: dict[str, Any] = {"rtol": max(self.rtol, floor), "atol": max(self.atol, floor),
                                  "method": self.solver}
        if self.step_size is not None:
            kwargs["options"] = {"step_size": self.step_size}
        if self.adjoint:
            params = tuple(self.parameters()) + ((c,) if c is not None and c.requires_grad else ())
            kwargs["adjoint_params"] = params
        final = [s[-1] for s in self._odeint(func, state0, times, **kwargs)]
        sign = 1.0 if t1 > t0 else -1.0
        if regularize:
            reg = (final[2] * self.kinetic + final[3] * self.jacobian_norm) * sign
        else:
            reg = zeros
        self._last.value = reg.reshape(batch)
        return final[0].reshape(x.shape), final[1].reshape(batch)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, 0.0, self.t1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._solve(z, context, self.t1, 0.0)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, t1={self.t1}, solver={self.solver!r}, trace={self.trace!r}, "
                f"adjoint={self.adjoint}")
