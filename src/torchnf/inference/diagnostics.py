r"""MCMC and importance-sampling diagnostics.

MCMC draws are arrays (tensors or numpy) of shape ``(draws, chains, *params)`` — the layout of
:attr:`torchnf.inference.mcmc.MCMCResult.samples` — or ``(draws, chains)`` or ``(draws,)`` for one
chain; every function returns one value per parameter (numpy, float64).

* :func:`split_rhat`: rank-normalised split :math:`\hat R`, the maximum of the bulk and the folded
  (tail) versions; values above 1.01 (strict) or 1.1 (lenient) flag chains that disagree.
* :func:`ess_bulk`, :func:`ess_tail`, :func:`ess_mean`: effective sample sizes from the multi-chain
  autocorrelation with Geyer's initial monotone sequence, on rank-normalised split chains (bulk),
  on the 5% and 95% quantile indicators (tail) or on the raw values (for the Monte Carlo error of a
  mean, :func:`mcse_mean`).
* :func:`ess_per_second`, :func:`ess_per_gradient`: efficiency of a sampler's run.
* :func:`pareto_khat`: shape of a generalised Pareto fit to the largest importance weights (below
  0.5 good, 0.5-0.7 usable with care, above 0.7 unreliable); :func:`importance_diagnostics` runs the
  importance-sampling checks of a fitted flow against an unnormalised target.

References:
    Vehtari, Gelman, Simpson, Carpenter, Bürkner, "Rank-normalization, folding, and localization:
    an improved R-hat for assessing convergence of MCMC", Bayesian Analysis, 2021.
    Geyer, "Practical Markov chain Monte Carlo", Statistical Science, 1992.
    Zhang, Stephens, "A new and efficient estimation method for the generalized Pareto
    distribution", Technometrics, 2009.
    Vehtari, Simpson, Gelman, Yao, Gabry, "Pareto smoothed importance sampling", JMLR, 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchnf.inference._common import (
    LogTarget,
    check_count,
    check_log_target,
    chunks,
    mode,
    reference,
    seeded,
)

__all__ = [
    "split_rhat",
    "ess_bulk",
    "ess_tail",
    "ess_mean",
    "mcse_mean",
    "summary",
    "ess_per_second",
    "ess_per_gradient",
    "pareto_khat",
    "importance_diagnostics",
    "ImportanceDiagnostics",
]


# --------------------------------------------------------------------------------------------
# Array plumbing
# --------------------------------------------------------------------------------------------


def _draws(samples: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(params, chains, draws)`` float64 array and the parameter shape."""
    if isinstance(samples, Tensor):
        samples = samples.detach().cpu().double().numpy()
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim < 2 or a.shape[0] < 4:
        raise ValueError(f"diagnostics: expected draws of shape (draws >= 4, chains, *params), got {a.shape}")
    pshape = a.shape[2:]
    a = a.reshape(a.shape[0], a.shape[1], -1)
    return np.ascontiguousarray(a.transpose(2, 1, 0)), pshape


def _split(x: np.ndarray) -> np.ndarray:
    """``(chains, draws)`` -> ``(2 chains, draws // 2)``: first and second halves (middle draw dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _rank_normalize(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (ties get their average rank), Blom's offset 3/8."""
    flat = x.ravel()
    order = np.argsort(flat, kind="mergesort")
    _, start, counts = np.unique(flat[order], return_index=True, return_counts=True)
    ranks = np.empty_like(flat)
    ranks[order] = np.repeat(start + (counts + 1) / 2.0, counts)
    p = torch.from_numpy((ranks - 0.375) / (flat.size + 0.25))
    return torch.special.ndtri(p).numpy().reshape(x.shape)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each row of ``(chains, n)`` at lags ``0..n-1`` (via FFT)."""
    n = x.shape[1]
    c = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(c, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _ess(x: np.ndarray) -> float:
    """Multi-chain ESS of one ``(chains, n)`` array (Geyer's initial monotone sequence)."""
    m, n = x.shape
    if not np.all(np.isfinite(x)):
        return math.nan
    acov = _autocov(x)
    within = acov[:, 0].mean() * n / (n - 1)
    var_plus = within * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    if not var_plus > 0:
        return math.nan
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    pairs = rho[: 2 * ((n - 2) // 2)].reshape(-1, 2).sum(axis=1)
    negative = np.nonzero(pairs < 0)[0]
    if negative.size:
        pairs = pairs[: negative[0]]
    pairs = np.minimum.accumulate(pairs)
    tau = -1.0 + 2.0 * pairs.sum()
    total = m * n
    return total / max(tau, 1.0 / math.log10(total))


def _rhat(x: np.ndarray) -> float:
    m, n = x.shape
    within = x.var(axis=1, ddof=1).mean()
    between = x.mean(axis=1).var(ddof=1)
    if not within > 0:
        return math.inf if between > 0 else math.nan
    return math.sqrt(((n - 1) / n * within + between) / within)


def _per_param(samples: Any, fn: Any) -> np.ndarray:
    a, pshape = _draws(samples)
    out = np.array([fn(a[i]) for i in range(a.shape[0])])
    return out.reshape(pshape) if pshape else out.reshape(())


# --------------------------------------------------------------------------------------------
# R-hat and ESS
# --------------------------------------------------------------------------------------------


def split_rhat(samples: Any) -> np.ndarray:
    r"""Rank-normalised split :math:`\hat R` (Vehtari et al. 2021) per parameter.

    Each chain is split in halves; ``max(R(z(x)), R(z(|x - median x|)))`` where ``z`` replaces
    draws by the normal scores of their pooled ranks and
    :math:`R = \sqrt{(\tfrac{n-1}{n}W + B/n)/W}` (within-chain variance ``W``, between-chain
    ``B``). Chains that never move but sit at different values give a huge value (or ``inf``).

    Example:
        >>> x = torch.randn(1000, 4, 2)
        >>> bool((split_rhat(x) < 1.01).all())
        True
    """

    def one(x: np.ndarray) -> float:
        s = _split(x)
        folded = np.abs(s - np.median(s))
        return max(_rhat(_rank_normalize(s)), _rhat(_rank_normalize(folded)))

    return _per_param(samples, one)


def ess_bulk(samples: Any) -> np.ndarray:
    """Bulk effective sample size: ESS of the rank-normalised split chains (Vehtari et al. 2021)."""
    return _per_param(samples, lambda x: _ess(_rank_normalize(_split(x))))


def ess_tail(samples: Any) -> np.ndarray:
    """Tail effective sample size: the smaller ESS of the indicators ``x <= q_0.05`` and
    ``x <= q_0.95`` on split chains (Vehtari et al. 2021)."""

    def one(x: np.ndarray) -> float:
        s = _split(x)
        lo, hi = np.quantile(s, [0.05, 0.95])
        return min(_ess((s <= lo).astype(np.float64)), _ess((s <= hi).astype(np.float64)))

    return _per_param(samples, one)


def ess_mean(samples: Any) -> np.ndarray:
    """ESS of the raw split chains: the one that sets the Monte Carlo error of a mean."""
    return _per_param(samples, lambda x: _ess(_split(x)))


def mcse_mean(samples: Any) -> np.ndarray:
    """Monte Carlo standard error of the posterior mean: ``sd / sqrt(ess_mean)``."""
    a, pshape = _draws(samples)
    sd = a.reshape(a.shape[0], -1).std(axis=1, ddof=1)
    return (sd / np.sqrt(ess_mean(samples).reshape(-1))).reshape(pshape)


def summary(samples: Any) -> dict[str, np.ndarray]:
    """Per-parameter ``mean``, ``sd``, ``mcse_mean``, ``ess_bulk``, ``ess_tail`` and ``rhat``."""
    a, pshape = _draws(samples)
    flat = a.reshape(a.shape[0], -1)
    return {
        "mean": flat.mean(axis=1).reshape(pshape),
        "sd": flat.std(axis=1, ddof=1).reshape(pshape),
        "mcse_mean": mcse_mean(samples),
        "ess_bulk": ess_bulk(samples),
        "ess_tail": ess_tail(samples),
        "rhat": split_rhat(samples),
    }


def ess_per_second(result: Any) -> np.ndarray:
    """Bulk ESS of ``result.samples`` divided by the run's wall-clock seconds (warm-up included)."""
    return ess_bulk(result.samples) / max(result.seconds, 1e-12)


def ess_per_gradient(result: Any, include_warmup: bool = True) -> np.ndarray:
    """Bulk ESS per gradient evaluation of the target, summed over chains.

    Density-only evaluations (independence proposals) count as one gradient evaluation each, so
    samplers that need no gradient are not credited with a free lunch. ``include_warmup`` counts
    the warm-up (adaptation, refits' sampling) cost too.
    """
    cost = result.grad_evals + result.target_evals
    if include_warmup:
        cost = cost + result.warmup_grad_evals + result.warmup_target_evals
    return ess_bulk(result.samples) / max(cost * result.samples.shape[1], 1)


# --------------------------------------------------------------------------------------------
# Importance sampling
# --------------------------------------------------------------------------------------------


def _gpd_shape(x: np.ndarray) -> float:
    """Zhang-Stephens posterior-mean estimate of the generalised Pareto shape ``xi`` of the
    exceedances ``x`` (sorted ascending, positive)."""
    n = x.size
    m = 30 + int(math.sqrt(n))
    j = np.arange(1, m + 1, dtype=np.float64)
    quartile = x[max(int(math.floor(n / 4 + 0.5)) - 1, 0)]
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * quartile)
    k = -np.log1p(-theta[:, None] * x[None, :]).mean(axis=1)
    profile = n * (np.log(theta / k) + k - 1.0)
    profile = np.where(np.isfinite(profile), profile, -np.inf)
    w = np.exp(profile - profile.max())
    theta_hat = float((w * theta).sum() / w.sum())
    xi = float(np.log1p(-theta_hat * x).mean())
    # Weakly informative prior pulling xi toward 0.5 (PSIS), worth 10 observations.
    return (n * xi + 10 * 0.5) / (n + 10)


def pareto_khat(log_weights: Any) -> float:
    r"""Pareto :math:`\hat k` of importance weights given by their logarithms.

    Fits a generalised Pareto distribution to the ``M = ceil(min(S/5, 3 sqrt(S)))`` largest
    weights' exceedances over the next largest, by the Zhang & Stephens (2009) estimator with the
    weakly informative prior of PSIS (Vehtari et al. 2024). The weights have about ``1/k`` finite
    moments: ``k < 0.5`` means finite variance; ``k > 0.7`` means importance sampling (and the
    evidence estimate) cannot be trusted. Equal weights give ``-inf``.

    Example:
        >>> k = pareto_khat(torch.randn(10_000) * 0.1)
        >>> k < 0.5
        True
    """
    if isinstance(log_weights, Tensor):
        log_weights = log_weights.detach().cpu().double().numpy()
    lw = np.sort(np.asarray(log_weights, dtype=np.float64).ravel())
    if lw.size < 20 or np.isnan(lw).any() or lw[-1] == np.inf:
        return math.nan
    if lw[-1] == -np.inf:
        return math.nan
    S = lw.size
    M = int(math.ceil(min(0.2 * S, 3.0 * math.sqrt(S))))
    w = np.exp(lw - lw[-1])
    exceed = w[S - M :] - w[S - M - 1]
    exceed = exceed[exceed > 0]
    if exceed.size < 5:
        return -math.inf
    return _gpd_shape(exceed)


@dataclass
class ImportanceDiagnostics:
    """How well a flow ``q`` covers a target ``p~``, from ``n`` draws of ``q`` with weights
    ``w = p~(x) / q(x)``.

    Attributes:
        log_evidence: ``log mean w``, an unbiased-in-``Z`` estimate of ``log Z``.
        log_evidence_stderr: its standard error by the delta method, ``sd(w) / (sqrt(n) mean(w))``
            (meaningless when ``pareto_k > 0.7``).
        ess: normalised effective sample size ``(sum w)^2 / (n sum w^2)`` in ``(0, 1]``.
        pareto_k: :func:`pareto_khat` of the weights.
        elbo: ``mean log w``, a lower bound on ``log Z``.
        n: number of draws.
    """

    log_evidence: float
    log_evidence_stderr: float
    ess: float
    pareto_k: float
    elbo: float
    n: int

    @property
    def reliable(self) -> bool:
        """``pareto_k`` below the sample-size-dependent threshold ``min(1 - 1/log10(n), 0.7)``."""
        return self.pareto_k < min(1.0 - 1.0 / math.log10(max(self.n, 11)), 0.7)


def log_weights(
    flow: Any, log_target: LogTarget, n: int, batch: int, context: Tensor | None, owner: str
) -> Tensor:
    """``log p~(x) - log q(x)`` for ``n`` draws ``x ~ q`` (float64, ``(n,)``); ``-inf`` targets are
    zero weights, NaN or ``+inf`` raise."""
    out = []
    with torch.no_grad(), mode(flow, False):
        for m in chunks(n, batch):
            x, lq = flow.sample_and_log_prob(m, context=context)
            lp = check_log_target(owner, log_target(x), x, allow_neg_inf=True)
            out.append((lp - lq).double())
    return torch.cat(out)


def importance_diagnostics(
    flow: Any,
    log_target: LogTarget,
    *,
    n: int = 10_000,
    batch: int = 4096,
    context: Tensor | None = None,
    seed: int | None = None,
) -> ImportanceDiagnostics:
    r"""Importance-sampling checks of a flow ``q`` fitted to an unnormalised target ``p~``.

    Draws ``n`` samples from ``q`` (its sampling direction, one inverse pass per batch), weights
    them by ``w = p~(x)/q(x)`` and reports the evidence estimate ``log Z ~ log mean w`` with its
    delta-method standard error, the normalised ESS and the Pareto :math:`\hat k`.

    Args:
        flow: a fitted :class:`~torchnf.Flow`.
        log_target: unnormalised log-density, ``(n, dim) -> (n,)``.
        n: number of draws.
        batch: draws per batch.
        context: optional context of a conditional flow (and target).
        seed: seed for the draws (the caller's RNG state is restored).

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> d = importance_diagnostics(flow, lambda x: -0.5 * (x**2).sum(-1), n=2000, seed=0)
        >>> abs(d.log_evidence - math.log(2 * math.pi)) < 1e-4
        True

    References:
        Vehtari et al., "Pareto smoothed importance sampling", JMLR 2024.
    """
    owner = "importance_diagnostics"
    check_count(owner, "n", n, 20)
    check_count(owner, "batch", batch)
    with seeded(seed, reference(flow)[1]):
        lw = log_weights(flow, log_target, n, batch, context, owner)
    top = float(lw.max())
    if top == -math.inf:
        raise ValueError(f"{owner}: every draw of the flow has zero target density")
    w = torch.exp(lw - top)
    mean = float(w.mean())
    return ImportanceDiagnostics(
        log_evidence=top + math.log(mean),
        log_evidence_stderr=float(w.std()) / (math.sqrt(n) * mean),
        ess=float(w.sum() ** 2 / (n * w.square().sum())),
        pareto_k=pareto_khat(lw),
        elbo=float(lw.mean()),
        n=n,
    )
