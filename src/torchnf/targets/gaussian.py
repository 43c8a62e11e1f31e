"""Gaussian targets: a (possibly ill-conditioned) normal and a multimodal mixture, with exact samples
and moments."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.targets.base import _LOG_2PI, Target, _as64, _generator

__all__ = ["GaussianTarget", "GaussianMixtureTarget"]


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
