r"""Variational inference: fit a flow ``q`` to an unnormalised target ``p~`` by reverse KL.

.. math::
    \mathrm{ELBO}(q) = E_{x\sim q}\big[\log\tilde p(x) - \log q(x)\big] = \log Z - \mathrm{KL}(q\,\|\,p)

is maximised with reparameterised samples ``x = f^{-1}(z)``, ``z ~ base``, which
:meth:`Flow.rsample_and_log_prob` produces together with ``log q(x)`` from one inverse pass. The
inverse is the flow's sampling direction: IAF and coupling flows (RealNVP, NSF) do it in one pass
per layer, while MAF needs ``dim`` sequential passes, so IAF or coupling flows are the cheap
choice for VI (see ``docs/guide_directions.md``).

After fitting, :func:`~torchnf.inference.diagnostics.importance_diagnostics` checks the fit with
importance weights (normalised ESS, Pareto k, evidence estimate with a standard error).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from torchnf.inference._common import LogTarget, check_count, check_log_target, mode, reference, seeded

__all__ = ["fit_variational", "VIResult"]


@dataclass
class VIResult:
    """What happened during :func:`fit_variational`.

    Attributes:
        elbo: ELBO estimate (mean of ``log p~ - log q`` over the step's samples, untempered) per step.
        beta: inverse temperature used at each step.
        steps: optimiser steps taken.
        skipped: steps skipped because the gradient was not finite.
        grad_evals: target gradient evaluations (``steps * samples``), the cost to compare with MCMC.
        seconds: wall-clock time.
        stopped: ``"steps"`` or ``"callback"``.
    """

    elbo: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    steps: int = 0
    skipped: int = 0
    grad_evals: int = 0
    seconds: float = 0.0
    stopped: str = ""

    def final_elbo(self, last: int = 100) -> float:
        """Mean ELBO over the last ``last`` steps (a less noisy summary than the last value)."""
        tail = self.elbo[-last:]
        return sum(tail) / len(tail) if tail else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schedule(tempering: Any, steps: int) -> Callable[[int], float]:
    """``step -> beta``. ``None``: 1. A number ``beta0`` in (0, 1]: geometric from ``beta0`` to 1 over
    the first half of the steps. A ``(beta0, n)`` pair: the same over ``n`` steps. A callable: itself."""
    if tempering is None:
        return lambda t: 1.0
    if callable(tempering):
        return tempering
    if isinstance(tempering, (tuple, list)) and len(tempering) == 2:
        beta0, n = float(tempering[0]), int(tempering[1])
    elif isinstance(tempering, (int, float)) and not isinstance(tempering, bool):
        beta0, n = float(tempering), max(steps // 2, 1)
    else:
        raise ValueError(
            f"fit_variational: tempering must be None, a beta0 in (0, 1], a (beta0, steps) pair or a "
            f"callable step -> beta, got {tempering!r}"
        )
    if not 0 < beta0 <= 1 or n < 1:
        raise ValueError(f"fit_variational: tempering needs 0 < beta0 <= 1 and steps >= 1, got {tempering!r}")
    return lambda t: 1.0 if t >= n else beta0 ** (1.0 - t / n)


def fit_variational(
    flow: Any,
    log_target: LogTarget,
    *,
    steps: int = 2000,
    samples: int = 256,
    lr: float = 1e-3,
    stl: bool = False,
    tempering: Any = None,
    clip_grad: float | None = 10.0,
    schedule: str = "cosine",
    progress: bool = True,
    seed: int | None = None,
    context: Tensor | None = None,
    callback: Callable[[int, float, Any], Any] | None = None,
) -> VIResult:
    r"""Fit ``flow`` to an unnormalised log-density by maximising the ELBO (reverse KL).

    Each step draws ``samples`` reparameterised samples and their log-density in one inverse pass
    (:meth:`Flow.rsample_and_log_prob`) and takes an Adam step on

    .. math:: -\frac1S\sum_s \big[\beta_t \log\tilde p(x_s) - \log q_\theta(x_s)\big].

    * **Sticking the landing** (``stl=True``): the score term of the gradient (zero in expectation,
      but noisy) is dropped by evaluating :math:`\log q` with *detached* parameters at the
      reparameterised sample, :math:`\log q_{\perp\theta}(x_\theta)`, through
      ``torch.func.functional_call``; the gradient then vanishes when ``q = p``. This needs one
      density (forward) pass per step besides the sampling pass: cheap for coupling flows,
      ``dim`` passes for IAF.
    * **Tempering**: ``beta_t`` rises from ``beta0`` to 1 (a number ``beta0``: geometric over the first
      half of the steps; ``(beta0, n)``: over ``n`` steps; or a callable ``step -> beta``), which
      helps ``q`` find several modes before committing. The recorded ELBO is always untempered.
    * A non-finite ``log_target`` value raises a ``ValueError`` naming the sample (never averaged
      away); a non-finite gradient skips the step (counted in ``skipped``).

    Args:
        flow: the :class:`~torchnf.Flow` to fit (in place).
        log_target: unnormalised log-density, ``(samples, dim) -> (samples,)``
            (with ``context``: the samples have shape ``(samples, *context_batch, dim)``).
        steps: Adam steps.
        samples: samples per step.
        lr: learning rate (cosine-annealed to 0 with ``schedule="cosine"``).
        stl: sticking-the-landing gradients.
        tempering: see above.
        clip_grad: gradient-norm clipping (``None``: off).
        schedule: ``"cosine"`` or ``"constant"`` learning rate.
        progress: show a progress bar with the running ELBO.
        seed: seed of the run (the caller's RNG state is restored).
        context: fixed context of a conditional flow.
        callback: ``callback(step, elbo, flow)`` after each step; return ``True`` to stop.

    Returns:
        :class:`VIResult` with the ELBO history.

    Example:
        >>> import torchnf as nf
        >>> target = nf.targets.Banana()
        >>> flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(32, 32)))
        >>> res = flow.fit_variational(target, steps=50, samples=64, lr=3e-3, progress=False, seed=0)
        >>> len(res.elbo)
        50

    References:
        Rezende, Mohamed, "Variational inference with normalizing flows", ICML 2015.
        Roeder, Wu, Duvenaud, "Sticking the landing: simple, lower-variance gradient estimators for
        variational inference", NeurIPS 2017.
    """
    owner = "fit_variational"
    check_count(owner, "steps", steps)
    check_count(owner, "samples", samples)
    if not callable(log_target):
        raise TypeError(f"{owner}: log_target must be callable, got {type(log_target).__name__}")
    if not lr > 0:
        raise ValueError(f"{owner}: lr must be positive, got {lr}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"{owner}: schedule must be 'cosine' or 'constant', got {schedule!r}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"{owner}: clip_grad must be positive or None, got {clip_grad}")
    beta_of = _schedule(tempering, steps)
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{owner}: the flow has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    result = VIResult(stopped="steps")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=owner, unit="step")
    start = time.perf_counter()
    with seeded(seed, reference(flow)[1]), mode(flow, True):
        for t in range(steps):
            beta = float(beta_of(t))
            x, log_q = flow.rsample_and_log_prob(samples, context=context)
            check_log_target(owner + " (log q of the flow)", log_q, x)
            lp = check_log_target(owner, log_target(x), x)
            if stl:
                frozen = {k: v.detach() for k, v in flow.named_parameters()}
                frozen.update(dict(flow.named_buffers()))
                log_q_loss = functional_call(flow, frozen, (x,), {"context": context})
            else:
                log_q_loss = log_q
            loss = -(beta * lp - log_q_loss).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad is not None else math.inf)
            if bool(torch.isfinite(norm)):
                opt.step()
            else:
                result.skipped += 1
            if sched is not None:
                sched.step()
            elbo = float((lp - log_q).detach().mean())
            result.elbo.append(elbo)
            result.beta.append(beta)
            result.steps = t + 1
            if bar is not None:
                bar.update()
                if t % 25 == 0 or t == steps - 1:
                    bar.set_postfix(elbo=f"{result.final_elbo(25):.4g}")
            if callback is not None and callback(t, elbo, flow) is True:
                result.stopped = "callback"
                break
    if bar is not None:
        bar.close()
    result.grad_evals = result.steps * samples
    result.seconds = time.perf_counter() - start
    return result
