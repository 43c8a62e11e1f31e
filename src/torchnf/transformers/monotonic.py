r"""Monotonic-network transformers: :class:`UMNN` (integral of a positive network) and
:class:`DeepSigmoid` (NAF's deep sigmoidal flow).

Both are *hyper-networks*: the conditioner predicts, for every scalar, the weights of a tiny
one-dimensional monotone network. Neither has a closed-form inverse; both invert by bisection on a
bracket that provably contains the root, to a stated tolerance and under an iteration cap, and
attach gradients to the result by one implicit-function (Newton) step, so gradients never flow
through the bisection loop:

.. math::
    x = x^\star - \frac{F(x^\star) - y}{F'(x^\star)}, \qquad x^\star \text{ detached},

which gives exact first-order derivatives ``dx/dy = 1 / F'(x)`` and
``dx/dtheta = -(dF/dtheta) / F'(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.core import all_finite
from torchnf.transformers.base import Transformer

__all__ = ["UMNN", "DeepSigmoid", "clenshaw_curtis", "bisect"]

_MAX_GROWTH = 64
_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(_SOFTPLUS_ONE) == 1


def clenshaw_curtis(n: int) -> tuple[Tensor, Tensor]:
    r"""Clenshaw-Curtis nodes and weights on ``[-1, 1]`` with ``n >= 2`` nodes, in float64.

    Nodes :math:`s_k = \cos(k\pi/m)`, ``k = 0..m`` with ``m = n - 1``; the rule integrates
    polynomials of degree ``m`` exactly and all weights are positive (they sum to 2).

    Example:
        >>> s, w = clenshaw_curtis(3)  # Simpson's rule: w = (1/3, 4/3, 1/3)
    """
    if n < 2:
        raise ValueError(f"clenshaw_curtis: need at least 2 nodes, got {n}")
    m = n - 1
    k = torch.arange(n, dtype=torch.float64)
    theta = k * math.pi / m
    j = torch.arange(1, m // 2 + 1, dtype=torch.float64)
    one, two = torch.ones((), dtype=torch.float64), torch.full((), 2.0, dtype=torch.float64)
    b = torch.where(2 * j == m, one, two)
    series = (b / (4 * j**2 - 1) * torch.cos(2 * j[:, None] * theta[None, :]).T).sum(-1)
    c = torch.where((k == 0) | (k == m), one, two)
    return torch.cos(theta), c / m * (1 - series)


def bisect(
    fn: Callable[[Tensor], Tensor],
    y: Tensor,
    lo: Tensor,
    hi: Tensor,
    tol: float,
    max_iter: int,
    owner: str,
) -> Tensor:
    """Solve ``fn(x) = y`` elementwise for an increasing ``fn``, starting from a bracket ``[lo, hi]``.

    Runs without gradients. First the bracket is grown from its tails (each failing end moves out
    by the bracket's width) until ``fn(lo) <= y <= fn(hi)`` everywhere; callers pass a bracket
    that already contains the root whenever they can, so this usually costs one check. Then it is
    halved until ``hi - lo <= tol * max(1, |x|)`` everywhere, with ``tol`` floored at 8 machine
    epsilons of the dtype (a float32 bracket cannot shrink further). The number of halvings is
    computed once from the widest bracket (no per-step synchronisation) and capped at
    ``max_iter``. A bracket that cannot be grown to contain the target, a bracket still too wide
    after ``max_iter`` halvings, or a non-finite target raises ``RuntimeError`` naming ``owner``.
    Under ``torch.compile`` the bracket is trusted, the loop runs ``max_iter`` halvings and the
    checks are skipped.

    Returns the bracket midpoints.
    """
    tol = max(float(tol), 8 * torch.finfo(y.dtype).eps)
    with torch.no_grad():
        compiling = torch.compiler.is_compiling()
        if compiling:
            n = max_iter
        else:
            if not all_finite(y):
                raise RuntimeError(f"{owner}: cannot invert a non-finite input (NaN or inf)")
            for _ in range(_MAX_GROWTH + 1):
                low, high = fn(lo) > y, fn(hi) < y
                if not bool((low | high).any()):
                    break
                width = hi - lo
                lo, hi = torch.where(low, lo - width, lo), torch.where(high, hi + width, hi)
            else:
                raise RuntimeError(
                    f"{owner}: could not bracket the inverse within {_MAX_GROWTH} doublings of the "
                    "search interval (is the map bounded?)"
                )
            widest = float((hi - lo).max()) if y.numel() else 0.0
            n = min(max(math.ceil(math.log2(widest / tol)), 0), max_iter) if widest > tol else 0
        for _ in range(n):
            mid = lo + (hi - lo) * 0.5
            right = fn(mid) < y
            lo = torch.where(right, mid, lo)
            hi = torch.where(right, hi, mid)
        x = lo + (hi - lo) * 0.5
        if not compiling and not bool(((hi - lo) <= tol * x.abs().clamp(min=1.0)).all()):
            raise RuntimeError(
                f"{owner}: bisection did not reach the tolerance {tol:.3g} within max_iter="
                f"{max_iter} halvings (widest remaining bracket {float((hi - lo).max()):.3g}); "
                "raise max_iter or the tolerance"
            )
    return x


def _check_positive_int(owner: str, name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_iteration(owner: str, tol: float, max_iter: int) -> None:
    if not tol > 0:
        raise ValueError(f"{owner}: bisection_tol must be positive, got {tol!r}")
    _check_positive_int(owner, "max_iter", max_iter)


class UMNN(Transformer):
    r"""Unconstrained monotonic neural network: ``y = b + integral_0^x g(t) dt`` with ``g > 0``.

    The integrand is a one-hidden-layer network of width ``H = hidden`` per scalar,

    .. math::
        h(t) = \sum_{j=1}^H v_j \sigma(u_j t + c_j) + d, \qquad
        g(t) = \epsilon + (1 - \epsilon)\,\mathrm{softplus}(h(t) + \log(e - 1)) \ge \epsilon,

    whose weights ``(u, c, v, d)`` and the offset ``b`` are the transformer's parameters:
    ``param_shape = (3H + 2,)``, laid out ``[u (H), c (H), v (H), d, b]``; ``epsilon =
    min_slope``. The integrand is analytic (softplus rather than the paper's ``elu + 1``, whose
    second derivative jumps and slows the quadrature to algebraic convergence; sigmoid rather
    than tanh units, which cost several times more on CPU). The integral uses Clenshaw-Curtis
    quadrature with ``quadrature`` nodes, evaluated for all scalars at once on
    ``(*batch, D, quadrature)`` points (detached from ``x``: ``dy/dx`` comes from ``g(x)``). The
    log-derivative is exact, ``log dy/dx = log g(x)`` (accurate since ``g >= epsilon`` involves
    no cancellation), and autograd's ``dy/dx`` equals ``g(x)`` exactly; the value of ``y``
    carries the quadrature error, which falls geometrically with the number of nodes (about 1e-6
    relative with 20 nodes and 1e-11 with 40 for hidden slopes ``|u x|`` up to about 10;
    steeper integrands need more nodes).

    Tails: the sigmoid units are bounded, so ``g`` lies in ``[g(d + sum_j min(v_j, 0)),
    g(d + sum_j max(v_j, 0))]`` and the map is
    asymptotically linear on both sides, a bijection of the real line. These bounds also give the
    bracket of the inverse's bisection, which contains the root by construction (the positive
    quadrature weights keep the computed integral within the same bounds). The floor
    ``epsilon`` keeps that bracket finite and the map invertible in floating point even where
    the softplus underflows.

    Identity: ``v = d = b = 0`` gives ``g = 1``, ``y = x``. The identity parameters keep
    ``u = 1`` and spread ``c`` over ``[-3, 3]`` so hidden units start distinct and trainable.

    Fast direction: forward (one quadrature); the inverse is bisection (about
    ``log2(bracket / tol)`` quadratures, typically 40) plus one Newton step for gradients.

    Args:
        hidden: width ``H`` of the integrand network.
        quadrature: number of Clenshaw-Curtis nodes (>= 2).
        bisection_tol: relative tolerance of the inverse (see :func:`bisect`).
        max_iter: cap on the number of bisection halvings.
        min_slope: floor ``epsilon`` of the integrand, in ``(0, 1)``.

    Example:
        >>> t = UMNN(hidden=8)
        >>> params = t.identity_params().expand(5, -1)
        >>> y, ladj = t.forward(torch.randn(5), params)  # identity: y == x, ladj == 0

    References:
        Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019.
        Clenshaw & Curtis, "A method for numerical integration on an automatic computer", 1960.
    """

    def __init__(
        self,
        hidden: int = 16,
        quadrature: int = 20,
        bisection_tol: float = 1e-10,
        max_iter: int = 120,
        min_slope: float = 1e-3,
    ) -> None:
        self.hidden = _check_positive_int("UMNN", "hidden", hidden)
        self.quadrature = _check_positive_int("UMNN", "quadrature", quadrature, 2)
        _check_iteration("UMNN", bisection_tol, max_iter)
        if not 0 < min_slope < 1:
            raise ValueError(f"UMNN: min_slope must lie in (0, 1), got {min_slope!r}")
        self.bisection_tol, self.max_iter = float(bisection_tol), int(max_iter)
        self.min_slope = float(min_slope)
        self.param_shape = (3 * hidden + 2,)
        nodes, weights = clenshaw_curtis(quadrature)
        # integral_0^x g = x * sum_k w_k g(x * t_k) with t_k = (s_k + 1) / 2 and w_k halved.
        self._t, self._w = (nodes + 1) / 2, weights / 2

    def identity_params(self) -> Tensor:
        H = self.hidden
        return torch.cat([torch.ones(H), torch.linspace(-3.0, 3.0, H), torch.zeros(H + 2)])

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        H = self.hidden
        u, c, v = params[..., :H], params[..., H : 2 * H], params[..., 2 * H : 3 * H]
        return u, c, v, params[..., 3 * H], params[..., 3 * H + 1]

    @staticmethod
    def _net(t: Tensor, u: Tensor, c: Tensor, v: Tensor, d: Tensor) -> Tensor:
        """``h(t)`` for ``t`` of shape ``(*b, P)`` and weights ``(*b, H)`` -> ``(*b, P)``."""
        hid = torch.sigmoid(torch.addcmul(c[..., None, :], t[..., :, None], u[..., None, :]))
        return (hid * v[..., None, :]).sum(-1) + d[..., None]

    def _g(self, h: Tensor) -> Tensor:
        """``g = e + (1 - e) softplus(h + log(e - 1))``; ``log g`` is accurate as ``g >= e``."""
        e = self.min_slope
        return F.softplus(h + _SOFTPLUS_ONE) * (1 - e) + e

    def _integral(self, x: Tensor, params: Tensor) -> Tensor:
        """``b + integral_0^x g`` by quadrature on ``(*b, quadrature, H)`` points."""
        u, c, v, d, b = self._split(params)
        g = self._g(self._net(x[..., None] * self._t.to(x), u, c, v, d))
        return b + x * (g @ self._w.to(x))

    def _integrand(self, x: Tensor, params: Tensor) -> Tensor:
        u, c, v, d, _ = self._split(params)
        return self._g(self._net(x[..., None], u, c, v, d)[..., 0])

    def _evaluate(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log g(x))``; ``y`` is the quadrature at ``x`` with ``dy/dx = g(x)`` exactly.

        The quadrature runs on the detached ``x``, so autograd never forms the input gradient of
        the large ``(*b, quadrature, H)`` tensor; ``g(x) (x - x.detach())`` (zero in value)
        carries ``dy/dx``.
        """
        xd = x.detach()
        g = self._integrand(x, params)
        return self._integral(xd, params) + g * (x - xd), torch.log(g)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, params)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        p = params.detach()
        with torch.no_grad():
            u, c, v, d, b = self._split(p)
            g_lo, g_hi = self._g(d + v.clamp(max=0).sum(-1)), self._g(d + v.clamp(min=0).sum(-1))
            r = y.detach() - b
            pad = 1e-4 * r.abs() / g_lo + 1e-6
            lo = torch.where(r >= 0, r / g_hi, r / g_lo) - pad
            hi = torch.where(r >= 0, r / g_lo, r / g_hi) + pad
            xs = bisect(lambda x: self._integral(x, p), y.detach(), lo, hi, self.bisection_tol,
                        self.max_iter, "UMNN")
        fx, log_g = self._evaluate(xs, params)
        x = xs - (fx - y) * torch.exp(-log_g)
        return x, -torch.log(self._integrand(x, params))


class DeepSigmoid(Transformer):
    r"""Deep sigmoidal flow (NAF's DSF), ``layers`` blocks of ``hidden`` sigmoid units per scalar.

    One block maps

    .. math::
        \mathrm{DSF}(x) = \sigma^{-1}\Big(\sum_{j=1}^K w_j\, \sigma(a_j x + b_j)\Big), \qquad
        y = (1 - \epsilon)\,\mathrm{DSF}(x) + \epsilon x,

    with ``a = softplus(2 r_a) + 1e-3 > 0``, ``b = 3 r_b`` and ``w = softmax(2 r_w)`` for the raw
    parameters ``r``: the factors make the units move faster per conditioner update, which on 2-D
    toy densities trained markedly faster at a given learning rate. The logit of the mixture and its
    log-derivative are evaluated with log-sigmoid and log-sum-exp identities only
    (``log S = lse(log w + log sigma(u))``, ``log(1 - S) = lse(log w + log sigma(-u))``,
    ``S' / (1 - S) = sum_j softmax(log w + log sigma(-u))_j a_j sigma(u_j)`` on the upper side and
    its mirror image below), so nothing subtracts nearly equal numbers: the log-derivative is
    accurate and finite for ``|x|`` up to the float range. Blocks are stacked:
    ``param_shape = (layers, 3, K)`` holding ``(a, b, w)`` logits per block.

    Tails: the linear skip ``epsilon`` makes every block's slope at least ``epsilon``; far from the
    units each block is affine with slope ``(1 - epsilon) min_j a_j + epsilon``, so the map is a
    bijection of the real line.

    Near-identity initialisation: a block is the identity only if all its units coincide, which
    would leave them identical forever under gradient descent. The identity parameters therefore
    use ``a = 1``, ``w`` uniform and offsets ``b`` spread evenly over ``[-2, 2]``, so the units
    cover the range of standardised data: with ``K = 8`` each block has ``y(0) = 0``,
    ``|y - x| < 0.75`` and ``0.71 < dy/dx <= 1`` everywhere (a slight contraction near the
    origin, the identity's slope in the tails). A wider start trained faster than a tighter one
    (offsets in ``[-0.5, 0.5]``, within 0.06 of the identity) on 2-D toy densities.

    Fast direction: forward; the inverse is bisection on the bracket ``[0, (y - y(0)) /
    epsilon^layers]`` (the slope bound) plus one Newton step for gradients.

    Args:
        hidden: number of sigmoid units ``K`` per block.
        layers: number of stacked DSF blocks.
        eps: weight of the linear skip in each block, in ``(0, 1)``.
        bisection_tol: relative tolerance of the inverse (see :func:`bisect`).
        max_iter: cap on the number of bisection halvings.

    Example:
        >>> t = DeepSigmoid(hidden=4)
        >>> y, ladj = t.forward(torch.randn(5), t.identity_params().expand(5, -1, -1, -1))

    References:
        Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", ICML 2018.
    """

    def __init__(
        self,
        hidden: int = 8,
        layers: int = 1,
        eps: float = 1e-3,
        bisection_tol: float = 1e-10,
        max_iter: int = 120,
    ) -> None:
        self.hidden = _check_positive_int("DeepSigmoid", "hidden", hidden)
        self.layers = _check_positive_int("DeepSigmoid", "layers", layers)
        if not 0 < eps < 1:
            raise ValueError(f"DeepSigmoid: eps must lie in (0, 1), got {eps!r}")
        _check_iteration("DeepSigmoid", bisection_tol, max_iter)
        self.eps, self.bisection_tol, self.max_iter = float(eps), float(bisection_tol), int(max_iter)
        self.param_shape = (layers, 3, hidden)

    def identity_params(self) -> Tensor:
        K = self.hidden
        a = torch.full((K,), math.log(math.expm1(1.0 - 1e-3)) / 2)
        b = torch.linspace(-2.0 / 3, 2.0 / 3, K) if K > 1 else torch.zeros(1)
        return torch.stack([a, b, torch.zeros(K)]).expand(self.layers, 3, K).clone()

    def _block(self, x: Tensor, p: Tensor, need_log_deriv: bool) -> tuple[Tensor, Tensor | None]:
        """One DSF block. ``p``: ``(3, K, *b)`` (units first: reductions over a short last axis
        are slow on CPU), ``x``: ``(*b)``."""
        a_raw, b_raw, w_raw = p.unbind(0)
        a = F.softplus(2 * a_raw) + 1e-3
        log_w = torch.log_softmax(2 * w_raw, dim=0)
        u = torch.addcmul(3 * b_raw, a, x)
        ls_pos, ls_neg = F.logsigmoid(u), F.logsigmoid(-u)
        lw_pos, lw_neg = log_w + ls_pos, log_w + ls_neg
        log_s, log_1ms = torch.logsumexp(lw_pos, dim=0), torch.logsumexp(lw_neg, dim=0)
        y = (1 - self.eps) * (log_s - log_1ms) + self.eps * x
        if not need_log_deriv:
            return y, None
        # log DSF' = log S' - log S - log(1 - S). On the upper side (1 - S < S) it is evaluated as
        # log sum_j exp(log w_j + log sigma(-u_j) - log(1 - S)) a_j sigma(u_j) - log S: the huge
        # common factor of the tail cancels inside the sum, never by subtracting nearly equal
        # numbers. The lower side mirrors it.
        upper = log_1ms < log_s
        big = torch.where(upper, lw_neg - log_1ms, lw_pos - log_s)
        small = torch.where(upper, ls_pos, ls_neg) + torch.log(a)
        log_ds = torch.logsumexp(big + small, dim=0) - torch.where(upper, log_s, log_1ms)
        # log(eps + (1 - eps) exp(log_ds)) without overflow
        log_dy = F.softplus(log_ds + math.log((1 - self.eps) / self.eps), threshold=40) + math.log(self.eps)
        return y, log_dy

    def _map(self, x: Tensor, params: Tensor, need_log_deriv: bool = True) -> tuple[Tensor, Tensor]:
        p = params.movedim((-3, -2, -1), (0, 1, 2)).contiguous()  # (layers, 3, K, *b)
        ladj = torch.zeros_like(x)
        for i in range(self.layers):
            x, l = self._block(x, p[i], need_log_deriv)
            if l is not None:
                ladj = ladj + l
        return x, ladj

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(x, params)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        p = params.detach()
        yd = y.detach()
        with torch.no_grad():
            y0 = self._map(torch.zeros_like(yd), p, False)[0]
            span = (yd - y0) * (self.eps ** -self.layers * (1 + 1e-4))
            pad = 1e-6 * (1 + span.abs())
            lo, hi = torch.minimum(span, torch.zeros_like(span)) - pad, span.clamp(min=0) + pad
            xs = bisect(
                lambda x: self._map(x, p, False)[0], yd, lo, hi, self.bisection_tol, self.max_iter,
                "DeepSigmoid",
            )
        fx, log_d = self._map(xs, params)
        x = xs - (fx - y) * torch.exp(-log_d)
        return x, -self._map(x, params)[1]
