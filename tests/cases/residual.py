"""Harness cases for residual flows: :class:`~torchnf.ResidualBlock`, ``IResNet``, ``ResidualFlow``.

Their training-mode log-dets are stochastic (``stochastic=True``: the harness checks the estimator's
mean against the exact eval-mode value) and the spectral-norm power iteration runs in training
mode (``eval_only=True``). ``make`` perturbs the parameters itself and then converges the power
iteration, so that the training-mode map (one more power-iteration step per call) equals the eval-mode
map to the iteration's tolerance; the harness adds no further perturbation (``perturb=0``).
"""

from __future__ import annotations

import torch

import torchnf as nf
from torchnf.bijections.lipschitz import SpectralLinear
from torchnf.testing import Case

H = (8,)  # one hidden layer: `perturbed` aligns the two layers


def perturbed(b: nf.Bijection, scale: float = 1.0, seed: int = 0) -> nf.Bijection:
    """Add ``scale * randn`` to every weight (a tenth of it to other parameters), make the last layer of
    each one-hidden-layer branch ``-W_1^T`` (a Jacobian with eigenvalues near ``-lipschitz``, so that
    the log-det is far from zero), then converge every spectral norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in b.named_parameters():
            s = scale if name.endswith("weight") else 0.1 * scale
            p.add_(s * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in b.modules():
            if isinstance(m, nf.LipschitzMLP) and len(m.linears) == 2:
                m.linears[1].weight.copy_(-m.linears[0].weight.t())
            if isinstance(m, nf.ActNorm):  # initialised: no data-dependent init in training mode
                m.initialize(torch.randn(64, *m.event_shape, generator=g) * 1.5 + 0.3)
    for m in b.modules():
        if isinstance(m, SpectralLinear):
            m.converge_(tol=1e-10, max_iter=2000)
    return b


def _case(name: str, make, **kw) -> Case:
    options = {"stochastic": True, "eval_only": True, "perturb": 0.0, "identity_at_init": False, **kw}
    return Case(name, lambda: perturbed(make()), **options)


CASES: list[Case] = [
    Case("ResidualBlock-identity-init", lambda: nf.ResidualBlock(3, hidden=H, estimator="exact"),
         eval_only=True),
    _case("ResidualBlock-series", lambda: nf.ResidualBlock(3, hidden=H, estimator="series", n_terms=30)),
    _case("ResidualBlock-roulette-lipswish", lambda: nf.ResidualBlock(
        3, hidden=H, activation="lipswish", estimator="roulette", neumann_grad=True)),
    _case("ResidualBlock-context", lambda: nf.ResidualBlock(
        2, context_dim=2, hidden=H, estimator="roulette")),
    _case("ResidualBlock-deep-series", lambda: nf.ResidualBlock(
        3, hidden=(8, 8), activation="tanh", estimator="series", n_terms=20)),
    # architectures ---------------------------------------------------------------------------
    _case("IResNet", lambda: nf.IResNet(3, layers=2, hidden=H, n_terms=30)),
    _case("ResidualFlow", lambda: nf.ResidualFlow(3, layers=2, hidden=H)),
    _case("ResidualFlow-context", lambda: nf.ResidualFlow(2, context_dim=2, layers=2, hidden=H)),
]
