"""Lipschitz-constrained layers for residual flows: spectral normalisation and LipSwish.

A residual block ``x + g(x)`` is invertible when ``Lip(g) < 1``. :class:`LipschitzMLP` builds such a
``g`` from :class:`SpectralLinear` layers (each weight rescaled so that its spectral norm is at most
its coefficient) and 1-Lipschitz activations (:class:`LipSwish`, ELU, tanh, softplus), so
``Lip(g) <= prod(coefficients) * 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.nn import hidden_widths

__all__ = ["SpectralLinear", "LipSwish", "LipschitzMLP"]


def _normalize_or_keep(w: Tensor, old: Tensor) -> Tensor:
    """``w / |w|``, or ``old`` where ``w`` vanishes (a zero weight must not kill the iteration)."""
    n = torch.linalg.vector_norm(w)
    tiny = torch.finfo(w.dtype).tiny
    return torch.where(n > tiny, w / n.clamp_min(tiny), old)


class SpectralLinear(nn.Module):
    r"""Linear layer whose weight is rescaled to spectral norm at most ``coeff``.

    The normalised weight is :math:`\hat W = W / \max(1, \hat\sigma / c)` where
    :math:`\hat\sigma = u^\top W v` is the power-iteration estimate of :math:`\|W\|_2`; ``u`` and
    ``v`` are buffers (they move with ``.to()`` and are saved in the ``state_dict``) and are
    treated as constants in the gradient (Miyato et al. 2018).

    * In training mode every call to :meth:`weight_normalized` first runs ``n_power_iterations``
      power-iteration steps, warm-started from the stored vectors (which therefore track the
      weight as an optimiser changes it).
    * In eval mode the stored vectors are used as they are: nothing is mutated during a call, so
      eval-mode outputs are a pure function of the ``state_dict``.
    * Construction runs the iteration to convergence, and :meth:`converge_` does so on demand
      (call it after editing weights by hand, e.g. before evaluating). With converged vectors the
      coefficient is honoured to the iteration's tolerance:
      :math:`\|\hat W\|_2 \le c\,(1 + \text{tol})`, because :math:`\hat\sigma \le \|W\|_2`
      always (it can only underestimate, never overestimate).

    A vanishing weight (e.g. the zero-initialised last layer of a residual branch) leaves the
    vectors unchanged instead of collapsing them to zero.

    Args:
        in_features: input size.
        out_features: output size.
        coeff: the bound ``c > 0`` on the spectral norm.
        n_power_iterations: power-iteration steps per training-mode call (>= 0).
        bias: add a learnable bias.
        zero_init: initialise weight and bias at zero.

    Example:
        >>> layer = SpectralLinear(4, 8, coeff=0.9)
        >>> bool(torch.linalg.matrix_norm(layer.weight_normalized().detach(), 2) <= 0.9 * (1 + 1e-4))
        True

    References:
        Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
        Behrmann et al., "Invertible Residual Networks", ICML 2019.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        bias: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < coeff:
            raise ValueError(f"SpectralLinear: coeff must be > 0, got {coeff}")
        if int(n_power_iterations) < 0:
            raise ValueError(f"SpectralLinear: n_power_iterations must be >= 0, got {n_power_iterations}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.coeff = float(coeff)
        self.n_power_iterations = int(n_power_iterations)
        ref = nn.Linear(self.in_features, self.out_features, bias=bias)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        if zero_init:
            nn.init.zeros_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        self.register_buffer("u", F.normalize(torch.randn(self.out_features), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(self.in_features), dim=0))
        self.converge_()

    @torch.no_grad()
    def power_iterate_(self, n: int) -> None:
        """Run ``n`` power-iteration steps on the stored vectors (in place, no gradient)."""
        w, u, v = self.weight, self.u, self.v
        for _ in range(n):
            u = _normalize_or_keep(w @ v, u)
            v = _normalize_or_keep(w.t() @ u, v)
        self.u.copy_(u)
        self.v.copy_(v)

    @torch.no_grad()
    def converge_(self, tol: float = 1e-6, max_iter: int = 500) -> None:
        """Power-iterate until the estimate of ``||W||_2`` changes by less than ``tol`` (relative),
        or ``max_iter`` steps (a near-degenerate top singular value converges slowly, but then
        the estimate is already close)."""
        sigma = float(self.u @ self.weight @ self.v)
        for _ in range(max_iter):
            self.power_iterate_(1)
            new = float(self.u @ self.weight @ self.v)
            if abs(new - sigma) <= tol * abs(new):
                break
            sigma = new

    def sigma(self) -> Tensor:
        """Current estimate ``u^T W v`` of the spectral norm (differentiable in ``W``)."""
        return torch.dot(self.u.clone(), torch.mv(self.weight, self.v.clone()))

    def weight_normalized(self) -> Tensor:
        """The weight rescaled to spectral norm ``<= coeff`` (power iteration first if training)."""
        if self.training and self.n_power_iterations:
            self.power_iterate_(self.n_power_iterations)
        factor = torch.clamp(self.sigma() / self.coeff, min=1.0)
        return self.weight / factor

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_normalized(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, coeff={self.coeff:.4g}, "
                f"n_power_iterations={self.n_power_iterations}")


class LipSwish(nn.Module):
    r"""LipSwish activation :math:`x \, \sigma(\beta x) / 1.1` with learnable :math:`\beta > 0`.

    Swish's derivative is bounded by about 1.0998 for every :math:`\beta`, so dividing by 1.1 makes
    it 1-Lipschitz; it is smooth (unlike ReLU), so the log-determinant of a residual block has
    useful gradients. :math:`\beta = \mathrm{softplus}(\rho)` is initialised at 1.

    Example:
        >>> act = LipSwish()
        >>> act(torch.zeros(3))
        tensor([0., 0., 0.], grad_fn=<DivBackward0>)

    References:
        Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))

    def forward(self, x: Tensor) -> Tensor:
        beta = F.softplus(self.raw_beta)
        return x * torch.sigmoid(beta * x) / 1.1


_LIPSCHITZ_ACTIVATIONS = {"lipswish": LipSwish, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class LipschitzMLP(nn.Module):
    r"""MLP ``g: R^D -> R^D`` with ``Lip(g) <= lipschitz`` in its input, for residual blocks.

    Layer sizes are induced from ``hidden``: ``D -> hidden[0] -> ... -> hidden[-1] -> D``. Each of the
    ``L = len(hidden) + 1`` linear layers is a :class:`SpectralLinear` with coefficient
    ``lipschitz ** (1 / L)``, and every activation is 1-Lipschitz, so the product bound is exactly
    ``lipschitz``. The last layer starts at zero (``g = 0``: the block starts as the identity).

    A context (``context_dim > 0``) enters the first pre-activation through an unconstrained linear
    map: the Lipschitz bound holds in ``x`` for every fixed context.

    For residual blocks that evaluate ``g`` many times per call (fixed-point inverses, power series),
    `weights()` returns the normalised weights once (running the power iteration once in training)
    and `evaluate(x, weights, context)` evaluates ``g`` with them; ``forward`` does both.

    Args:
        dim: input and output size ``D``.
        hidden: hidden widths.
        context_dim: size of the context (0: none).
        lipschitz: the bound on ``Lip(g)``, in ``(0, 1)`` for an invertible block.
        activation: ``"lipswish"``, ``"elu"``, ``"tanh"`` or ``"softplus"`` (all 1-Lipschitz).
        n_power_iterations: power-iteration steps per training call, per layer.

    Example:
        >>> g = LipschitzMLP(3, hidden=(16,), lipschitz=0.9)
        >>> g(torch.randn(5, 3)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] | int = (64, 64),
        context_dim: int = 0,
        lipschitz: float = 0.9,
        activation: str = "lipswish",
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        hidden = hidden_widths(hidden, "LipschitzMLP")
        if not 0 < lipschitz:
            raise ValueError(f"LipschitzMLP: lipschitz must be > 0, got {lipschitz}")
        key = activation.lower() if isinstance(activation, str) else activation
        if key not in _LIPSCHITZ_ACTIVATIONS:
            raise ValueError(
                f"LipschitzMLP: activation must be one of {sorted(_LIPSCHITZ_ACTIVATIONS)} (1-Lipschitz), "
                f"got {activation!r}"
            )
        sizes = [int(dim), *hidden, int(dim)]
        n = len(sizes) - 1
        coeff = float(lipschitz) ** (1.0 / n)
        self.dim, self.context_dim, self.lipschitz = int(dim), int(context_dim), float(lipschitz)
        self.linears = nn.ModuleList(
            SpectralLinear(a, b, coeff, n_power_iterations, zero_init=i == n - 1)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        )
        self.activations = nn.ModuleList(_LIPSCHITZ_ACTIVATIONS[key]() for _ in hidden)
        self.context_net = nn.Linear(self.context_dim, sizes[1], bias=False) if self.context_dim else None

    def weights(self) -> list[Tensor]:
        """Normalised weights of every layer (one power-iteration round per layer in training)."""
        return [layer.weight_normalized() for layer in self.linears]

    def evaluate(self, x: Tensor, weights: Sequence[Tensor], context: Tensor | None = None) -> Tensor:
        """Evaluate ``g(x)`` with precomputed :meth:`weights`; ``x`` is ``(*b, D)`` or ``(D,)``."""
        h = x
        last = len(self.linears) - 1
        for i, (layer, w) in enumerate(zip(self.linears, weights)):
            h = F.linear(h, w, layer.bias)
            if i == 0 and self.context_net is not None and context is not None:
                h = h + self.context_net(context)
            if i < last:
                h = self.activations[i](h)
        return h

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.evaluate(x, self.weights(), context)
