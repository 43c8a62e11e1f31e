r"""Target densities for variational inference and MCMC, with exact answers where they are known.

Every target is a :class:`Target`: a module whose ``log_prob(x)`` maps ``(*batch, dim)`` to
``(*batch)`` in the input's dtype and device, differentiable in ``x`` (so gradient-based samplers
can use it), and callable (``target(x) == target.log_prob(x)``) so it can be passed wherever a
``log_target`` function is expected. ``log_prob`` may be unnormalised: ``log_normalizer`` is
``log \int exp(log_prob(x)) dx`` where it is known (``0.0`` for normalised densities, ``None``
when unknown, as for a posterior's evidence). Where known, ``sample(n, seed)`` draws exact samples
and ``mean``/``cov`` are the exact moments (float64).

Contents: :class:`Banana`, :class:`Funnel`, :class:`GaussianTarget`, :class:`GaussianMixtureTarget`,
:class:`LogisticRegression` and :class:`TorusTarget`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Target",
    "Banana",
    "Funnel",
    "GaussianTarget",
    "GaussianMixtureTarget",
    "LogisticRegression",
    "TorusTarget",
]

_LOG_2PI = math.log(2 * math.pi)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _as64(name: str, what: str, value: object, shape: tuple[int, ...] | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name}: expected {what} of shape {shape}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: {what} contains NaN or inf")
    return t


class Target(nn.Module):
    """Base class of the targets: an (unnormalised) log-density on ``R^dim``.

    Subclasses implement ``_log_prob(x)`` for ``x`` of shape ``(*batch, dim)`` (already checked)
    and, where they can, ``_sample(n, generator, dtype)``. Constant tensors are float64 buffers that
    are cast to the input's dtype and device on use, so one target serves float32 and float64.

    Attributes:
        dim: number of coordinates.
        log_normalizer: ``log Z`` with ``Z = \\int exp(log_prob)``, or ``None`` if unknown.
    """

    log_normalizer: float | None = None

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be a positive integer, got {dim!r}")
        self.dim = dim

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density (up to ``log_normalizer``) of ``x`` of shape ``(*batch, dim)`` -> ``(*batch)``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{type(self).__name__}: expected a floating-point tensor, got {got}")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}: expected x of shape (*batch, {self.dim}), got {tuple(x.shape)}"
            )
        return self._log_prob(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x)

    def sample(self, n: int, seed: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """``n`` exact samples of shape ``(n, dim)`` (float64 unless ``dtype`` is given)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: n must be an integer >= 0, got {n!r}")
        return self._sample(n, _generator(seed)).to(dtype or torch.float64)

    @property
    def mean(self) -> Tensor | None:
        """Exact mean ``(dim,)`` (float64), or ``None`` if unknown."""
        return None

    @property
    def cov(self) -> Tensor | None:
        """Exact covariance ``(dim, dim)`` (float64), or ``None`` if unknown."""
        return None

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Banana(Target):
    r"""Rosenbrock-type twisted Gaussian (Haario, Saksman, Tamminen 1999).

    With ``u ~ N(0, I)``: ``x_1 = a u_1``, ``x_2 = u_2 + b (x_1^2 - a^2)`` and ``x_i = u_i`` for
    ``i > 2``. The map has unit Jacobian, so

    .. math::
        \log \tilde p(x) = -\tfrac12\Big[(x_1/a)^2 + \big(x_2 - b(x_1^2 - a^2)\big)^2
        + \sum_{i>2} x_i^2\Big], \qquad \log Z = \tfrac{d}{2}\log 2\pi + \log a,

    and the moments are exact: mean 0, ``Var x_1 = a^2``, ``Var x_2 = 1 + 2 a^4 b^2``, all
    covariances 0. ``log_prob`` is the unnormalised :math:`\log\tilde p`.

    Args:
        dim: number of coordinates (>= 2).
        a: scale of ``x_1``.
        b: curvature of the banana.

    Example:
        >>> t = Banana()
        >>> x = t.sample(1000, seed=0)
        >>> (t.log_prob(x) - t.log_normalizer).shape
        torch.Size([1000])

    References:
        Haario, Saksman, Tamminen, "Adaptive proposal distribution for random walk Metropolis
        algorithm", Computational Statistics, 1999.
    """

    def __init__(self, dim: int = 2, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__(dim)
        if dim < 2 or not a > 0 or not math.isfinite(b):
            raise ValueError(f"Banana: need dim >= 2, a > 0 and a finite b, got dim={dim}, a={a}, b={b}")
        self.a, self.b = float(a), float(b)
        self.log_normalizer = 0.5 * dim * _LOG_2PI + math.log(self.a)

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, x2 = x[..., 0], x[..., 1]
        r = (x1 / self.a).square() + (x2 - self.b * (x1.square() - self.a**2)).square()
        return -0.5 * (r + x[..., 2:].square().sum(-1))

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        u = torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
        x1 = self.a * u[:, 0]
        x2 = u[:, 1] + self.b * (x1.square() - self.a**2)
        return torch.cat([x1[:, None], x2[:, None], u[:, 2:]], dim=1)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        v = torch.ones(self.dim, dtype=torch.float64)
        v[0], v[1] = self.a**2, 1 + 2 * self.a**4 * self.b**2
        return torch.diag(v)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, a={self.a}, b={self.b}"


class Funnel(Target):
    r"""Neal's funnel: ``x_1 ~ N(0, s^2)`` and ``x_i | x_1 ~ N(0, e^{x_1})`` for ``i = 2..dim``.

    .. math::
        \log p(x) = \log N(x_1; 0, s^2) + \sum_{i\ge2} \log N(x_i; 0, e^{x_1}),

    normalised (``log_normalizer = 0``). Exact moments: mean 0, ``Var x_1 = s^2``,
    ``Var x_i = E[e^{x_1}] = e^{s^2/2}``. The neck (``x_1 << 0``) defeats fixed-step samplers; the
    map ``(x_1/s, x_i e^{-x_1/2})`` makes it a standard normal.

    Args:
        dim: number of coordinates (>= 2).
        scale: standard deviation ``s`` of ``x_1`` (Neal used 3).

    Example:
        >>> t = Funnel(5)
        >>> t.log_prob(t.sample(4, seed=0)).shape
        torch.Size([4])

    References:
        Neal, "Slice sampling", Annals of Statistics, 2003.
    """

    log_normalizer = 0.0

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        super().__init__(dim)
        if dim < 2 or not scale > 0:
            raise ValueError(f"Funnel: need dim >= 2 and scale > 0, got dim={dim}, scale={scale}")
        self.scale = float(scale)

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, rest = x[..., 0], x[..., 1:]
        lp1 = -0.5 * (x1 / self.scale).square() - math.log(self.scale) - 0.5 * _LOG_2PI
        u = rest * torch.exp(-0.5 * x1)[..., None]
        return lp1 - 0.5 * u.square().sum(-1) - 0.5 * (self.dim - 1) * (x1 + _LOG_2PI)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        u = torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
        x1 = self.scale * u[:, :1]
        return torch.cat([x1, u[:, 1:] * torch.exp(0.5 * x1)], dim=1)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        v = torch.full((self.dim,), math.exp(0.5 * self.scale**2), dtype=torch.float64)
        v[0] = self.scale**2
        return torch.diag(v)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class GaussianTarget(Target):
    r"""Multivariate normal ``N(mean, cov)`` (normalised), e.g. an ill-conditioned test target.

    Args:
        mean: ``(dim,)``.
        cov: ``(dim, dim)`` symmetric positive definite.

    Example:
        >>> t = GaussianTarget.ill_conditioned(20, condition=1e3, seed=0)
        >>> t.log_prob(t.sample(3, seed=1)).shape
        torch.Size([3])
    """

    log_normalizer = 0.0

    def __init__(self, mean: Tensor | Sequence[float], cov: Tensor | Sequence[Sequence[float]]) -> None:
        m = _as64("GaussianTarget", "mean", mean)
        if m.dim() != 1:
            raise ValueError(f"GaussianTarget: expected mean of shape (dim,), got {tuple(m.shape)}")
        super().__init__(m.shape[0])
        c = _as64("GaussianTarget", "cov", cov, (self.dim, self.dim))
        L, info = torch.linalg.cholesky_ex(0.5 * (c + c.T))
        if int(info) != 0:
            raise ValueError("GaussianTarget: cov is not symmetric positive definite")
        self.register_buffer("_mean", m)
        self.register_buffer("_chol", L)

    @classmethod
    def ill_conditioned(cls, dim: int = 20, condition: float = 1e3, seed: int = 0) -> GaussianTarget:
        """Zero mean, variances log-spaced from 1 to ``condition``, in a random rotation."""
        gen = _generator(seed)
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        var = torch.logspace(0.0, math.log10(condition), dim, dtype=torch.float64)
        return cls(torch.zeros(dim, dtype=torch.float64), (q * var) @ q.T)

    def _log_prob(self, x: Tensor) -> Tensor:
        L = self._chol.to(x)
        d = (x - self._mean.to(x)).unsqueeze(-1)
        u = torch.linalg.solve_triangular(L.expand(*d.shape[:-2], *L.shape), d, upper=False).squeeze(-1)
        return -0.5 * u.square().sum(-1) - torch.log(torch.diagonal(L)).sum() - 0.5 * self.dim * _LOG_2PI

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        return self._mean + torch.randn(n, self.dim, generator=gen, dtype=torch.float64) @ self._chol.T

    @property
    def mean(self) -> Tensor:
        return self._mean.clone()

    @property
    def cov(self) -> Tensor:
        return self._chol @ self._chol.T


class GaussianMixtureTarget(Target):
    r"""Mixture of Gaussians with diagonal covariances (normalised), a multimodal test target.

    .. math:: p(x) = \sum_k w_k\, N\big(x;\ \mu_k,\ \mathrm{diag}(\sigma_k^2)\big).

    Exact samples, mean ``sum_k w_k mu_k`` and covariance
    ``sum_k w_k (diag(sigma_k^2) + mu_k mu_k^T) - mean mean^T``. :meth:`assign` labels points by
    their most responsible component, to compare the mode weights a sampler finds with ``weights``.

    Args:
        means: ``(K, dim)`` component means.
        scales: standard deviations: a number, ``(K,)`` or ``(K, dim)``.
        weights: ``(K,)`` positive mixture weights (normalised here); default equal.

    Example:
        >>> t = GaussianMixtureTarget([[-4.0, 0.0], [4.0, 0.0]], weights=[0.7, 0.3])
        >>> labels = t.assign(t.sample(1000, seed=0))
        >>> labels.shape
        torch.Size([1000])
    """

    log_normalizer = 0.0

    def __init__(
        self,
        means: Tensor | Sequence[Sequence[float]],
        scales: float | Tensor | Sequence = 1.0,
        weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        name = "GaussianMixtureTarget"
        mu = _as64(name, "means", means)
        if mu.dim() != 2:
            raise ValueError(f"{name}: expected means of shape (K, dim), got {tuple(mu.shape)}")
        super().__init__(mu.shape[1])
        K = mu.shape[0]
        s = _as64(name, "scales", scales)
        s = s[:, None] if s.dim() == 1 else s
        try:
            s = torch.broadcast_to(s, (K, self.dim)).clone()
        except RuntimeError:
            raise ValueError(f"{name}: scales of shape {tuple(s.shape)} do not fit {(K, self.dim)}") from None
        w = torch.ones(K, dtype=torch.float64) if weights is None else _as64(name, "weights", weights, (K,))
        if not bool((s > 0).all()) or not bool((w > 0).all()):
            raise ValueError(f"{name}: scales and weights must be positive")
        self.register_buffer("means", mu)
        self.register_buffer("scales", s)
        self.register_buffer("weights", w / w.sum())

    def _components(self, x: Tensor) -> Tensor:
        """``log w_k + log N(x; mu_k, sigma_k)``: ``(*batch, K)``."""
        mu, s, w = self.means.to(x), self.scales.to(x), self.weights.to(x)
        u = (x.unsqueeze(-2) - mu) / s
        return w.log() - 0.5 * u.square().sum(-1) - s.log().sum(-1) - 0.5 * self.dim * _LOG_2PI

    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._components(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities ``(*batch, K)``."""
        self.log_prob(x)  # shape check
        return torch.softmax(self._components(x), dim=-1)

    def assign(self, x: Tensor) -> Tensor:
        """Index of the most responsible component, ``(*batch)`` (int64)."""
        return self.responsibilities(x).argmax(-1)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=gen)
        eps = torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
        return self.means.cpu()[k] + eps * self.scales.cpu()[k]

    @property
    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    @property
    def cov(self) -> Tensor:
        m = self.mean
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second + torch.diag((self.weights[:, None] * self.scales.square()).sum(0)) - torch.outer(m, m)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, components={self.means.shape[0]}"


class LogisticRegression(Target):
    r"""Posterior of a Bayesian logistic regression on data ``(X, y)`` the user passes.

    .. math::
        \log \tilde p(\beta) = \sum_n \big[y_n \ell_n - \mathrm{softplus}(\ell_n)\big]
        + \sum_d \log N(\beta_d; 0, s^2), \qquad \ell = X\beta,

    i.e. log-likelihood plus log-prior; the evidence (``log_normalizer``) is unknown. Add a column
    of ones to ``X`` for an intercept.

    Args:
        X: ``(N, dim)`` covariates.
        y: ``(N,)`` labels in ``{0, 1}``.
        prior_scale: standard deviation ``s`` of the independent normal prior on each coefficient.

    Example:
        >>> t = LogisticRegression.synthetic(n=100, dim=3, seed=0)
        >>> t.log_prob(torch.zeros(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, X: Tensor, y: Tensor, prior_scale: float = 1.0) -> None:
        name = "LogisticRegression"
        X64 = _as64(name, "X", X)
        if X64.dim() != 2:
            raise ValueError(f"{name}: expected X of shape (N, dim), got {tuple(X64.shape)}")
        super().__init__(X64.shape[1])
        y64 = _as64(name, "y", y, (X64.shape[0],))
        if not bool(((y64 == 0) | (y64 == 1)).all()):
            raise ValueError(f"{name}: labels y must be 0 or 1")
        if not prior_scale > 0:
            raise ValueError(f"{name}: prior_scale must be positive, got {prior_scale}")
        self.prior_scale = float(prior_scale)
        self.register_buffer("X", X64)
        self.register_buffer("y", y64)
        self.true_coef: Tensor | None = None

    @classmethod
    def synthetic(
        cls, n: int = 200, dim: int = 5, seed: int = 0, prior_scale: float = 1.0
    ) -> LogisticRegression:
        """Data drawn from the model: ``X ~ N(0, I)``, ``beta ~ N(0, I)``,
        ``y ~ Bernoulli(sigmoid(X beta))``; the coefficients are kept in ``true_coef``."""
        gen = _generator(seed)
        X = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        beta = torch.randn(dim, generator=gen, dtype=torch.float64)
        y = torch.bernoulli(torch.sigmoid(X @ beta), generator=gen)
        t = cls(X, y, prior_scale)
        t.true_coef = beta
        return t

    def _log_prob(self, x: Tensor) -> Tensor:
        logits = x @ self.X.to(x).T
        lik = (self.y.to(x) * logits - F.softplus(logits)).sum(-1)
        s = self.prior_scale
        prior = -0.5 * (x / s).square().sum(-1) - self.dim * (math.log(s) + 0.5 * _LOG_2PI)
        return lik + prior

    def extra_repr(self) -> str:
        return f"dim={self.dim}, N={self.X.shape[0]}, prior_scale={self.prior_scale}"


class TorusTarget(Target):
    r"""Density on two angles: a mixture of bivariate von Mises (sine-model) components.

    .. math::
        f_k(\phi, \psi) \propto \exp\big(\kappa_{k1}\cos(\phi-\mu_{k1}) + \kappa_{k2}\cos(\psi-\mu_{k2})
        + \lambda_k \sin(\phi-\mu_{k1})\sin(\psi-\mu_{k2})\big),

    ``p = sum_k w_k f_k``, each ``f_k`` normalised on a ``grid x grid`` periodic midpoint grid
    (exponentially accurate for these smooth periodic integrands), so ``log_prob`` integrates to 1
    over ``[-pi, pi)^2`` (it is periodic outside). A component is bimodal when
    ``lambda^2 > kappa_1 kappa_2``. The default imitates a Ramachandran plot of protein backbone
    dihedrals ``(phi, psi)``: an alpha-helix mode near ``(-63, -43)`` degrees and a broader beta-sheet
    mode near ``(-120, 130)`` degrees. :meth:`sample` is exact: rejection sampling from a
    piecewise-constant envelope on the grid cells, each cell's level being a rigorous bound (the
    density at its centre times ``exp(L h / sqrt 2)``, ``L`` a Lipschitz constant of the
    log-density, ``h`` the cell width).

    Args:
        locs: ``(K, 2)`` mode locations in radians.
        concentrations: ``(K, 2)`` (or ``(K,)``, or a number) concentrations ``kappa >= 0``.
        correlations: ``(K,)`` (or a number) sine-model couplings ``lambda``.
        weights: ``(K,)`` positive weights; default equal.
        grid: points per angle of the normalisation grid.

    Example:
        >>> t = TorusTarget()
        >>> x = t.sample(500, seed=0)
        >>> bool(((x >= -math.pi) & (x < math.pi)).all())
        True

    References:
        Singh, Hnizdo, Demchuk, "Probabilistic model for two dependent circular variables",
        Biometrika, 2002. Rezende et al., "Normalizing flows on tori and spheres", ICML 2020.
    """

    log_normalizer = 0.0

    def __init__(
        self,
        locs: Tensor | Sequence[Sequence[float]] = ((-1.1, -0.75), (-2.1, 2.3)),
        concentrations: float | Tensor | Sequence = ((12.0, 10.0), (4.0, 3.0)),
        correlations: float | Tensor | Sequence[float] = (2.0, -1.0),
        weights: Tensor | Sequence[float] | None = (0.6, 0.4),
        grid: int = 256,
    ) -> None:
        super().__init__(2)
        name = "TorusTarget"
        mu = _as64(name, "locs", locs)
        if mu.dim() != 2 or mu.shape[1] != 2:
            raise ValueError(f"{name}: expected locs of shape (K, 2), got {tuple(mu.shape)}")
        K = mu.shape[0]
        kap = _as64(name, "concentrations", concentrations)
        kap = torch.broadcast_to(kap[:, None] if kap.dim() == 1 else kap, (K, 2)).clone()
        lam = torch.broadcast_to(_as64(name, "correlations", correlations), (K,)).clone()
        w = torch.ones(K, dtype=torch.float64) if weights is None else _as64(name, "weights", weights, (K,))
        if not bool((kap >= 0).all()) or not bool((w > 0).all()) or grid < 16:
            raise ValueError(f"{name}: need concentrations >= 0, weights > 0 and grid >= 16")
        self.register_buffer("locs", mu)
        self.register_buffer("concentrations", kap)
        self.register_buffer("correlations", lam)
        self.register_buffer("weights", w / w.sum())
        h = 2 * math.pi / grid
        axis = -math.pi + h * (torch.arange(grid, dtype=torch.float64) + 0.5)
        pts = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        self.register_buffer("log_norms", torch.zeros(K, dtype=torch.float64))
        self.log_norms = torch.logsumexp(self._unnormalised(pts), dim=0) + 2 * math.log(h)
        self.grid = grid
        lip = float(((kap + lam.abs()[:, None]).square().sum(-1)).sqrt().max())
        self._margin = lip * h / math.sqrt(2)

    def _unnormalised(self, x: Tensor) -> Tensor:
        """``log f_k`` before normalisation, ``(*batch, K)``."""
        d = x.unsqueeze(-2) - self.locs.to(x)
        kap, lam = self.concentrations.to(x), self.correlations.to(x)
        s = torch.sin(d)
        return (kap * torch.cos(d)).sum(-1) + lam * s[..., 0] * s[..., 1]

    def _log_prob(self, x: Tensor) -> Tensor:
        comp = self._unnormalised(x) - self.log_norms.to(x) + self.weights.to(x).log()
        return torch.logsumexp(comp, dim=-1)

    def _sample(self, n: int, gen: torch.Generator | None) -> Tensor:
        g, h = self.grid, 2 * math.pi / self.grid
        cells = torch.arange(g, dtype=torch.float64)
        corners = torch.stack(torch.meshgrid(cells, cells, indexing="ij"), -1).reshape(-1, 2) * h - math.pi
        bound = self._log_prob(corners.to(self.locs) + 0.5 * h).cpu() + self._margin  # log level per cell
        probs = torch.softmax(bound, 0)
        out, have = [], 0
        while have < n:
            m = max(256, int(1.5 * (n - have) * math.exp(self._margin)))
            c = torch.multinomial(probs, m, replacement=True, generator=gen)
            x = corners[c] + h * torch.rand(m, 2, generator=gen, dtype=torch.float64)
            u = torch.rand(m, generator=gen, dtype=torch.float64)
            keep = x[u.log() < self._log_prob(x.to(self.locs)).cpu() - bound[c]]
            out.append(keep)
            have += keep.shape[0]
        return torch.cat(out)[:n]

    def extra_repr(self) -> str:
        return f"components={self.locs.shape[0]}"
