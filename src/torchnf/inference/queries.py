r"""Probability queries with error bars: Monte Carlo over a flow's own samples.

For a flow ``q`` and ``n`` independent draws ``x_i ~ q``:

* :func:`probability`: :math:`P_q(x\in A) \approx \frac1n\sum_i 1[x_i\in A]`, standard error
  :math:`\sqrt{\hat p(1-\hat p)/n}`, Wilson score interval;
* :func:`expectation`: :math:`E_q[f(x)] \approx \frac1n\sum_i f(x_i)`, standard error
  :math:`\hat\sigma_f/\sqrt n`, normal interval;
* :func:`marginal_cdf`: :math:`P_q(x_i \le v)` for many thresholds ``v`` from one set of draws;
* :func:`log_normalizer`: importance-sampling estimate of :math:`\log Z` for an unnormalised target
  :math:`\tilde p` with the flow as proposal, :math:`\log \frac1n\sum_i \tilde p(x_i)/q(x_i)`, with
  its delta-method standard error and the Pareto :math:`\hat k` that says whether to trust it.

Sampling uses the flow's inverse (one pass per layer for IAF and coupling flows, ``dim`` passes
for MAF) in batches of ``batch`` draws, under ``torch.no_grad`` and in ``eval()`` mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from torchnf.core import all_finite
from torchnf.inference._common import LogTarget, check_count, chunks, mode, reference, seeded
from torchnf.inference.diagnostics import importance_diagnostics

__all__ = ["Estimate", "probability", "expectation", "marginal_cdf", "log_normalizer"]


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"Estimate.interval: level must be in (0, 1), got {level}")
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()


@dataclass
class Estimate:
    """A Monte Carlo estimate with its standard error.

    Attributes:
        estimate: the value (a float, or a tensor for vector-valued queries).
        stderr: its standard error (same shape).
        n: number of draws behind it.
        kind: ``"probability"`` (Wilson interval, clipped to [0, 1]), ``"mean"`` or ``"log"``.
        pareto_k: Pareto k of the importance weights (``log_normalizer`` only).

    Example:
        >>> e = Estimate(0.25, 0.01, 1000, "mean")
        >>> e.interval(0.95)
        (0.2304..., 0.2695...)
    """

    estimate: float | Tensor
    stderr: float | Tensor
    n: int
    kind: str = "mean"
    pareto_k: float | None = None

    def interval(self, level: float = 0.95) -> tuple[float | Tensor, float | Tensor]:
        """Two-sided confidence interval at ``level``: normal for means and log-normalisers; the
        Wilson score interval for probabilities (sensible near 0 and 1, never outside [0, 1])."""
        z = _z(level)
        if self.kind != "probability":
            return self.estimate - z * self.stderr, self.estimate + z * self.stderr
        p = torch.as_tensor(self.estimate, dtype=torch.float64)
        n = self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        # Exact 0 and 1 at the extremes (the formula leaves rounding residue there).
        lo = torch.where(p <= 0, 0.0, (centre - half).clamp(0, 1))
        hi = torch.where(p >= 1, 1.0, (centre + half).clamp(0, 1))
        if isinstance(self.estimate, Tensor):
            return lo, hi
        return float(lo), float(hi)

    def __float__(self) -> float:
        return float(self.estimate)

    def __repr__(self) -> str:
        if isinstance(self.estimate, Tensor):
            return f"Estimate(estimate={self.estimate}, stderr={self.stderr}, n={self.n})"
        return f"Estimate({self.estimate:.6g} +- {self.stderr:.2g}, n={self.n})"


def _draw_batches(flow, n: int, batch: int, context: Tensor | None, seed: int | None, owner: str):
    check_count(owner, "n", n, 2)
    check_count(owner, "batch", batch)
    with seeded(seed, reference(flow)[1]), mode(flow, False), torch.no_grad():
        for m in chunks(n, batch):
            yield flow.sample(m, context=context)


def _mean_and_stderr(sums: Tensor, sq: Tensor, n: int) -> tuple[Tensor, Tensor]:
    mean = sums / n
    var = (sq / n - mean.square()).clamp_min(0) * n / (n - 1)
    return mean, (var / n).sqrt()


def _finish(mean: Tensor, se: Tensor, n: int, kind: str) -> Estimate:
    if mean.dim() == 0:
        return Estimate(float(mean), float(se), n, kind)
    return Estimate(mean, se, n, kind)


def probability(
    flow, region: Callable[[Tensor], Tensor], *, n: int = 100_000, context: Tensor | None = None,
    batch: int = 10_000, seed: int | None = None,
) -> Estimate:
    """Probability that ``x ~ flow`` lies in ``region``.

    Args:
        flow: a :class:`~torchnf.Flow`.
        region: ``x (m, *event) -> bool (m,)`` membership test (a float 0/1 tensor also works).
        n: number of draws.
        context: context of a conditional flow.
        batch: draws per batch.
        seed: seed (the caller's RNG state is restored).

    Returns:
        :class:`Estimate` with ``kind="probability"``.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> p = probability(flow, lambda x: x[:, 0] > 1.0, n=20_000, seed=0)
        >>> abs(p.estimate - 0.1587) < 4 * p.stderr
        True
    """
    def fn(x: Tensor) -> Tensor:
        inside = region(x)
        if not isinstance(inside, Tensor) or inside.shape != x.shape[:1]:
            got = tuple(inside.shape) if isinstance(inside, Tensor) else type(inside).__name__
            raise ValueError(
                f"probability: region must map x of shape {tuple(x.shape)} to ({x.shape[0]},), got {got}"
            )
        return inside.to(torch.float64)

    est = expectation(flow, fn, n=n, context=context, batch=batch, seed=seed)
    p = est.estimate
    est.stderr = math.sqrt(max(p * (1 - p), 0.0) / n)
    est.kind = "probability"
    return est


def expectation(
    flow, fn: Callable[[Tensor], Tensor], *, n: int = 100_000, context: Tensor | None = None,
    batch: int = 10_000, seed: int | None = None,
) -> Estimate:
    """Expectation of ``fn(x)`` under the flow, with its Monte Carlo standard error.

    Args:
        flow: a :class:`~torchnf.Flow`.
        fn: ``x (m, *event) -> (m,)`` or ``(m, k)`` (vector-valued: one estimate per column).
        n, context, batch, seed: as in :func:`probability`.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> e = expectation(flow, lambda x: x.square().sum(-1), n=20_000, seed=0)
        >>> abs(e.estimate - 2.0) < 4 * e.stderr
        True
    """
    sums = sq = None
    for x in _draw_batches(flow, n, batch, context, seed, "expectation"):
        v = fn(x)
        if not isinstance(v, Tensor) or v.dim() not in (1, 2) or v.shape[0] != x.shape[0]:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            m = x.shape[0]
            raise ValueError(f"expectation: fn must map {m} draws to ({m},) or ({m}, k), got {got}")
        v = v.detach().to(torch.float64)
        if not all_finite(v):
            raise ValueError("expectation: fn returned NaN or inf")
        s, q = v.sum(0), v.square().sum(0)
        sums, sq = (s, q) if sums is None else (sums + s, sq + q)
    return _finish(*_mean_and_stderr(sums, sq, n), n, "mean")


def marginal_cdf(
    flow, i: int, values: Tensor | float, *, n: int = 100_000, context: Tensor | None = None,
    batch: int = 10_000, seed: int | None = None,
) -> Estimate:
    """Marginal CDF ``P(x_i <= v)`` of coordinate ``i`` at each threshold in ``values``.

    All thresholds share one set of draws. Returns an :class:`Estimate` whose ``estimate`` and
    ``stderr`` have the shape of ``values`` (a float for a scalar threshold).

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> cdf = marginal_cdf(flow, 0, torch.tensor([-1.0, 0.0, 1.0]), n=20_000, seed=0)
        >>> cdf.estimate.shape
        torch.Size([3])
    """
    dim = flow.event_shape.numel()
    if len(flow.event_shape) != 1 or not isinstance(i, int) or not -dim <= i < dim:
        raise ValueError(f"marginal_cdf: i must index a coordinate of vector events of size {dim}, got {i!r}")
    v = torch.as_tensor(values, dtype=torch.float64)
    flat = v.reshape(-1)

    def fn(x: Tensor) -> Tensor:
        return (x[:, i, None].to(torch.float64) <= flat).to(torch.float64)

    est = expectation(flow, fn, n=n, context=context, batch=batch, seed=seed)
    p = est.estimate
    se = (p * (1 - p) / n).clamp_min(0).sqrt()
    if v.dim() == 0:
        return Estimate(float(p[0]), float(se[0]), n, "probability")
    return Estimate(p.reshape(v.shape), se.reshape(v.shape), n, "probability")


def log_normalizer(
    target_log_prob: LogTarget, flow, *, n: int = 100_000, context: Tensor | None = None,
    batch: int = 10_000, seed: int | None = None,
) -> Estimate:
    r"""Importance-sampling estimate of ``log Z = log \int p~(x) dx`` with the flow as proposal.

    ``log Z ~ log mean_i p~(x_i)/q(x_i)``, standard error by the delta method; ``pareto_k`` of the
    result says whether the weights' variance is finite (``< 0.5``) or the estimate unreliable
    (``> 0.7``, when the flow misses mass of the target). The estimate of ``Z`` is unbiased, that of
    ``log Z`` is biased low by about ``stderr^2 / 2``.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> est = log_normalizer(lambda x: -0.5 * (x**2).sum(-1), flow, n=5000, seed=0)
        >>> abs(est.estimate - math.log(2 * math.pi)) < 1e-3
        True
    """
    d = importance_diagnostics(flow, target_log_prob, n=n, batch=batch, context=context, seed=seed)
    return Estimate(d.log_evidence, d.log_evidence_stderr, n, "log", d.pareto_k)
