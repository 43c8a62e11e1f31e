"""Harness cases for continuous flows: :class:`~torchnf.ContinuousFlow` and ``FFJORD``.

Training mode uses Hutchinson's trace (``stochastic=True``: the harness compares the mean of draws
with the exact eval-mode log-det). Solver tolerances are tight (1e-9; float32 raises them to its
resolution), so round trips hold to the harness's tolerances times ``tol``.
"""

from __future__ import annotations

import torchnf as nf
from torchnf.testing import Case

H = (8, 8)
TIGHT = {"atol": 1e-9, "rtol": 1e-9}

CASES: list[Case] = [
    Case("ContinuousFlow", lambda: nf.ContinuousFlow(2, hidden=H, **TIGHT), stochastic=True, tol=10),
    Case("ContinuousFlow-context", lambda: nf.ContinuousFlow(2, context_dim=2, hidden=H, **TIGHT),
         stochastic=True, tol=10),
    # two adaptive solves in sequence: a batch and its rows take different steps, so "batched equals
    # row by row" holds to the solver tolerance (~1e-8 here), not to the harness's 1e-9 default
    Case("FFJORD", lambda: nf.FFJORD(2, layers=2, hidden=H, **TIGHT), stochastic=True, tol=100),
]
