r"""Batched MCMC building blocks: counted log-densities, MALA and HMC transitions, the flow
independence proposal, and dual-averaging step-size adaptation.

Every kernel moves all chains at once (states ``(chains, dim)``), selects with ``torch.where``
(no per-chain Python branching) and returns the new state, the Metropolis-Hastings acceptance
probability and whether each chain moved. A proposal whose position or log-density is not finite,
or whose trajectory passed through such a point, is rejected; a NaN (or ``+inf``) log-density at
a finite point is rejected too and counted (``LogDensity.nonfinite``): targets can overflow far
out (``inf - inf``) and a divergent trajectory must not abort a long run. Starting states are checked
strictly by the samplers.

References:
    Roberts, Tweedie, "Exponential convergence of Langevin distributions and their discrete
    approximations", Bernoulli, 1996 (MALA).
    Neal, "MCMC using Hamiltonian dynamics", Handbook of MCMC, 2011 (HMC).
    Hoffman, Gelman, "The No-U-Turn Sampler", JMLR, 2014 (dual averaging, Algorithm 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from torchnf.inference._common import check_log_target

__all__ = ["State", "LogDensity", "DualAveraging", "mala_step", "hmc_step", "flow_jump", "find_step_size"]


@dataclass
class State:
    """Chain states ``x`` ``(chains, dim)`` in the space the kernel moves in, their log-density
    ``lp`` and its gradient ``grad`` there, and what gets recorded: data-space points ``out`` and
    their target log-density ``out_lp`` (the same tensors unless the sampler works in a latent space).
    """

    x: Tensor
    lp: Tensor
    grad: Tensor | None
    out: Tensor
    out_lp: Tensor

    def where(self, take: Tensor, other: State) -> State:
        """Rows of ``other`` where ``take`` (``(chains,)`` bool) is true, of ``self`` elsewhere."""
        vals = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is None or b is None:
                vals[f.name] = None
                continue
            t = take.view(-1, *([1] * (a.dim() - 1)))
            vals[f.name] = torch.where(t, b, a)
        return State(**vals)


Mapped = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


class LogDensity:
    """A batched log-density ``x (chains, dim) -> (chains,)`` that counts its evaluations.

    ``fn(x)`` returns ``(lp, out, out_lp)``: the log-density in the sampler's space, the data-space
    point and its target log-density (``out is x`` and ``out_lp is lp`` for a data-space sampler).
    Rows with a non-finite ``x`` are evaluated at zero; they, and rows whose log-density or
    gradient is NaN or ``+inf``, get ``lp = -inf`` (so they are rejected) and are counted in
    ``nonfinite``.
    """

    def __init__(self, fn: Mapped, owner: str) -> None:
        self.fn, self.owner = fn, owner
        self.grads = 0
        self.evals = 0
        self.nonfinite = 0

    @classmethod
    def of_target(cls, target: Callable[[Tensor], Tensor], owner: str) -> LogDensity:
        def fn(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            lp = target(x)
            return lp, x, lp

        return cls(fn, owner)

    def __call__(self, x: Tensor, grad: bool = True, strict: bool = False) -> State:
        """Evaluate at ``x``; with ``strict`` (starting states), any non-finite target value or
        position raises a ``ValueError`` naming the sample instead of being rejected."""
        ok = torch.isfinite(x).all(-1)
        xs = torch.where(ok[:, None], x, torch.zeros_like(x)).detach()
        if grad:
            self.grads += 1
            with torch.enable_grad():
                xs.requires_grad_(True)
                lp, out, out_lp = self.fn(xs)
                g = torch.autograd.grad(lp.sum(), xs, allow_unused=True)[0]
            g = torch.zeros_like(xs) if g is None else g
            ok = ok & torch.isfinite(g).all(-1)
            g = torch.where(ok[:, None], g, torch.zeros_like(g))
        else:
            self.evals += 1
            with torch.no_grad():
                lp, out, out_lp = self.fn(xs)
            g = None
        if not isinstance(lp, Tensor) or lp.shape != x.shape[:-1]:
            check_log_target(self.owner, lp, xs, allow_neg_inf=True)  # raises the shape error
        if strict:
            check_log_target(self.owner, torch.where(ok, out_lp, math.nan), out)
        lp, out_lp = lp.detach(), out_lp.detach()
        ok = ok & ~torch.isnan(lp) & (lp != math.inf) & ~torch.isnan(out_lp) & (out_lp != math.inf)
        self.nonfinite += int((~ok).sum())
        return State(x.detach(), torch.where(ok, lp, -math.inf), g, out.detach(),
                     torch.where(ok, out_lp, -math.inf))


def _accept(log_ratio: Tensor) -> tuple[Tensor, Tensor]:
    """Acceptance probabilities ``min(1, exp(log_ratio))`` (NaN counts as 0) and the decisions."""
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    prob = torch.exp(log_ratio.clamp(max=0.0))
    u = torch.rand_like(prob)
    return prob, torch.log(u) < log_ratio


def mala_step(ld: LogDensity, s: State, eps: Tensor) -> tuple[State, Tensor, Tensor]:
    r"""One Metropolis-adjusted Langevin step with step sizes ``eps`` ``(chains, 1)``.

    Proposal :math:`x' = x + \tfrac{\epsilon^2}{2}\nabla\log p(x) + \epsilon\xi`; the acceptance
    ratio includes the Gaussian proposal densities both ways.
    """
    half = 0.5 * eps.square()
    y = s.x + half * s.grad + eps * torch.randn_like(s.x)
    new = ld(y)

    def log_q(to: Tensor, frm: Tensor, g: Tensor) -> Tensor:
        return -(to - frm - half * g).square().sum(-1) / (4 * half.squeeze(-1))

    log_ratio = new.lp - s.lp + log_q(s.x, y, new.grad) - log_q(y, s.x, s.grad)
    prob, take = _accept(torch.where(torch.isfinite(new.lp), log_ratio, -math.inf))
    return s.where(take, new), prob, take


def hmc_step(ld: LogDensity, s: State, eps: Tensor, leapfrog: int) -> tuple[State, Tensor, Tensor]:
    r"""One Hamiltonian Monte Carlo step: unit mass, ``leapfrog`` leapfrog steps of size ``eps``
    ``(chains, 1)``; accepted with probability :math:`\min(1, e^{-\Delta H})`. A trajectory that
    meets a non-finite log-density is rejected."""
    p0 = torch.randn_like(s.x)
    p = p0 + 0.5 * eps * s.grad
    x, ok, new = s.x, torch.ones_like(s.lp, dtype=torch.bool), s
    for i in range(leapfrog):
        x = x + eps * p
        new = ld(x)
        ok = ok & torch.isfinite(new.lp)
        p = p + (eps if i < leapfrog - 1 else 0.5 * eps) * new.grad
    dh = new.lp - s.lp - 0.5 * (p.square().sum(-1) - p0.square().sum(-1))
    prob, take = _accept(torch.where(ok, dh, -math.inf))
    return s.where(take, new), prob, take


def flow_jump(
    ld: LogDensity,
    s: State,
    log_q_current: Tensor,
    proposal: tuple[Tensor, Tensor],
    grad: bool,
) -> tuple[State, Tensor, Tensor, Tensor]:
    r"""Independence Metropolis-Hastings step with proposal ``(x', log q(x'))`` drawn from ``q``:
    accept with :math:`\min\big(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\big)`. Returns the new state,
    acceptance probabilities, decisions and ``log q`` of the new states."""
    x, lq = proposal
    new = ld(x, grad=grad)
    log_ratio = (new.lp - lq) - (s.lp - log_q_current)
    prob, take = _accept(torch.where(torch.isfinite(new.lp) & torch.isfinite(lq), log_ratio, -math.inf))
    return s.where(take, new), prob, take, torch.where(take, lq, log_q_current)


class DualAveraging:
    r"""Step-size adaptation toward a target acceptance ``delta`` (Hoffman & Gelman 2014, Alg. 5).

    .. math::
        \bar H_m = (1 - \tfrac{1}{m+t_0})\bar H_{m-1} + \tfrac{1}{m+t_0}(\delta - \alpha_m),\quad
        \log\epsilon_m = \mu - \tfrac{\sqrt m}{\gamma}\bar H_m,\quad
        \log\bar\epsilon_m = m^{-\kappa}\log\epsilon_m + (1-m^{-\kappa})\log\bar\epsilon_{m-1},

    with :math:`\mu = \log(10\epsilon_0)`, ``gamma = 0.05``, ``t0 = 10``, ``kappa = 0.75``. Use
    ``step`` while adapting and ``final`` afterwards.
    """

    def __init__(self, eps0: float, delta: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.mu, self.delta, self.gamma, self.t0, self.kappa = math.log(10 * eps0), delta, gamma, t0, kappa
        self.h_bar, self.log_eps_bar, self.m = 0.0, math.log(eps0), 0
        self.step = eps0

    def update(self, accept: float) -> float:
        self.m += 1
        m = self.m
        eta = 1.0 / (m + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.delta - accept)
        log_eps = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        w = m ** (-self.kappa)
        self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        self.step = math.exp(log_eps)
        return self.step

    @property
    def final(self) -> float:
        return math.exp(self.log_eps_bar)


def find_step_size(trial: Callable[[float], Tensor], eps: float, tries: int = 30) -> float:
    """Double or halve ``eps`` until the mean acceptance of one trial move crosses 1/2 (the states
    are not moved); ``trial(eps)`` returns acceptance probabilities."""
    up = float(trial(eps).mean()) > 0.5
    for _ in range(tries):
        new = eps * 2.0 if up else eps * 0.5
        if (float(trial(new).mean()) > 0.5) != up:
            return eps if up else new
        eps = new
    return eps
