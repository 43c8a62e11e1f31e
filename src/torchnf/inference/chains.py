"""The step loop shared by the MCMC samplers: starting states, warm-up and kept iterations, step-size
adaptation, recording and evaluation counters, and the :class:`MCMCResult` they all return."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchnf.inference._common import check_count, mode, reference
from torchnf.inference.kernels import DualAveraging, LogDensity, State, find_step_size, hmc_step, mala_step

__all__ = ["MCMCResult"]

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
