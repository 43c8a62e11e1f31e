"""Adaptive flow MCMC: local gradient steps and flow independence jumps, the flow refitted on the
chains' states during warm-up (Gabrie, Rotskoff, Vanden-Eijnden 2022)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from torchnf.inference._common import LogTarget, check_count, mode, seeded
from torchnf.inference.chains import _DEFAULT_ACCEPT, MCMCResult, _initial, _Run, _start
from torchnf.inference.kernels import (
    DualAveraging,
    LogDensity,
    State,
    find_step_size,
    flow_jump,
    hmc_step,
    mala_step,
)

__all__ = ["adaptive_flow_mcmc"]


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
    buffer: int = 200,
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
    ``buffer`` iterations of the even-numbered chains; the odd-numbered chains are held out and
    validate each refit, which is undone unless their states' mean negative log-likelihood improved.
    The states of one chain are strongly correlated, so without this guard a flexible flow overfits
    a few chains' paths and its jump acceptance collapses (with one chain there is no guard). No
    gradient of the target is spent on training. Local steps explore each mode; jumps carry chains
    between modes and reweight them, so chains started in some of the modes reach the right mode
    weights, provided every mode holds at least one even-numbered (training) chain.
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
        ``info["local_acceptance"]``, ``info["refit_loss"]`` (validation NLL after each refit, or
        training NLL with a single chain) and ``info["refits_undone"]``.

    Example:
        >>> import torchnf as nf
        >>> target = nf.targets.GaussianMixtureTarget([[-4.0, 0.0], [4.0, 0.0]])
        >>> x0 = target.means.float().repeat(4, 1)  # 8 chains, 4 in each mode
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(16,)))
        >>> res = nf.mcmc.adaptive_flow_mcmc(target, flow, x0, steps=20, warmup=20, seed=0)
        >>> len(res.info["refit_loss"]), res.samples.shape
        (2, torch.Size([20, 8, 2]))

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
    undone = 0
    jumps = torch.zeros(chains)
    n_jumps = 0
    local_acc = torch.zeros(chains)
    n_local = 0

    def nll(states: Tensor) -> float:
        with torch.no_grad():
            return float(-flow.log_prob(states).mean())

    def refit() -> None:
        nonlocal undone
        pool = torch.stack(history[-buffer:])  # (iterations, chains, dim)
        dim = pool.shape[-1]
        half = torch.arange(chains) % 2 == 0
        train = pool[:, half].reshape(-1, dim) if chains > 1 else pool.reshape(-1, dim)
        val = pool[:, ~half].reshape(-1, dim) if chains > 1 else None
        if val is not None:
            val = val[torch.randint(val.shape[0], (min(4 * batch, val.shape[0]),), device=val.device)]
            before = nll(val)
            saved = ({n: v.clone() for n, v in flow.state_dict().items()}, copy.deepcopy(opt.state_dict()))
        with mode(flow, True), torch.enable_grad():
            total = 0.0
            for _ in range(refit_steps):
                idx = torch.randint(train.shape[0], (min(batch, train.shape[0]),), device=train.device)
                loss = -flow.log_prob(train[idx]).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
                opt.step()
                total += float(loss.detach())
        if val is None:
            losses.append(total / refit_steps)
            return
        after = nll(val)
        if not after < before:  # also when NaN
            flow.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
            undone += 1
        losses.append(min(after, before) if after == after else before)

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
            refits_undone=undone,
        )
