r"""Target densities for variational inference and MCMC, with exact answers where they are known.

Every target is a :class:`Target`: a module whose ``log_prob(x)`` maps ``(*batch, dim)`` to
``(*batch)`` in the input's dtype and device, differentiable in ``x`` (so gradient-based samplers
can use it), and callable (``target(x) == target.log_prob(x)``) so it can be passed wherever a
``log_target`` function is expected. ``log_prob`` may be unnormalised: ``log_normalizer`` is
``log \int exp(log_prob(x)) dx`` where it is known (``0.0`` for normalised densities, ``None``
when unknown, as for a posterior's evidence). Where known, ``sample(n, seed)`` draws exact samples
and ``mean``/``cov`` are the exact moments (float64).

Contents: :class:`Banana`, :class:`Funnel`, :class:`GaussianTarget`, :class:`GaussianMixtureTarget`,
:class:`LogisticRegression` and :class:`TorusTarget`.
"""

from torchnf.targets.applications import LogisticRegression, TorusTarget
from torchnf.targets.base import Target
from torchnf.targets.gaussian import GaussianMixtureTarget, GaussianTarget
from torchnf.targets.geometry import Banana, Funnel

__all__ = [
    "Target",
    "Banana",
    "Funnel",
    "GaussianTarget",
    "GaussianMixtureTarget",
    "LogisticRegression",
    "TorusTarget",
]
