"""Using flows: variational inference, flow-accelerated MCMC, outlier scoring, probability queries.

* :func:`fit_variational` (also ``Flow.fit_variational``): reverse-KL fit to an unnormalised target.
* :mod:`~torchnf.inference.mcmc` (``torchnf.mcmc``): independence MH with a flow proposal, NeuTra,
  adaptive flow MCMC, and MALA/HMC baselines, batched over chains.
* :mod:`~torchnf.inference.diagnostics`: R-hat, bulk/tail ESS, Pareto k, importance diagnostics.
* :class:`OutlierDetector`: conformal p-values from a flow's log-density.
* :mod:`~torchnf.inference.queries`: probabilities, expectations, marginal CDFs and normalising
  constants with standard errors.
"""

from torchnf.inference import diagnostics, mcmc
from torchnf.inference.diagnostics import (
    ImportanceDiagnostics,
    ess_bulk,
    ess_mean,
    ess_per_gradient,
    ess_per_second,
    ess_tail,
    importance_diagnostics,
    mcse_mean,
    pareto_khat,
    split_rhat,
    summary,
)
from torchnf.inference.mcmc import MCMCResult, adaptive_flow_mcmc, hmc, independent_mh, mala, neutra
from torchnf.inference.outliers import OutlierDetector
from torchnf.inference.queries import Estimate, expectation, log_normalizer, marginal_cdf, probability
from torchnf.inference.variational import VIResult, fit_variational

__all__ = [
    "diagnostics",
    "mcmc",
    "fit_variational",
    "VIResult",
    "importance_diagnostics",
    "ImportanceDiagnostics",
    "pareto_khat",
    "split_rhat",
    "ess_bulk",
    "ess_tail",
    "ess_mean",
    "mcse_mean",
    "summary",
    "ess_per_second",
    "ess_per_gradient",
    "MCMCResult",
    "independent_mh",
    "neutra",
    "adaptive_flow_mcmc",
    "mala",
    "hmc",
    "OutlierDetector",
    "Estimate",
    "probability",
    "expectation",
    "marginal_cdf",
    "log_normalizer",
]
