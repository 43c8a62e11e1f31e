"""Flow MCMC on targets with exact answers, the MALA/HMC baselines, and the convergence diagnostics.

Every sampler's estimates are compared with exact values within 4 Monte Carlo standard errors,
``sd / sqrt(ESS)`` with the ESS estimated from the chains themselves (so the tolerance follows the
sampler's efficiency), on Neal's funnel and on a three-mode Gaussian mixture whose chains all start
in one mode (so the mode weights can only come out right if the sampler moves between modes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchnf as nf
from torchnf.core import Bijection
from torchnf.inference import diagnostics as D
from torchnf.targets import Funnel, GaussianMixtureTarget, GaussianTarget

PHI_M1 = 0.5 * math.erfc(1 / math.sqrt(2))  # P(N(0,1) < -1)


def _agrees(values: torch.Tensor, exact: np.ndarray, k: float = 4.0) -> np.ndarray:
    """``values`` ``(steps, chains, m)``: z-scores of the chain means against ``exact``; asserts |z| < k."""
    mean = values.double().mean((0, 1)).numpy()
    z = (mean - exact) / D.mcse_mean(values)
    assert np.all(np.abs(z) < k), f"estimates {mean} vs exact {exact}: z = {z}"
    return z


# --------------------------------------------------------------------------------------------
# Neal's funnel with a known (deliberately imperfect) transport map
# --------------------------------------------------------------------------------------------


class _WideFunnelMap(Bijection):
    """``z_1 = x_1 / s``, ``z_i = x_i e^{-x_1/2} / w``: the funnel's exact normalising map when
    ``s = 3, w = 1``; with ``s = 3.5, w = 1.3`` the flow is a wider funnel than the target, a proposal
    that covers it but is not it (acceptance < 1, so wrong Metropolis-Hastings ratios would show)."""

    def __init__(self, dim: int, s: float = 3.5, w: float = 1.3) -> None:
        super().__init__(dim)
        self.register_buffer("s", torch.tensor(s))
        self.register_buffer("w", torch.tensor(w))

    def _forward(self, x, context):
        x1 = x[..., :1]
        z = torch.cat([x1 / self.s, x[..., 1:] * torch.exp(-0.5 * x1) / self.w], -1)
        ladj = -torch.log(self.s) - (x.shape[-1] - 1) * (0.5 * x1[..., 0] + torch.log(self.w))
        return z, ladj

    def _inverse(self, z, context):
        x1 = z[..., :1] * self.s
        x = torch.cat([x1, z[..., 1:] * self.w * torch.exp(0.5 * x1)], -1)
        return x, torch.log(self.s) + (z.shape[-1] - 1) * (0.5 * x1[..., 0] + torch.log(self.w))


FUNNEL = Funnel(4, scale=3.0)


def _funnel_stats(samples: torch.Tensor) -> torch.Tensor:
    x = samples.double()
    return torch.stack([x[..., 0], x[..., 0] ** 2, x[..., 1], (x[..., 0] < -3).double()], -1)


FUNNEL_EXACT = np.array([0.0, 9.0, 0.0, PHI_M1])


@pytest.fixture(scope="module")
def funnel_flow():
    return nf.Flow(_WideFunnelMap(4))


def test_funnel_map_is_a_valid_flow(funnel_flow):
    x = FUNNEL.sample(2000, seed=0).float()
    x_back = funnel_flow.inverse_transform(funnel_flow.transform(x))
    assert torch.allclose(x_back, x, rtol=1e-4, atol=1e-4)
    exact = nf.Flow(_WideFunnelMap(4, s=3.0, w=1.0))
    assert torch.allclose(exact.log_prob(x), FUNNEL.log_prob(x), atol=1e-4)


def test_independent_mh_on_the_funnel(funnel_flow):
    res = nf.mcmc.independent_mh(FUNNEL, funnel_flow, 32, steps=400, seed=0)
    assert res.samples.shape == (400, 32, 4) and res.log_target.shape == (400, 32)
    assert 0.3 < res.acceptance.mean() < 0.95
    assert res.grad_evals == 0 and res.target_evals == 400 and res.step_size is None
    assert torch.allclose(res.log_target, FUNNEL.log_prob(res.samples))
    _agrees(_funnel_stats(res.samples), FUNNEL_EXACT)
    assert (D.split_rhat(res.samples) < 1.05).all()


def test_independent_mh_with_defensive_mixture(funnel_flow):
    res = nf.mcmc.independent_mh(FUNNEL, funnel_flow, 32, steps=300, defensive=0.2, seed=1)
    _agrees(_funnel_stats(res.samples), FUNNEL_EXACT)


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_neutra_on_the_funnel(funnel_flow, kernel):
    steps = 300 if kernel == "mala" else 200
    res = nf.mcmc.neutra(FUNNEL, funnel_flow, 32, steps=steps, kernel=kernel, leapfrog=3, seed=2)
    per_step = 1 if kernel == "mala" else 3
    assert res.grad_evals == steps * per_step and res.warmup_grad_evals > steps // 2 * per_step
    # In the latent space the funnel is a product of normals of scales 3/3.5 and 1/1.3: large steps.
    assert res.step_size > 0.4
    assert torch.allclose(res.log_target, FUNNEL.log_prob(res.samples), atol=1e-4)
    _agrees(_funnel_stats(res.samples), FUNNEL_EXACT)
    assert (D.split_rhat(res.samples) < 1.1).all()


def test_baselines_fail_in_the_funnel_neck():
    """Plain MALA cannot enter the neck: its estimate of P(x1 < -3) is far too small, and R-hat or
    the z-score says so. This is what the flow samplers fix."""
    res = nf.mcmc.mala(FUNNEL, torch.zeros(16, 4), steps=300, seed=0)
    frac = (res.samples[..., 0] < -3).double().mean().item()
    assert frac < PHI_M1 / 2


# --------------------------------------------------------------------------------------------
# Three-mode mixture: chains start in one mode
# --------------------------------------------------------------------------------------------

MIXTURE = GaussianMixtureTarget([[-5.0, -3.0], [5.0, -3.0], [0.0, 5.0]], weights=[0.5, 0.3, 0.2])
MIX_EXACT = np.concatenate([MIXTURE.weights.numpy(), MIXTURE.mean.numpy()])


def _mix_stats(samples: torch.Tensor) -> torch.Tensor:
    labels = MIXTURE.assign(samples.double())
    return torch.cat([torch.nn.functional.one_hot(labels, 3).double(), samples.double()], -1)


@pytest.fixture(scope="module")
def mixture_flow():
    """A RealNVP fitted quickly by maximum likelihood on exact samples (its mode weights are only
    roughly right; MCMC corrects them)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = MIXTURE.sample(4000, seed=0).float()
        flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(32, 32)))
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
        for _ in range(300):
            loss = -flow.log_prob(x[torch.randint(4000, (256,))]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return flow.eval()


def _one_mode_start(chains: int = 32) -> torch.Tensor:
    return MIXTURE.means[0].float().expand(chains, 2).clone()


def test_independent_mh_finds_the_mode_weights(mixture_flow):
    res = nf.mcmc.independent_mh(MIXTURE, mixture_flow, _one_mode_start(), steps=300, seed=0)
    _agrees(_mix_stats(res.samples), MIX_EXACT)
    res = nf.mcmc.independent_mh(MIXTURE, mixture_flow, _one_mode_start(), steps=300, defensive=0.1, seed=1)
    _agrees(_mix_stats(res.samples), MIX_EXACT)


@pytest.mark.slow
def test_neutra_moves_between_modes(mixture_flow):
    res = nf.mcmc.neutra(MIXTURE, mixture_flow, _one_mode_start(), steps=400, kernel="mala", seed=0)
    _agrees(_mix_stats(res.samples), MIX_EXACT)


@pytest.mark.slow
def test_adaptive_flow_mcmc_learns_the_flow_and_reweights_modes():
    """Untrained flow; chains start equally in the three modes (weights 1/3 instead of 0.5/0.3/0.2)."""
    x0 = MIXTURE.means.float().repeat(8, 1) + 0.1 * torch.randn(24, 2)
    flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(16, 16)))
    res = nf.mcmc.adaptive_flow_mcmc(MIXTURE, flow, x0, steps=240, warmup=200, jump_every=2,
                                     refit_every=5, refit_steps=5, lr=3e-3, batch=256, seed=0)
    losses = res.info["refit_loss"]
    assert len(losses) == 40 and losses[-1] < losses[0] - 1.0
    assert res.info["jump_acceptance"].mean() > 0.3
    # One gradient per local step (every other iteration) plus one after each jump.
    assert res.grad_evals == 240 and res.target_evals == 0
    _agrees(_mix_stats(res.samples), MIX_EXACT)


def test_adaptive_refits_cannot_spoil_a_good_flow():
    """The flow starts exact (identity = N(0, I) target). Aggressive refits on 4 training chains'
    correlated states overfit them (without the held-out check the jump acceptance drops to about
    0.8 here); the held-out chains reject them and every jump stays accepted."""
    t = GaussianTarget(torch.zeros(2), torch.eye(2))
    flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(16,)))
    res = nf.mcmc.adaptive_flow_mcmc(t, flow, t.sample(8, seed=0, dtype=torch.float32), steps=40,
                                     warmup=100, jump_every=2, refit_every=10, refit_steps=20, lr=3e-2,
                                     seed=0)
    assert res.info["refits_undone"] == 10 and len(res.info["refit_loss"]) == 10
    assert res.info["jump_acceptance"].mean() > 0.95


def test_mala_is_stuck_in_one_mode_and_rhat_says_so():
    x0 = torch.cat([MIXTURE.means[0].float().expand(8, 2), MIXTURE.means[1].float().expand(8, 2)])
    res = nf.mcmc.mala(MIXTURE, x0, steps=200, seed=0)
    assert (res.samples[..., 0].sign() == x0[:, 0].sign()).all()  # never left its mode
    assert D.split_rhat(res.samples)[0] > 1.1


# --------------------------------------------------------------------------------------------
# Baselines on an ill-conditioned Gaussian, counters, errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["mala", "hmc"])
def test_baselines_are_exact_on_a_gaussian(sampler):
    t = GaussianTarget.ill_conditioned(4, condition=10.0, seed=1)
    x0 = torch.zeros(32, 4, dtype=torch.float64)
    kw = {"leapfrog": 4} if sampler == "hmc" else {}
    res = getattr(nf.mcmc, sampler)(t, x0, steps=300, seed=0, **kw)
    assert res.samples.dtype == torch.float64
    assert res.grad_evals == 300 * (4 if sampler == "hmc" else 1)
    assert 0.4 < res.acceptance.mean() < 0.9
    x = res.samples
    stats = torch.cat([x, x.square()], -1)
    _agrees(stats, np.concatenate([t.mean.numpy(), t.cov.diagonal().numpy()]))
    assert res.info["nonfinite"] == 0


def test_rejects_nonfinite_proposals_and_counts_them():
    """A target that is NaN outside the unit ball: the chains stay inside and the rejections are counted."""
    def ball(x):
        return torch.where(x.norm(dim=-1) < 1.0, -0.5 * x.square().sum(-1), torch.nan)

    res = nf.mcmc.hmc(ball, torch.zeros(8, 2), steps=50, step_size=0.5, adapt=False, leapfrog=4, seed=0)
    assert (res.samples.norm(dim=-1) < 1.0).all() and res.info["nonfinite"] > 0


def test_bad_inputs_raise_clear_errors(funnel_flow):
    with pytest.raises(ValueError, match=r"mala: log_target returned nan at sample \(1,\)"):
        nf.mcmc.mala(lambda x: torch.where(x[:, 0] > 0, torch.nan, -x.square().sum(-1)),
                     torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), steps=5)
    with pytest.raises(ValueError, match="expected x0 of shape"):
        nf.mcmc.hmc(FUNNEL, torch.zeros(4), steps=5)
    with pytest.raises(ValueError, match="kernel must be 'mala' or 'hmc'"):
        nf.mcmc.neutra(FUNNEL, funnel_flow, 4, steps=5, kernel="nuts")
    with pytest.raises(TypeError, match="float64"):
        nf.mcmc.independent_mh(FUNNEL, funnel_flow, torch.zeros(4, 4, dtype=torch.float64), steps=5)
    with pytest.raises(ValueError, match="defensive must be in"):
        nf.mcmc.independent_mh(FUNNEL, funnel_flow, 4, steps=5, defensive=1.0)


def test_seeded_runs_repeat_and_leave_the_global_rng_alone(funnel_flow):
    state = torch.get_rng_state()
    a = nf.mcmc.neutra(FUNNEL, funnel_flow, 4, steps=10, kernel="mala", seed=3)
    b = nf.mcmc.neutra(FUNNEL, funnel_flow, 4, steps=10, kernel="mala", seed=3)
    assert torch.equal(a.samples, b.samples)
    assert torch.equal(state, torch.get_rng_state())


# --------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------


def test_rhat_and_ess_of_iid_draws():
    x = torch.randn(1000, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (np.abs(D.split_rhat(x) - 1) < 0.01).all()
    for ess in (D.ess_bulk(x), D.ess_tail(x), D.ess_mean(x)):
        assert ess.shape == (3,) and ((ess > 0.85 * 4000) & (ess < 1.15 * 4000)).all()
    s = D.summary(x)
    assert set(s) == {"mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "rhat"}


def test_ess_of_an_autoregressive_chain_matches_theory():
    rho, n = 0.8, 5000
    g = torch.Generator().manual_seed(1)
    e = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.empty_like(e)
    y[0] = e[0] / math.sqrt(1 - rho**2)
    for t in range(1, n):
        y[t] = rho * y[t - 1] + e[t]
    expected = 4 * n * (1 - rho) / (1 + rho)
    assert abs(D.ess_bulk(y) / expected - 1) < 0.2


def test_rhat_flags_stuck_and_shifted_chains():
    stuck = torch.arange(4.0).expand(500, 4)
    assert D.split_rhat(stuck) > 1e3
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    x[:, 0] += 1.0
    assert D.split_rhat(x) > 1.1
    with pytest.raises(ValueError, match="draws >= 4"):
        D.split_rhat(torch.zeros(2, 3))


def test_efficiency_per_second_and_per_gradient():
    res = nf.mcmc.mala(GaussianTarget(torch.zeros(2), torch.eye(2)), torch.zeros(8, 2), steps=100, seed=0)
    per_grad = D.ess_per_gradient(res)
    total = (res.grad_evals + res.warmup_grad_evals) * 8
    assert np.allclose(per_grad, D.ess_bulk(res.samples) / total)
    assert (D.ess_per_gradient(res, include_warmup=False) > per_grad).all()
    assert (D.ess_per_second(res) > 0).all()
