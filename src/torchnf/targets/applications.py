"""Targets from applications: a Bayesian logistic-regression posterior on user data, and a density of
two angles (protein backbone dihedrals) on the torus."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.targets.base import _LOG_2PI, Target, _as64, _generator

__all__ = ["LogisticRegression", "TorusTarget"]


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
