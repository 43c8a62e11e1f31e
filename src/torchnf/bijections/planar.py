r"""Planar and radial flows (Rezende & Mohamed 2015): :class:`PlanarLayer`, :class:`RadialLayer`.

Both are written in the papers as a *generative* map ``g`` from the base space to the data. In
torchnf ``forward`` maps data to the base, so ``forward = g^{-1}`` and ``inverse = g``:

* planar: ``inverse`` (sampling) is one cheap pass; ``forward`` (density of given data) solves one
  scalar monotone equation per point along ``w`` by safeguarded Newton iteration
  (``fast_direction = "inverse"``);
* radial: ``g^{-1}`` has a closed form through a quadratic in the radius, so both directions are
  one pass (``fast_direction = "both"``).

Parameters are free, or, with ``context_dim > 0``, free offsets plus the output of an MLP of the
context whose last layer starts at zero, so every layer starts at the identity for every context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.bijections.orthogonal import _check_dim
from torchnf.core import Bijection
from torchnf.nn import MLP

__all__ = ["PlanarLayer", "RadialLayer"]

_FLOOR = 1e-6  # keeps constrained quantities strictly away from their bound
_UNIT_SHIFT = math.log(math.expm1(1.0 - _FLOOR))  # softplus(_UNIT_SHIFT) + _FLOOR == 1


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


class _ContextParams(Bijection):
    """A layer whose raw parameter vector is ``params + MLP(context)`` (just ``params`` without context)."""

    def _init_params(
        self, init: Tensor, context_dim: int, hidden: Sequence[int] | int, activation: str
    ) -> None:
        self.params = nn.Parameter(init)
        self.net = MLP(context_dim, init.numel(), hidden, activation) if context_dim else None

    def _raw(self, context: Tensor | None) -> Tensor:
        """``(n,)`` without context, ``(*batch, n)`` with one."""
        if context is None or self.net is None:
            return self.params
        return self.params + self.net(context)


def _check_solver(name: str, tol: float, max_iter: int) -> tuple[float, int]:
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"{name}: tol must be a number in (0, 1), got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{name}: max_iter must be an integer >= 1, got {max_iter!r}")
    return float(tol), max_iter


def tanh_slope(t: Tensor, q: Tensor) -> Tensor:
    r"""``1 + c k (1 - t^2)`` written as ``t^2 + q (1 - t^2)`` with ``q = 1 + c k > 0``.

    Both terms are non-negative, so the result is positive and free of cancellation even when
    ``c k`` is close to ``-1``.
    """
    t2 = t * t
    return t2 + q * (1 - t2)


def solve_tanh_root(
    target: Tensor, c: Tensor, k: Tensor, p: Tensor, q: Tensor, *, tol: float, max_iter: int, owner: str
) -> Tensor:
    r"""Solve :math:`x + c \tanh(k x + p) = y` elementwise, without gradient.

    The left side is strictly increasing when ``q = 1 + c k > 0`` (its slope is
    :func:`tanh_slope`), and ``|tanh| <= 1`` brackets the root in ``[y - |c|, y + |c|]``. Each
    iteration shrinks the bracket to the current point and takes a Newton step if it lands inside
    the bracket and is at most half the previous step; otherwise it bisects (so the bracket at least
    halves every other iteration and plain Newton's oscillation across a steep ``tanh`` cannot
    happen). It stops when every Newton step or bracket is below ``tol * (1 + |x|)`` (``tol`` is
    raised to ``8 eps`` of the dtype if smaller).

    Raises:
        RuntimeError: if some entry has not converged after ``max_iter`` iterations.
    """
    with torch.no_grad():
        target, c, k, p, q = (t.detach() for t in torch.broadcast_tensors(target, c, k, p, q))
        tol = max(tol, 8 * torch.finfo(target.dtype).eps)
        lo, hi = target - c.abs(), target + c.abs()
        x = target - c * torch.tanh(k * target + p)  # one fixed-point step: inside the bracket
        step_old = hi - lo
        for _ in range(max_iter):
            t = torch.tanh(k * x + p)
            g = x + c * t - target
            lo = torch.where(g < 0, x, lo)
            hi = torch.where(g > 0, x, hi)
            step = g / tanh_slope(t, q)
            newton = x - step
            scale = tol * (1 + x.abs())
            small = step.abs() <= scale
            # Bisect when Newton leaves the bracket or does not at least halve the step before last.
            bisect = ~((newton > lo) & (newton < hi)) | (step.abs() > 0.5 * step_old.abs())
            bisect = bisect & ~small
            step_old = torch.where(bisect, 0.5 * (hi - lo), step)
            x = torch.where(bisect, 0.5 * (lo + hi), newton)
            done = small | (hi - lo <= scale)
            if bool(done.all()):
                return x
        res = (x + c * torch.tanh(k * x + p) - target).abs()
        raise RuntimeError(
            f"{owner}: the root solve of forward (data to base) did not converge in {max_iter} "
            f"iterations ({int((~done).sum())} of {done.numel()} points above tol={tol:g}, max "
            f"residual {float(res.max()):.3g}); raise max_iter or tol"
        )


# --------------------------------------------------------------------------------------------
# Planar
# --------------------------------------------------------------------------------------------


class PlanarLayer(_ContextParams):
    r"""Planar flow layer, invertible by construction.

    The generative map (``inverse`` here, the cheap direction) is

    .. math::
        x = g(z) = z + \hat u \tanh(w^T z + b), \qquad
        \hat u = u + \bigl(m(w^T u) - w^T u\bigr) \frac{w}{\lVert w\rVert^2}, \quad
        m(a) = -1 + \epsilon + \operatorname{softplus}(a + c_0),

    so :math:`w^T \hat u = m(w^T u) > -1` for any raw ``u, w`` and ``g`` is strictly monotone along
    ``w``. This is the paper's :math:`m(a) = -1 + \operatorname{softplus}(a)`, shifted by
    :math:`c_0 = \log(e^{1 - \epsilon} - 1)` so that :math:`m(0) = 0` (``u = 0`` is the identity),
    with a floor :math:`\epsilon = 10^{-6}` that keeps :math:`w^T\hat u > -1` even when the
    softplus underflows. The log-determinant (matrix determinant lemma), with
    :math:`t = \tanh(w^T z + b)` and :math:`s = 1 + w^T\hat u > 0`:

    .. math::
        \log\lvert\det \partial x/\partial z\rvert = \log\bigl(1 + (1 - t^2)\, w^T\hat u\bigr)
        = \log\bigl(t^2 + (1 - t^2)\, s\bigr).

    ``forward`` (data to base) projects onto ``w``: :math:`\alpha = w^T z` solves the scalar
    increasing equation :math:`\alpha + (w^T\hat u)\tanh(\alpha + b) = w^T x`, found by
    safeguarded Newton iteration (:func:`solve_tanh_root`, tolerance ``tol``, at most ``max_iter``
    iterations, ``RuntimeError`` otherwise); then :math:`z = x - \hat u \tanh(\alpha + b)`.
    Gradients flow by one Newton step from the detached root (implicit differentiation), not
    through the iterations.
    The convergence test reads a tensor on the host, so ``forward`` does not compile with
    ``fullgraph=True``; ``inverse`` (sampling) does.

    Identity at initialisation: ``u = 0`` and ``b = 0``, so :math:`\hat u = 0`; ``w`` is random
    with :math:`\lVert w\rVert \approx 1` (so the first gradient step in ``u`` is informative).
    With a context, ``(u, w, b)`` are these free values plus an MLP of the
    context (zero-initialised last layer).

    Shapes: ``x``, ``z``: ``(*batch, D)``; context ``(*batch, context_dim)``; ``ladj``: ``(*batch)``.

    Args:
        dim: number of features ``D``.
        context_dim: size of the context (0: unconditional).
        hidden: hidden widths of the context MLP.
        activation: its activation.
        tol: relative tolerance of the ``forward`` root solve.
        max_iter: iteration cap of the ``forward`` root solve.

    Example:
        >>> layer = PlanarLayer(2)
        >>> x, ladj = layer.inverse(torch.randn(5, 2))   # cheap: sampling direction
        >>> z, ladj = layer(x)                           # root solve along w

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015 (Appendix A).
    """

    fast_direction = "inverse"

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
        tol: float = 1e-12,
        max_iter: int = 100,
    ) -> None:
        _check_dim("PlanarLayer", dim)
        super().__init__((dim,), context_dim)
        self.tol, self.max_iter = _check_solver("PlanarLayer", tol, max_iter)
        w = torch.randn(dim) / math.sqrt(dim)
        self._init_params(torch.cat([torch.zeros(dim), w, torch.zeros(1)]), context_dim, hidden, activation)

    def constrained(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Constrained parameters ``(u_hat, w, b, s)`` with ``s = 1 + w^T u_hat > 0``.

        Shapes ``(D,)``, ``(D,)``, ``()``, ``()`` without context; with one, the context's batch
        shape is prepended.
        """
        d = self.event_shape[0]
        raw = self._raw(context)
        u, w, b = raw[..., :d], raw[..., d : 2 * d], raw[..., 2 * d]
        a = (w * u).sum(-1)
        s = F.softplus(a + _UNIT_SHIFT) + _FLOOR
        norm2 = w.square().sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
        u_hat = u + ((s - 1 - a) / norm2).unsqueeze(-1) * w
        return u_hat, w, b, s

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, s = self.constrained(context)
        t = torch.tanh((w * z).sum(-1) + b)
        x = z + t.unsqueeze(-1) * u_hat
        return x, tanh_slope(t, s).log()

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, s = self.constrained(context)
        wx = (w * x).sum(-1)
        c = s - 1  # = w^T u_hat
        one = torch.ones_like(c)
        alpha = solve_tanh_root(
            wx, c, one, b, s, tol=self.tol, max_iter=self.max_iter, owner=type(self).__name__
        )
        t = torch.tanh(alpha + b)
        alpha = alpha - (alpha + c * t - wx) / tanh_slope(t, s).detach()  # implicit gradient
        t = torch.tanh(alpha + b)
        z = x - t.unsqueeze(-1) * u_hat
        return z, -tanh_slope(t, s).log()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tol={self.tol:g}, max_iter={self.max_iter}"


# --------------------------------------------------------------------------------------------
# Radial
# --------------------------------------------------------------------------------------------


class RadialLayer(_ContextParams):
    r"""Radial flow layer with the constraint :math:`\beta \ge -\alpha`; closed form both ways.

    The generative map (``inverse`` here), with :math:`r = \lVert z - z_0\rVert`:

    .. math::
        x = g(z) = z + \beta\, h(\alpha, r)\,(z - z_0), \qquad h = \frac{1}{\alpha + r},
        \qquad \alpha = \operatorname{softplus}(a) + \epsilon, \quad
        \beta = -\alpha + \operatorname{softplus}(c) + \epsilon.

    With :math:`q = \alpha + \beta > 0`, :math:`x - z_0 = (z - z_0)(r + q)/(\alpha + r)`: the
    direction is kept and the radius :math:`\rho = r (r + q)/(\alpha + r)` is strictly increasing
    in ``r``. The log-determinant is

    .. math::
        (D - 1)\log\frac{r + q}{\alpha + r} + \log\frac{r^2 + 2\alpha r + q\alpha}{(\alpha + r)^2}.

    ``forward`` (data to base) inverts the radius in closed form: ``r`` is the non-negative root of
    :math:`r^2 + (q - \rho) r - \rho\alpha = 0`, computed without cancellation
    (:math:`2C/(B + \sqrt{B^2 + 4C})` when :math:`B = q - \rho > 0`, else
    :math:`(\sqrt{B^2 + 4C} - B)/2`, :math:`C = \rho\alpha`), then
    :math:`z = z_0 + (x - z_0)(\alpha + r)/(r + q)`. Both directions are one pass
    (``fast_direction = "both"``). ``epsilon = 1e-6`` keeps ``alpha`` and ``q`` away from zero.

    Identity at initialisation: ``a = c`` (so :math:`\beta = 0` exactly), ``z0 = 0``,
    :math:`\alpha = 1`. With a context, ``(z0, a, c)`` are these free values plus an MLP of the
    context (zero-initialised last layer).

    Shapes: ``x``, ``z``: ``(*batch, D)``; context ``(*batch, context_dim)``; ``ladj``: ``(*batch)``.

    Args:
        dim: number of features ``D``.
        context_dim: size of the context (0: unconditional).
        hidden: hidden widths of the context MLP.
        activation: its activation.

    Example:
        >>> layer = RadialLayer(2)
        >>> z, ladj = layer(torch.randn(5, 2))

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015 (Appendix A).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
    ) -> None:
        _check_dim("RadialLayer", dim)
        super().__init__((dim,), context_dim)
        init = torch.cat([torch.zeros(dim), torch.full((2,), _UNIT_SHIFT)])
        self._init_params(init, context_dim, hidden, activation)

    def constrained(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Constrained ``(z0, alpha, beta, q)`` with ``q = alpha + beta > 0`` (computed directly).

        Shapes ``(D,)``, ``()``, ``()``, ``()`` without context; with one, the context's batch shape
        is prepended.
        """
        d = self.event_shape[0]
        raw = self._raw(context)
        z0 = raw[..., :d]
        alpha = F.softplus(raw[..., d]) + _FLOOR
        q = F.softplus(raw[..., d + 1]) + _FLOOR
        return z0, alpha, q - alpha, q

    def _log_det(self, r: Tensor, alpha: Tensor, q: Tensor) -> Tensor:
        """``log|det dg/dz|`` at radius ``r = |z - z0|``."""
        ar = alpha + r
        d = self.event_shape[0]
        radial = (r * (r + 2 * alpha) + q * alpha).log() - 2 * ar.log()
        return radial + (d - 1) * ((r + q).log() - ar.log()) if d > 1 else radial

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z0, alpha, _, q = self.constrained(context)
        diff = z - z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        x = z0 + diff * ((r + q) / (alpha + r)).unsqueeze(-1)
        return x, self._log_det(r, alpha, q)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z0, alpha, _, q = self.constrained(context)
        diff = x - z0
        rho = torch.linalg.vector_norm(diff, dim=-1)
        big_b, big_c = q - rho, rho * alpha
        root = torch.sqrt(big_b * big_b + 4 * big_c)
        mag = big_b.abs() + root
        tiny = torch.finfo(mag.dtype).tiny
        r = torch.where(big_b > 0, 2 * big_c / mag.clamp_min(tiny), 0.5 * mag)
        z = z0 + diff * ((alpha + r) / (r + q)).unsqueeze(-1)
        return z, -self._log_det(r, alpha, q)
