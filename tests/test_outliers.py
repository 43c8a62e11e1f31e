"""Outlier detection: conformal p-values, false-alarm rate within binomial error of alpha, detection of a
shifted data set, persistence of the calibration."""

from __future__ import annotations

import math

import pytest
import torch

import torchnf as nf


def _clean(n: int, seed: int) -> torch.Tensor:
    """Correlated 3-D Gaussian data."""
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.5, 0.7]])
    return torch.randn(n, 3, generator=g) @ A.T


@pytest.fixture(scope="module")
def fitted_flow():
    """A small RealNVP fitted quickly to the clean data (imperfect on purpose: calibration makes the
    false-alarm rate exact anyway)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = _clean(3000, 0)
        flow = nf.Flow(nf.RealNVP(3, layers=2, hidden=(16, 16)))
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
        for _ in range(150):
            loss = -flow.log_prob(x[torch.randint(3000, (256,))]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return flow


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_false_alarm_rate_matches_alpha(fitted_flow, alpha):
    n_cal, n_test = 2000, 20_000
    det = nf.OutlierDetector(fitted_flow).calibrate(_clean(n_cal, 1))
    flagged = det.predict(_clean(n_test, 2), alpha=alpha)
    rate = flagged.double().mean().item()
    # Given the calibration set, the rate is about alpha with a spread of sqrt(a(1-a)/n_cal) (the
    # calibration quantile) plus the binomial spread of the test set.
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n_cal + 1 / n_test))
    assert abs(rate - alpha) < 4 * sd


def test_conformal_guarantee_holds_for_a_bad_flow():
    """An untrained flow (N(0, I), wrong covariance): the false-alarm rate is still alpha."""
    det = nf.OutlierDetector(nf.Flow(nf.RealNVP(3, layers=1, hidden=(4,)))).calibrate(_clean(2000, 3))
    rate = det.predict(_clean(20_000, 4), alpha=0.05).double().mean().item()
    assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 * (1 / 2000 + 1 / 20_000))


def test_shifted_data_are_detected(fitted_flow):
    det = nf.OutlierDetector(fitted_flow).calibrate(_clean(2000, 5))
    shifted = _clean(2000, 6) + torch.tensor([0.0, 3.0, 0.0])
    assert det.predict(shifted, alpha=0.01).double().mean().item() > 0.5
    assert det.predict(torch.full((1, 3), 50.0), alpha=0.01).item()


def test_pvalue_formula_on_known_scores():
    det = nf.OutlierDetector(nf.Flow(nf.RealNVP(2, layers=1, hidden=(4,))))
    det.load_state_dict({"scores": torch.arange(20.0)})  # scores 0..19
    s = torch.tensor([-1.0, 0.0, 9.5, 19.0, 30.0])
    expected = torch.tensor([21.0, 21.0, 11.0, 2.0, 1.0]) / 21.0  # (1 + #{cal >= s}) / (n + 1)
    assert torch.allclose(det.pvalues_of_scores(s), expected.double())
    # Scores are negative log-densities: N(0, I) at the origin has score log(2 pi).
    assert det.score(torch.zeros(1, 2)).item() == pytest.approx(math.log(2 * math.pi), rel=1e-6)


def test_save_restore_and_errors(fitted_flow, tmp_path):
    det = nf.OutlierDetector(fitted_flow).calibrate(_clean(500, 7))
    x = _clean(100, 8)
    path = tmp_path / "detector.pt"
    det.save(path)
    back = nf.OutlierDetector.load(path)
    assert torch.equal(back.pvalues(x), det.pvalues(x))
    other = nf.OutlierDetector(fitted_flow).load_state_dict(det.state_dict())
    assert torch.equal(other.calibration_scores, det.calibration_scores)
    with pytest.raises(RuntimeError, match="calibrate"):
        nf.OutlierDetector(fitted_flow).pvalues(x)
    with pytest.raises(ValueError, match="below 1/\\(n\\+1\\)"):
        det.predict(x, alpha=1e-4)
    with pytest.raises(ValueError, match="at least 20"):
        nf.OutlierDetector(fitted_flow).calibrate(x[:5])
    fitted_flow.save(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="no outlier calibration"):
        nf.OutlierDetector.load(tmp_path / "plain.pt")


def test_conditional_flow_takes_context():
    flow = nf.Flow(nf.RealNVP(2, context_dim=1, layers=1, hidden=(4,)))
    x, c = torch.randn(50, 2), torch.randn(50, 1)
    det = nf.OutlierDetector(flow, batch=16).calibrate(x, context=c)
    assert det.pvalues(x, context=c).shape == (50,)
    assert torch.allclose(det.score(x, context=c), det.score(x, context=torch.zeros(1)).to(torch.float64))
