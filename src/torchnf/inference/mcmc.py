"""MCMC with flows, batched over chains: independence Metropolis-Hastings with a flow proposal,
NeuTra (MALA/HMC in a flow's latent space), adaptive flow MCMC, and plain MALA/HMC baselines.

All samplers take ``target`` (an unnormalised log-density ``(chains, dim) -> (chains,)``, e.g. a
:mod:`torchnf.targets` object), starting states ``x0`` of shape ``(chains, dim)`` and a number of
kept ``steps``; ``warmup`` further iterations come first (adaptation, refits) and are not kept. They
return an :class:`MCMCResult` with ``samples`` ``(steps, chains, dim)``, the per-chain log-target
trace, acceptance rates and evaluation counters, ready for :mod:`torchnf.inference.diagnostics`.

Which flow direction each sampler uses: ``independent_mh`` draws from the flow (inverse, the cheap
direction of IAF and coupling flows) and, with a defensive mixture, also evaluates densities
(forward); ``neutra`` differentiates through the inverse (IAF, coupling); ``adaptive_flow_mcmc``
samples (inverse), evaluates the current states (forward) and trains by maximum likelihood
(forward): coupling flows (RealNVP, NSF) are the natural choice there.

Example:
    >>> import torchnf as nf
    >>> target = nf.targets.Funnel(3)
    >>> res = nf.mcmc.mala(target, torch.zeros(8, 3), steps=100, seed=0)
    >>> res.samples.shape
    torch.Size([100, 8, 3])

References:
    Hoffman et al., "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using neural
    transport", 2019. Gabrié, Rotskoff, Vanden-Eijnden, "Adaptive Monte Carlo augmented with
    normalizing flows", PNAS, 2022. Hesterberg, "Weighted average importance sampling and
    defensive mixture distributions", Technometrics, 1995.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torchnf.inference._common import LogTarget, check_count, flow_inverse, mode, reference, seeded
from torchnf.inference.adaptive import adaptive_flow_mcmc
from torchnf.inference.chains import MCMCResult, _gradient_sampler, _initial, _Run, _start
from torchnf.inference.kernels import LogDensity, flow_jump

__all__ = ["MCMCResult", "independent_mh", "neutra", "adaptive_flow_mcmc", "mala", "hmc"]


def mala(
    target: LogTarget,
    x0: Tensor,
    steps: int,
    *,
    step_size: float | None = None,
    adapt: bool = True,
    warmup: int | None = None,
    target_accept: float | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> MCMCResult:
    r"""Metropolis-adjusted Langevin algorithm in the data space (a baseline).

    Proposal :math:`x' = x + \tfrac{\epsilon^2}{2}\nabla\log p(x) + \epsilon\xi`, one gradient
    evaluation per step; ``step_size`` (found by doubling/halving when ``None``) is adapted by dual
    averaging toward ``target_accept`` (default 0.574) during ``warmup`` (default ``steps // 2``
    when adapting) and then fixed.

    Args:
        target: log-density ``(chains, dim) -> (chains,)``.
        x0: starting states ``(chains, dim)``.
        steps: kept iterations.
        step_size: initial (or, with ``adapt=False``, fixed) step size.
        adapt: adapt the step size during warm-up.
        warmup: warm-up iterations.
        target_accept: acceptance rate the adaptation aims at.
        seed: seed of the run (the caller's RNG state is restored).
        progress: show a progress bar.

    References:
        Roberts, Tweedie, Bernoulli 1996; Roberts, Rosenthal, JRSS B 1998 (optimal 0.574).
    """
    x = _start("mala", x0, None, None)
    with seeded(seed, x.device):
        ld = LogDensity.of_target(target, "mala")
        return _gradient_sampler("mala", ld, x, steps, "mala", step_size, adapt, 1, warmup,
                                 target_accept, 0.0, progress, 0.1)


def hmc(
    target: LogTarget,
    x0: Tensor,
    steps: int,
    *,
    step_size: float | None = None,
    leapfrog: int = 10,
    adapt: bool = True,
    warmup: int | None = None,
    target_accept: float | None = None,
    jitter: float = 0.2,
    seed: int | None = None,
    progress: bool = False,
) -> MCMCResult:
    """Hamiltonian Monte Carlo with unit mass in the data space (a baseline).

    ``leapfrog`` gradient evaluations per step; the step size of each chain and step is jittered
    uniformly by ``+-jitter`` (avoids periodic trajectories) around the value adapted by dual
    averaging toward ``target_accept`` (default 0.65). Other arguments as in :func:`mala`.

    References:
        Duane et al., "Hybrid Monte Carlo", 1987; Neal, "MCMC using Hamiltonian dynamics", 2011.
    """
    x = _start("hmc", x0, None, None)
    with seeded(seed, x.device):
        ld = LogDensity.of_target(target, "hmc")
        return _gradient_sampler("hmc", ld, x, steps, "hmc", step_size, adapt, leapfrog, warmup,
                                 target_accept, jitter, progress, 0.1)


def _latent_density(owner: str, target: LogTarget, flow: Any, context: Tensor | None) -> LogDensity:
    def fn(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, ladj = flow_inverse(flow, z, context)
        # A far-out z can overflow the flow: such rows are rejected, never shown to the target.
        ok = torch.isfinite(x).all(-1) & torch.isfinite(ladj)
        x = torch.where(ok[:, None], x, torch.zeros_like(x))
        lp = torch.where(ok, target(x), -math.inf)
        return lp + ladj, x, lp

    return LogDensity(fn, owner)


def neutra(
    target: LogTarget,
    flow: Any,
    x0: Tensor | int,
    steps: int,
    *,
    kernel: str = "hmc",
    step_size: float | None = None,
    adapt: bool = True,
    leapfrog: int = 10,
    warmup: int | None = None,
    target_accept: float | None = None,
    jitter: float = 0.2,
    context: Tensor | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> MCMCResult:
    r"""NeuTra: MALA or HMC in the latent space of a flow fitted to the target.

    With the flow's sampling map :math:`x = f^{-1}(z)`, the chain moves ``z`` under the latent
    target

    .. math:: \log \pi(z) = \log p\big(f^{-1}(z)\big) + \log\big|\det J_{f^{-1}}(z)\big|,

    which is close to the flow's base (a standard normal) when the flow fits well, so a simple
    kernel mixes fast even where ``p`` has bad geometry (funnels, curved ridges). Samples are
    recorded in the data space. Each gradient evaluation differentiates through one inverse pass
    of the flow: use a flow whose inverse is cheap (IAF, coupling). Chains start at
    ``z0 = f(x0)``; ``x0`` may be an int (number of chains started from flow draws).

    Args:
        target: log-density ``(chains, dim) -> (chains,)``.
        flow: a :class:`~torchnf.Flow` fitted to the target (e.g. by ``fit_variational``).
        x0: starting states ``(chains, dim)`` or the number of chains.
        steps: kept iterations.
        kernel: ``"hmc"`` or ``"mala"``.
        step_size: initial step size (default: found by doubling/halving from 1).
        adapt: dual-averaging adaptation toward ``target_accept`` during warm-up.
        leapfrog: leapfrog steps per HMC iteration.
        warmup: warm-up iterations (default ``steps // 2`` when adapting).
        target_accept: default 0.65 (HMC) or 0.574 (MALA).
        jitter: relative step-size jitter of HMC.
        context: context of a conditional flow (the target is then conditioned on it too).
        seed: seed of the run (the caller's RNG state is restored).
        progress: show a progress bar.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> res = nf.mcmc.neutra(nf.targets.Banana(), flow, 4, steps=20, kernel="mala", seed=0)
        >>> res.samples.shape
        torch.Size([20, 4, 2])

    References:
        Hoffman, Sountsov, Dillon, Langmore, Tran, Vasudevan, "NeuTra-lizing bad geometry in
        Hamiltonian Monte Carlo using neural transport", 2019.
    """
    owner = "neutra"
    with seeded(seed, reference(flow)[1]), mode(flow, False):
        x = _start(owner, x0, flow, context)
        with torch.no_grad():
            z = flow.transform(x, context=context)
        ld = _latent_density(owner, target, flow, context)
        jitter = jitter if kernel == "hmc" else 0.0
        return _gradient_sampler(owner, ld, z, steps, kernel, step_size, adapt, leapfrog, warmup,
                                 target_accept, jitter, progress, 1.0)


def _defensive(flow: Any, defensive: float, scale: float, context: Tensor | None, dim: int):
    """Wide Gaussian ``N(m, scale^2 C)`` from the flow's own mean and covariance (4096 draws):
    returns ``(sample(n), log_prob(x))``."""
    with torch.no_grad():
        draws = flow.sample(4096, context=context)
        m = draws.mean(0)
        c = torch.cov(draws.T).reshape(dim, dim)
        c = c + 1e-6 * c.diagonal().mean().clamp_min(1e-12) * torch.eye(dim, dtype=c.dtype, device=c.device)
        L = torch.linalg.cholesky(c) * scale
    log_det = torch.log(torch.diagonal(L)).sum()

    def sample(n: int) -> Tensor:
        return m + torch.randn(n, dim, dtype=m.dtype, device=m.device) @ L.T

    def log_prob(x: Tensor) -> Tensor:
        u = torch.linalg.solve_triangular(L, (x - m).T, upper=False).T
        return -0.5 * u.square().sum(-1) - log_det - 0.5 * dim * math.log(2 * math.pi)

    return sample, log_prob


def independent_mh(
    target: LogTarget,
    flow: Any,
    x0: Tensor | int,
    steps: int,
    *,
    defensive: float = 0.0,
    defensive_scale: float = 2.0,
    warmup: int = 0,
    context: Tensor | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> MCMCResult:
    r"""Independence Metropolis-Hastings with the flow ``q`` as proposal.

    Each step draws ``x' ~ q`` for every chain and accepts with
    :math:`\min\big(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\big)` (one density evaluation of the target
    per chain, no gradient). The chain is exact whatever ``q`` is, and mixes as fast as ``q``
    covers ``p``: the acceptance rate is a direct check of the fit. With ``defensive = delta > 0``
    the proposal is the mixture ``(1 - delta) q + delta g`` with ``g`` a Gaussian of the flow's mean
    and ``defensive_scale`` times its covariance's square root, which bounds the weights where ``q``
    has too-light tails; it costs one extra forward (density) pass of the flow per step.

    Args:
        target: log-density ``(chains, dim) -> (chains,)``.
        flow: proposal :class:`~torchnf.Flow` (cheap sampling: IAF or coupling).
        x0: starting states ``(chains, dim)`` or the number of chains (started from flow draws).
        steps: kept iterations.
        defensive: mixture weight ``delta`` of the wide Gaussian, in ``[0, 1)``.
        defensive_scale: how much wider than the flow the Gaussian is.
        warmup: iterations run first and dropped.
        context: context of a conditional flow.
        seed: seed of the run (the caller's RNG state is restored).
        progress: show a progress bar.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> res = nf.mcmc.independent_mh(lambda x: -0.5 * (x**2).sum(-1), flow, 4, steps=10, seed=0)
        >>> float(res.acceptance.mean())
        1.0

    References:
        Tierney, "Markov chains for exploring posterior distributions", Annals of Statistics, 1994.
        Hesterberg, Technometrics 1995 (defensive mixtures).
    """
    owner = "independent_mh"
    if not 0 <= defensive < 1:
        raise ValueError(f"{owner}: defensive must be in [0, 1), got {defensive}")
    if not defensive_scale > 0:
        raise ValueError(f"{owner}: defensive_scale must be positive, got {defensive_scale}")
    check_count(owner, "warmup", warmup, 0)
    with seeded(seed, reference(flow)[1]), mode(flow, False), torch.no_grad():
        x = _start(owner, x0, flow, context)
        chains, dim = x.shape
        ld = LogDensity.of_target(target, owner)
        s = _initial(owner, ld, x, grad=False)
        if defensive > 0:
            g_sample, g_log_prob = _defensive(flow, defensive, defensive_scale, context, dim)
            a, b = math.log1p(-defensive), math.log(defensive)

            def log_q(x: Tensor) -> Tensor:
                return torch.logaddexp(a + flow.log_prob(x, context=context), b + g_log_prob(x))

            def propose() -> tuple[Tensor, Tensor]:
                xq = flow.sample(chains, context=context)
                use_g = torch.rand(chains, device=x.device) < defensive
                xp = torch.where(use_g[:, None], g_sample(chains), xq)
                return xp, log_q(xp)
        else:
            def log_q(x: Tensor) -> Tensor:
                return flow.log_prob(x, context=context)

            def propose() -> tuple[Tensor, Tensor]:
                return flow.sample_and_log_prob(chains, context=context)

        lq = log_q(x)
        run = _Run(owner, steps, warmup, chains, progress)
        for _, warming in run.iterations(ld):
            s, _, take, lq = flow_jump(ld, s, lq, propose(), grad=False)
            if not warming:
                run.record(s, take)
        return run.result(ld, None)
