"""Base distributions: modules with ``log_prob(z, context=None)`` and ``sample(shape, context=None)``.

``sample`` is reparameterised (differentiable) where the distribution allows it; a
:class:`~torchnf.Flow` wraps it in ``torch.no_grad`` for its own ``sample``.

Contents: :class:`StandardNormal`, :class:`DiagonalNormal`, :class:`GaussianMixture` (trainable,
k-means initialisation, optionally conditional) and :class:`UniformTorus`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.core import Recorded, all_finite, check_context, check_input
from torchnf.nn import MLP

__all__ = ["Distribution", "StandardNormal", "DiagonalNormal", "GaussianMixture", "UniformTorus"]

_LOG_2PI = math.log(2 * math.pi)


def _shape(shape: int | Sequence[int] | torch.Size, owner: str = "Distribution", what: str = "shape"
           ) -> torch.Size:
    """``shape`` (an int, including numpy and 0-d tensor integers, or a sequence of them) as a
    ``torch.Size`` of sizes >= 0; ``TypeError``/``ValueError`` naming ``owner`` otherwise."""
    try:
        sizes = [operator.index(s) for s in shape] if isinstance(shape, Sequence) else [operator.index(shape)]
    except TypeError:
        raise TypeError(f"{owner}: expected the {what} as an int or a sequence of ints, got {shape!r}"
                        ) from None
    if any(s < 0 for s in sizes):
        raise ValueError(f"{owner}: the {what} must not have negative sizes, got {tuple(sizes)}")
    return torch.Size(sizes)


class Distribution(Recorded, nn.Module):
    """Base class of base distributions over events of shape ``event_shape``.

    Subclasses implement ``_log_prob(z, context)`` (sum over event dims; context already
    broadcast) and ``_sample(shape, context)`` returning ``(*shape, *event_shape)`` where
    ``shape`` already includes the context's batch shape.
    """

    def __init__(self, event_shape: Sequence[int] | int, context_dim: int = 0) -> None:
        nn.Module.__init__(self)
        self.event_shape = _shape(event_shape, type(self).__name__, "event_shape")
        self.context_dim = int(context_dim)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``z`` of shape ``(*batch, *event_shape)``; returns ``(*batch)``."""
        batch = check_input(self, z, self.event_shape)
        context, shape = check_context(self, context, self.context_dim, batch)
        if shape != batch:
            z = z.expand(*shape, *self.event_shape)
        return self._log_prob(z, context)

    def sample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        """Draw samples of shape ``(*shape, *context_batch, *event_shape)`` (reparameterised)."""
        shape = _shape(shape, f"{type(self).__name__}.sample", "sample shape")
        context, cbatch = check_context(self, context, self.context_dim, torch.Size())
        if context is not None:
            context = context.expand(*shape, *context.shape)
        return self._sample(shape + cbatch, context)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _ref(self) -> Tensor:
        """A tensor carrying this module's dtype and device."""
        for t in self.buffers():
            return t
        for t in self.parameters():
            return t
        raise RuntimeError(f"{type(self).__name__} has no buffer or parameter")

    def extra_repr(self) -> str:
        s = f"event_shape={tuple(self.event_shape)}"
        return s + (f", context_dim={self.context_dim}" if self.context_dim else "")


class StandardNormal(Distribution):
    """Standard normal ``N(0, I)`` over events of shape ``event_shape``.

    Example:
        >>> base = StandardNormal(2)
        >>> base.log_prob(torch.zeros(2))
        tensor(-1.8379)
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        n = len(self.event_shape)
        d = self.event_shape.numel()
        sq = z.square().sum(dim=tuple(range(-n, 0))) if n else z.square()
        return sq * -0.5 - 0.5 * d * _LOG_2PI

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        z = self._zero
        return torch.randn(*shape, *self.event_shape, dtype=z.dtype, device=z.device)


class DiagonalNormal(Distribution):
    """Normal with trainable mean and diagonal scale (initialised at ``N(0, I)``).

    Example:
        >>> base = DiagonalNormal(3)
        >>> base.sample(5).shape
        torch.Size([5, 3])
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        n = len(self.event_shape)
        u = (z - self.loc) * torch.exp(-self.log_scale)
        lp = -0.5 * u.square() - self.log_scale - 0.5 * _LOG_2PI
        return lp.sum(dim=tuple(range(-n, 0))) if n else lp

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        eps = torch.randn(*shape, *self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.log_scale.exp()


def _kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """k-means++ seeding followed by at most ``iters`` Lloyd steps. Returns ``(centres, labels)``.

    ``x`` is ``(N, D)`` with ``N >= k``. Random choices use ``generator`` (on its own device).
    """

    def pick(weights: Tensor) -> int:
        if generator is not None:
            weights = weights.to(generator.device)
        return int(torch.multinomial(weights, 1, generator=generator))

    def assign(centres: Tensor) -> Tensor:
        return torch.cdist(x, centres).argmin(-1)

    # Centring reduces the cancellation of cdist's ||x||^2 + ||c||^2 - 2 x.c form.
    x = x - x.mean(0)
    first = pick(torch.ones(x.shape[0], dtype=x.dtype, device=x.device))
    chosen = [x[first]]
    d2 = (x - x[first]).square().sum(-1)
    for _ in range(1, k):
        # D^2 weighting; all-zero distances (duplicated points) fall back to a uniform choice.
        i = pick(d2 if bool(d2.sum() > 0) else torch.ones_like(d2))
        chosen.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).square().sum(-1))
    centres = torch.stack(chosen)
    labels = assign(centres)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)[:, None]
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        # An empty cluster keeps its previous centre.
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        new = assign(centres)
        if torch.equal(new, labels):
            break
        labels = new
    return centres, labels


class GaussianMixture(Distribution):
    r"""Mixture of ``K`` Gaussians with diagonal covariances, all parameters trainable.

    .. math::
        p(z) = \sum_{k=1}^K w_k\, \mathcal N\big(z;\ \mu_k,\ \mathrm{diag}(\sigma_k^2)\big),
        \qquad w = \mathrm{softmax}(\ell),\quad \sigma_k = \exp(s_k),

    evaluated stably as ``logsumexp_k(log w_k + log N(z; mu_k, sigma_k))``.

    Parameters: ``logits`` ``(K,)``, ``means`` ``(K, D)`` and ``log_scales`` ``(K, D)``. At
    construction the weights are equal, the means are drawn from ``N(0, I/2)`` and every scale is
    ``1/sqrt(2)``, so the mixture has (in expectation) unit variance per feature; with ``K = 1`` it
    is exactly ``N(0, I)``. :meth:`initialize` fits them to data by k-means instead.

    With ``context_dim > 0`` an :class:`~torchnf.MLP` maps the context to offsets of all
    parameters (``K (1 + 2D)`` outputs). Its last layer starts at zero, so the conditional mixture
    starts equal to the unconditional one for every context.

    Sampling draws the component with the Gumbel-max trick (not differentiable: no gradient
    reaches the weights through samples) and the Gaussian part by reparameterisation
    ``z = mu_k + sigma_k * eps``, so gradients reach the means and scales (and the context net).

    Args:
        event_dim: number of features ``D`` (events are vectors of shape ``(D,)``).
        components: number of components ``K``.
        context_dim: size of the context; 0 for an unconditional mixture.
        hidden: hidden widths of the context MLP.
        activation: activation name of the context MLP.

    Shapes:
        ``log_prob``: ``(*batch, D) -> (*batch)``; ``sample(shape)``: ``(*shape, D)``.

    Example:
        >>> base = GaussianMixture(2, components=3)
        >>> x = torch.cat([torch.randn(100, 2) - 4, torch.randn(100, 2) + 4])
        >>> base = base.initialize(x, generator=torch.Generator().manual_seed(0))
        >>> base.log_prob(x).shape
        torch.Size([200])
        >>> base.sample(5).shape
        torch.Size([5, 2])

    References:
        Arthur, Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
        Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014 (the Gumbel-max trick used for the
        component choice).
    """

    def __init__(
        self,
        event_dim: int,
        components: int = 8,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
    ) -> None:
        if isinstance(event_dim, (tuple, list, torch.Size)) and len(event_dim) == 1:
            event_dim = int(event_dim[0])
        if not isinstance(event_dim, int) or isinstance(event_dim, bool) or event_dim < 1:
            raise ValueError(f"GaussianMixture: event_dim must be a positive integer, got {event_dim!r}")
        if not isinstance(components, int) or isinstance(components, bool) or components < 1:
            raise ValueError(f"GaussianMixture: components must be a positive integer, got {components!r}")
        super().__init__(event_dim, context_dim)
        K, D = components, event_dim
        self.components = K
        spread = 0.5 if K > 1 else 0.0
        self.logits = nn.Parameter(torch.zeros(K))
        self.means = nn.Parameter(torch.randn(K, D) * math.sqrt(spread))
        self.log_scales = nn.Parameter(torch.full((K, D), 0.5 * math.log(1.0 - spread)))
        self.net = MLP(self.context_dim, K * (1 + 2 * D), hidden, activation) if self.context_dim else None

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_weights (*b, K), means (*b, K, D), log_scales (*b, K, D))``; ``*b`` is empty
        without context."""
        logits, means, log_scales = self.logits, self.means, self.log_scales
        if self.net is not None and context is not None:
            K, D = means.shape
            out = self.net(context)
            dl, dm, ds = out.split([K, K * D, K * D], dim=-1)
            logits = logits + dl
            means = means + dm.unflatten(-1, (K, D))
            log_scales = log_scales + ds.unflatten(-1, (K, D))
        return torch.log_softmax(logits, dim=-1), means, log_scales

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        log_w, means, log_scales = self._params(context)
        u = (z.unsqueeze(-2) - means) * torch.exp(-log_scales)
        comp = u.square().sum(-1) * -0.5 - log_scales.sum(-1) - 0.5 * self.event_shape[0] * _LOG_2PI
        return torch.logsumexp(log_w + comp, dim=-1)

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        log_w, means, log_scales = self._params(context)
        K, D = means.shape[-2:]
        u = torch.rand(*shape, K, dtype=means.dtype, device=means.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        k = torch.argmax(log_w + gumbel, dim=-1)
        idx = k[..., None, None].expand(*shape, 1, D)
        mu = torch.gather(means.expand(*shape, K, D), -2, idx).squeeze(-2)
        s = torch.gather(log_scales.expand(*shape, K, D), -2, idx).squeeze(-2)
        eps = torch.randn(*shape, D, dtype=means.dtype, device=means.device)
        return mu + eps * s.exp()

    @torch.no_grad()
    def initialize(
        self, x: Tensor, iters: int = 50, generator: torch.Generator | None = None
    ) -> GaussianMixture:
        """Set the parameters from data by k-means (k-means++ seeding, then Lloyd iterations).

        Means become the cluster centres, scales the per-feature standard deviations within each
        cluster (a cluster of fewer than two points gets the overall spread; scales are floored at
        ``1e-3`` times the overall spread), weights the cluster sizes. For a conditional mixture
        the context net's last layer is reset to zero, so every context starts at this fit.

        To initialise the base of a flow, pass latents: ``flow.base.initialize(flow.transform(x))``.

        Args:
            x: data of shape ``(*batch, D)`` with at least ``K`` events.
            iters: maximum number of Lloyd iterations (stops earlier when assignments settle).
            generator: random generator for the k-means++ seeding (reproducible initialisation).

        Returns:
            ``self``.
        """
        name = type(self).__name__
        batch = check_input(self, x, self.event_shape, "data")
        K, D = self.means.shape
        if batch.numel() < K:
            raise ValueError(f"{name}.initialize: needs at least components={K} events, got {batch.numel()}")
        if not isinstance(iters, int) or iters < 0:
            raise ValueError(f"{name}.initialize: iters must be an integer >= 0, got {iters!r}")
        x = x.detach().reshape(-1, D).to(self.means)
        if not all_finite(x):
            raise ValueError(f"{name}.initialize: the data contains NaN or inf")
        _, labels = _kmeans(x, K, iters, generator)
        counts = torch.bincount(labels, minlength=K).to(x.dtype)[:, None]
        means = torch.zeros_like(self.means).index_add_(0, labels, x) / counts.clamp_min(1)
        var = torch.zeros_like(self.means).index_add_(0, labels, (x - means[labels]).square())
        var = var / counts.clamp_min(1)
        overall = x.var(0, unbiased=False)
        var = torch.where(counts >= 2, var, overall).clamp_min(1e-6 * overall + torch.finfo(x.dtype).tiny)
        self.means.copy_(means)
        self.log_scales.copy_(0.5 * var.log())
        self.logits.copy_((counts.squeeze(-1).clamp_min(1) / x.shape[0]).log())
        if self.net is not None:
            last = self.net[-1]
            last.weight.zero_()
            last.bias.zero_()
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", components={self.components}"


class UniformTorus(Distribution):
    r"""Uniform distribution on the torus ``[-pi, pi)^D``.

    ``log p(z) = -D log(2 pi)`` when every coordinate lies in ``[-pi, pi)`` and ``-inf`` otherwise.
    Sampling has no parameters to differentiate; samples lie in ``[-pi, pi)`` in every dtype.

    Args:
        dim: number of angles ``D``.

    Example:
        >>> base = UniformTorus(2)
        >>> base.log_prob(torch.zeros(2))
        tensor(-3.6758)
        >>> base.sample(4).shape
        torch.Size([4, 2])

    References:
        Rezende et al., "Normalizing flows on tori and spheres", ICML 2020.
    """

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"UniformTorus: dim must be a positive integer, got {dim!r}")
        super().__init__(dim)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        # Python-float bounds compare in z's own dtype (a buffer would keep float32's pi).
        inside = ((z >= -math.pi) & (z < math.pi)).all(-1)
        lp = torch.full_like(inside, -self.event_shape[0] * math.log(2 * math.pi), dtype=z.dtype)
        return torch.where(inside, lp, -math.inf)

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        ref = self._zero
        z = (torch.rand(*shape, *self.event_shape, dtype=ref.dtype, device=ref.device) * 2 - 1) * math.pi
        # Rounding can land on +pi, which is -pi on the torus.
        return torch.where(z < math.pi, z, -math.pi)
