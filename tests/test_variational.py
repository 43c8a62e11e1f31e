"""Variational fitting and importance diagnostics: ELBO near the exact log normaliser, sticking-the-landing,
tempering, the non-finite-target error, Pareto k and the evidence estimate."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf
from torchnf.inference import fit_variational, importance_diagnostics, pareto_khat


def _std_normal(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(-1)


@pytest.fixture(scope="module")
def banana_fit():
    """A small RealNVP fitted to the banana by reverse KL (shared by the tests below)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        target = nf.targets.Banana(2, a=1.0, b=1.0)
        flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(32, 32)))
        res = flow.fit_variational(target, steps=250, samples=128, lr=1e-2, progress=False, seed=1)
    return target, flow, res


def test_vi_reaches_the_exact_log_normaliser(banana_fit):
    target, flow, res = banana_fit
    assert res.steps == 250 and len(res.elbo) == 250 and res.grad_evals == 250 * 128
    # ELBO = log Z - KL(q || p) <= log Z; the fit closes the gap to within 0.03 nats, from more
    # than 1 nat at the start (the identity flow is far from the banana).
    log_z = target.log_normalizer
    assert log_z - res.elbo[0] > 1.0
    d = importance_diagnostics(flow, target, n=20_000, seed=2)
    assert log_z - 0.03 < d.elbo <= log_z + 4 * d.log_evidence_stderr
    assert abs(d.log_evidence - log_z) < 4 * d.log_evidence_stderr + 1e-3
    assert d.pareto_k < 0.5 and d.ess > 0.9 and d.reliable


def test_pareto_k_small_for_good_and_large_for_bad_proposals():
    flow = nf.Flow(nf.RealNVP(3, layers=2, hidden=(8,)))  # identity at init: exactly N(0, I)
    exact = importance_diagnostics(flow, _std_normal, n=5000, seed=0)
    assert exact.ess == pytest.approx(1.0)
    assert exact.log_evidence == pytest.approx(1.5 * math.log(2 * math.pi))
    # q = N(0, I) for p ~ N(0, s^2 I): w ~ exp(|x|^2 (1 - 1/s^2) / 2) has a Pareto tail with
    # k = 1 - 1/s^2: 0.17 for s = 1.1 (finite variance), 0.89 for s = 3 (no variance).
    good = importance_diagnostics(flow, lambda x: _std_normal(x / 1.1), n=20_000, seed=0)
    assert good.pareto_k < 0.5 and good.reliable
    bad = importance_diagnostics(flow, lambda x: _std_normal(x / 3.0), n=20_000, seed=0)
    assert bad.pareto_k > 0.7 and not bad.reliable
    assert bad.ess < good.ess


def test_pareto_khat_recovers_generalised_pareto_shapes():
    g = torch.Generator().manual_seed(0)
    for xi in (0.3, 0.9):
        u = torch.rand(20_000, generator=g, dtype=torch.float64)
        w = (u ** (-xi) - 1) / xi  # generalised Pareto, shape xi
        assert abs(pareto_khat(torch.log1p(w)) - xi) < 0.25  # about 3 standard errors
    assert pareto_khat(torch.zeros(100)) == -math.inf
    assert math.isnan(pareto_khat(torch.tensor([0.0, math.nan] * 20)))


def test_sticking_the_landing_gradient_vanishes_at_the_optimum():
    """With q = p exactly, the STL gradient is exactly zero (the parameters do not move) while the
    standard reparameterisation gradient is not."""
    target = _std_normal
    stl = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
    before = {k: v.clone() for k, v in stl.state_dict().items()}
    fit_variational(stl, target, steps=3, samples=64, lr=1e-2, stl=True, progress=False, seed=0)
    assert all(torch.equal(before[k], v) for k, v in stl.state_dict().items())
    plain = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
    plain.load_state_dict(before)
    fit_variational(plain, target, steps=3, samples=64, lr=1e-2, stl=False, progress=False, seed=0)
    assert any(not torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_stl_fit_improves_the_elbo():
    target = nf.targets.Banana(2, a=1.0, b=0.5)
    flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(16, 16)))
    res = fit_variational(flow, target, steps=120, samples=64, lr=1e-2, stl=True, progress=False, seed=0)
    assert res.final_elbo(20) > res.elbo[0] + 0.3
    assert res.final_elbo(20) < target.log_normalizer + 0.05


def test_tempering_schedules():
    flow = nf.Flow(nf.RealNVP(2, layers=1, hidden=(8,)))
    res = fit_variational(flow, _std_normal, steps=10, samples=8, tempering=0.01, progress=False, seed=0)
    assert res.beta[0] == pytest.approx(0.01) and res.beta[4] < 1.0 and res.beta[5:] == [1.0] * 5
    assert all(a < b for a, b in zip(res.beta[:5], res.beta[1:6]))
    res = fit_variational(flow, _std_normal, steps=6, samples=8, tempering=(0.5, 2), progress=False)
    assert res.beta == [0.5, 0.5**0.5, 1.0, 1.0, 1.0, 1.0]
    res = fit_variational(flow, _std_normal, steps=4, samples=8, tempering=lambda t: 0.25 * (t + 1),
                          progress=False)
    assert res.beta == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="tempering"):
        fit_variational(flow, _std_normal, steps=2, tempering=1.5, progress=False)


def test_non_finite_target_names_the_sample():
    flow = nf.Flow(nf.RealNVP(2, layers=1, hidden=(8,)))

    def broken(x):
        return torch.where(x[:, 0] > 1.0, torch.nan, _std_normal(x))

    with pytest.raises(ValueError, match=r"log_target returned nan at sample \(\d+,\) .*x = \[") as err:
        fit_variational(flow, broken, steps=5, samples=64, progress=False, seed=0)
    # The reported sample is one that breaks the target.
    shown = float(str(err.value).split("x = [")[1].split(",")[0])
    assert shown > 1.0
    with pytest.raises(ValueError, match="log-densities of shape"):
        fit_variational(flow, lambda x: x, steps=1, samples=4, progress=False)
    with pytest.raises(ValueError, match="-inf"):
        fit_variational(flow, lambda x: torch.full(x.shape[:-1], -math.inf), steps=1, progress=False)


def test_seeded_runs_repeat_and_leave_the_global_rng_alone():
    flows = [nf.Flow(nf.RealNVP(2, layers=1, hidden=(8,))) for _ in range(2)]
    flows[1].load_state_dict(flows[0].state_dict())
    state = torch.get_rng_state()
    a, b = (fit_variational(f, _std_normal, steps=5, samples=16, lr=1e-2, progress=False, seed=7).elbo
            for f in flows)
    assert a == b
    assert torch.equal(state, torch.get_rng_state())


def test_callback_float64_and_progress_bar(capsys):
    flow = nf.Flow(nf.IAF(2, layers=2, hidden=(8,))).double()
    seen = []
    res = flow.fit_variational(nf.targets.Banana(), steps=50, samples=16, progress=True,
                               callback=lambda t, elbo, f: seen.append(elbo) or t == 9)
    assert res.stopped == "callback" and res.steps == 10 and seen == res.elbo
    assert isinstance(res.to_dict()["elbo"], list)
    with pytest.raises(ValueError, match="steps must be an integer"):
        fit_variational(flow, _std_normal, steps=0)
