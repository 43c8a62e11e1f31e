r"""MCMC with flows, batched over chains: independence Metropolis-Hastings with a flow proposal,
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchnf.inference._common import (
    LogTarget,
    check_count,
    flow_inverse,
    mode,
    reference,
    seeded,
)
from torchnf.inference.kernels import (
    DualAveraging,
    LogDensity,
    State,
    find_step_size,
    flow_jump,
    hmc_step,
    mala_step,
)

__all__ = ["MCMCResult", "independent_mh", "neutra", "adaptive_flow_mcmc", "mala", "hmc"]

_DEFAULT_ACCEPT = {"mala": 0.574, "hmc": 0.65}


@dataclass
class MCMCResult:
    """Output of a sampler.

    Attributes:
        samples: kept states ``(steps, chains, dim)``.
        log_target: target log-density of each kept state ``(steps, chains)``.
        acceptance: fraction of accepted proposals per chain over the kept steps ``(chains,)``.
        grad_evals: target gradient evaluations per chain over the kept steps.
        target_evals: density-only target evaluations per chain over the kept steps.
        warmup_grad_evals: gradient evaluations per chain during warm-up (step-size search included).
        warmup_target_evals: density-only evaluations per chain during warm-up.
        seconds: wall-clock time of the whole run.
        step_size: final step size of a gradient kernel (``None`` for independence samplers).
        info: extras: ``nonfinite`` (proposals rejected for a NaN/inf density, position or
            gradient: divergences), and per sampler e.g. ``jump_acceptance`` or ``refit_loss``.
    """

    samples: Tensor
    log_target: Tensor
    acceptance: Tensor
    grad_evals: int
    target_evals: int
    warmup_grad_evals: int
    warmup_target_evals: int
    seconds: float
    step_size: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict:
        """Per-coordinate mean, sd, Monte Carlo error, bulk/tail ESS and R-hat."""
        from torchnf.inference.diagnostics import summary

        return summary(self.samples)


def _start(owner: str, x0: Tensor | int, flow: Any, context: Tensor | None) -> Tensor:
    if isinstance(x0, int) and not isinstance(x0, bool):
        if flow is None:
            raise ValueError(f"{owner}: x0 must be a tensor of shape (chains, dim)")
        check_count(owner, "x0 (number of chains)", x0)
        with torch.no_grad(), mode(flow, False):
            return flow.sample(x0, context=context).detach()
    if not isinstance(x0, Tensor) or x0.dim() != 2 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"{owner}: expected x0 of shape (chains, dim) (floating point), got {shape}")
    if flow is not None:
        dtype, device = reference(flow)
        if x0.dtype != dtype or x0.device != device:
            raise TypeError(f"{owner}: x0 is {x0.dtype} on {x0.device} but the flow is {dtype} on {device}")
    return x0.detach()


def _initial(owner: str, ld: LogDensity, x: Tensor, grad: bool) -> State:
    return ld(x, grad=grad, strict=True)  # the starting states must have a finite density


class _Run:
    """Step loop shared by the samplers: warm-up then kept steps, recording and counting."""

    def __init__(self, owner: str, steps: int, warmup: int, chains: int, progress: bool) -> None:
        self.owner, self.steps, self.warmup = owner, check_count(owner, "steps", steps), warmup
        self.accepted = torch.zeros(chains)
        self.proposals = 0
        self.start = time.perf_counter()
        self.samples: list[Tensor] = []
        self.lps: list[Tensor] = []
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=warmup + steps, desc=owner, unit="step")
        self.counts: dict[str, int] = {}

    def iterations(self, ld: LogDensity) -> Any:
        for t in range(self.warmup + self.steps):
            if t == self.warmup:
                self.counts = {"wg": ld.grads, "we": ld.evals}
            yield t, t < self.warmup
            if self.bar is not None:
                self.bar.update()
        if self.bar is not None:
            self.bar.close()

    def record(self, s: State, take: Tensor | None) -> None:
        self.samples.append(s.out)
        self.lps.append(s.out_lp)
        if take is not None:
            self.accepted += take.detach().to(self.accepted.device, torch.float32)
            self.proposals += 1

    def result(self, ld: LogDensity, step_size: float | None, **info: Any) -> MCMCResult:
        wg, we = self.counts.get("wg", ld.grads), self.counts.get("we", ld.evals)
        info["nonfinite"] = ld.nonfinite
        return MCMCResult(
            samples=torch.stack(self.samples),
            log_target=torch.stack(self.lps),
            acceptance=self.accepted / max(self.proposals, 1),
            grad_evals=ld.grads - wg,
            target_evals=ld.evals - we,
            warmup_grad_evals=wg,
            warmup_target_evals=we,
            seconds=time.perf_counter() - self.start,
            step_size=step_size,
            info=info,
        )


def _gradient_sampler(
    owner: str,
    ld: LogDensity,
    x: Tensor,
    steps: int,
    kernel: str,
    step_size: float | None,
    adapt: bool,
    leapfrog: int,
    warmup: int | None,
    target_accept: float | None,
    jitter: float,
    progress: bool,
    eps0: float,
) -> MCMCResult:
    if kernel not in _DEFAULT_ACCEPT:
        raise ValueError(f"{owner}: kernel must be 'mala' or 'hmc', got {kernel!r}")
    check_count(owner, "leapfrog", leapfrog)
    if step_size is not None and not step_size > 0:
        raise ValueError(f"{owner}: step_size must be positive, got {step_size}")
    if not 0 <= jitter < 1:
        raise ValueError(f"{owner}: jitter must be in [0, 1), got {jitter}")
    delta = _DEFAULT_ACCEPT[kernel] if target_accept is None else float(target_accept)
    if not 0 < delta < 1:
        raise ValueError(f"{owner}: target_accept must be in (0, 1), got {target_accept}")
    warmup = (steps // 2 if adapt else 0) if warmup is None else check_count(owner, "warmup", warmup, 0)
    s = _initial(owner, ld, x, grad=True)
    chains = x.shape[0]

    def move(state: State, eps: float) -> tuple[State, Tensor, Tensor]:
        e = torch.full((chains, 1), eps, dtype=x.dtype, device=x.device)
        if jitter:
            e = e * (1 + jitter * (2 * torch.rand_like(e) - 1))
        if kernel == "mala":
            return mala_step(ld, state, e)
        return hmc_step(ld, state, e, leapfrog)

    eps = step_size if step_size is not None else find_step_size(lambda e: move(s, e)[1], eps0)
    da = DualAveraging(eps, delta) if adapt else None
    run = _Run(owner, steps, warmup, chains, progress)
    for t, warming in run.iterations(ld):
        s, prob, take = move(s, eps)
        if warming:
            if da is not None:
                eps = da.update(float(prob.mean()))
                if t == warmup - 1:
                    eps = da.final
            continue
        run.record(s, take)
    return run.result(ld, eps)


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
        >>> res = nf.mcmc.neutra(nf.targets.Banana(), flow, 4, steps=20, seed=0)
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


def adaptive_flow_mcmc(
    target: LogTarget,
    flow: Any,
    x0: Tensor,
    steps: int,
    *,
    local: str = "mala",
    jump_every: int = 5,
    refit_every: int = 10,
    refit_steps: int = 10,
    lr: float = 1e-3,
    batch: int = 512,
    buffer: int = 50,
    warmup: int | None = None,
    step_size: float | None = None,
    leapfrog: int = 5,
    target_accept: float | None = None,
    seed: int | None = None,
    progress: bool = False,
    callback: Callable[[int, Any], Any] | None = None,
) -> MCMCResult:
    r"""Adaptive flow MCMC: local MALA (or HMC) steps interleaved with flow independence jumps,
    the flow being refitted on the chains' states as they run (Gabrié, Rotskoff, Vanden-Eijnden 2022).

    Every ``jump_every``-th iteration is an independence Metropolis-Hastings jump with the flow as
    proposal (all chains at once); the others are local gradient steps, whose step size is adapted
    by dual averaging during warm-up. During warm-up, every ``refit_every`` iterations the flow
    takes ``refit_steps`` Adam steps on ``-mean log q(x)`` over ``batch`` states drawn from the last
    ``buffer`` iterations of all chains. No gradient of the target is spent on training. Local steps
    explore each mode; jumps carry chains between modes and reweight them, so chains started in
    some of the modes (every mode should hold at least one chain) reach the right mode weights.
    After warm-up the flow is frozen, so the kept iterations form a valid (non-adaptive) chain.
    The flow is trained in place; use a flow with cheap density and sampling (coupling flows).

    Args:
        target: log-density ``(chains, dim) -> (chains,)``.
        flow: :class:`~torchnf.Flow`, trained or not; refitted in place during warm-up.
        x0: starting states ``(chains, dim)``.
        steps: kept iterations.
        local: ``"mala"`` or ``"hmc"``.
        jump_every: period of flow jumps (every iteration when 1).
        refit_every: period of refits during warm-up.
        refit_steps: Adam steps per refit.
        lr: Adam learning rate.
        batch: states per Adam step.
        buffer: how many recent iterations (times all chains) the refits draw from.
        warmup: warm-up iterations (default ``steps // 2``).
        step_size: initial step size of the local kernel.
        leapfrog: leapfrog steps of HMC.
        target_accept: of the local kernel (default 0.574 MALA, 0.65 HMC).
        seed: seed of the run (the caller's RNG state is restored).
        progress: show a progress bar.
        callback: called as ``callback(iteration, state_x)`` after each warm-up iteration.

    Returns:
        :class:`MCMCResult` with ``info["jump_acceptance"]`` (per chain, kept steps),
        ``info["local_acceptance"]`` and ``info["refit_loss"]`` (mean NLL of each refit).

    References:
        Gabrié, Rotskoff, Vanden-Eijnden, "Adaptive Monte Carlo augmented with normalizing flows",
        PNAS, 2022.
    """
    owner = "adaptive_flow_mcmc"
    for name, v in (("jump_every", jump_every), ("refit_every", refit_every), ("refit_steps", refit_steps),
                    ("batch", batch), ("buffer", buffer), ("leapfrog", leapfrog)):
        check_count(owner, name, v)
    if local not in _DEFAULT_ACCEPT:
        raise ValueError(f"{owner}: local must be 'mala' or 'hmc', got {local!r}")
    delta = _DEFAULT_ACCEPT[local] if target_accept is None else float(target_accept)
    warmup = steps // 2 if warmup is None else check_count(owner, "warmup", warmup, 0)
    x = _start(owner, x0, flow, None)
    chains = x.shape[0]
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    history: list[Tensor] = []
    losses: list[float] = []
    jumps = torch.zeros(chains)
    n_jumps = 0
    local_acc = torch.zeros(chains)
    n_local = 0

    def refit() -> None:
        pool = torch.cat(history[-buffer:])
        with mode(flow, True), torch.enable_grad():
            total = 0.0
            for _ in range(refit_steps):
                idx = torch.randint(pool.shape[0], (min(batch, pool.shape[0]),), device=pool.device)
                loss = -flow.log_prob(pool[idx]).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
                opt.step()
                total += float(loss.detach())
        losses.append(total / refit_steps)

    with seeded(seed, x.device), mode(flow, False):
        ld = LogDensity.of_target(target, owner)
        s = _initial(owner, ld, x, grad=True)

        def move(state: State, eps: float) -> tuple[State, Tensor, Tensor]:
            e = torch.full((chains, 1), eps, dtype=x.dtype, device=x.device)
            return mala_step(ld, state, e) if local == "mala" else hmc_step(ld, state, e, leapfrog)

        eps = step_size if step_size is not None else find_step_size(lambda e: move(s, e)[1], 0.1)
        da = DualAveraging(eps, delta)
        run = _Run(owner, steps, warmup, chains, progress)
        for t, warming in run.iterations(ld):
            if (t + 1) % jump_every == 0:
                with torch.no_grad():
                    proposal = flow.sample_and_log_prob(chains)
                    lq = flow.log_prob(s.x)
                s, _, take, _ = flow_jump(ld, s, lq, proposal, grad=True)
                if not warming:
                    jumps += take.float().cpu()
                    n_jumps += 1
            else:
                s, prob, take = move(s, eps)
                if warming:
                    eps = da.update(float(prob.mean()))
                else:
                    local_acc += take.float().cpu()
                    n_local += 1
            if warming:
                history.append(s.x)
                if (t + 1) % refit_every == 0:
                    refit()
                if t == warmup - 1:
                    eps = da.final
                if callback is not None:
                    callback(t, s.x)
            else:
                run.record(s, take)
        return run.result(
            ld, eps,
            jump_acceptance=jumps / max(n_jumps, 1),
            local_acceptance=local_acc / max(n_local, 1),
            refit_loss=losses,
        )
