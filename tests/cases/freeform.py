"""Harness cases for planar, radial and Sylvester layers and their architectures.

Planar and Sylvester ``forward`` maps are iterative root solves (tolerance 1e-12 relative, far inside
the harness's round-trip tolerances) that check convergence on the host, so only their sampling
direction (``inverse``, registered through :class:`~torchnf.Inverse`) is in the compile test; radial
is closed form both ways.
"""

from __future__ import annotations

import torchnf as nf
from torchnf.testing import Case

H = (8,)

CASES: list[Case] = [
    Case("PlanarLayer", lambda: nf.PlanarLayer(3), perturb=0.5),
    Case("PlanarLayer-context", lambda: nf.PlanarLayer(3, context_dim=2, hidden=H), perturb=0.3),
    Case("RadialLayer", lambda: nf.RadialLayer(3), perturb=0.5, compile=True),
    Case("RadialLayer-1d", lambda: nf.RadialLayer(1), perturb=0.5),
    Case("RadialLayer-context", lambda: nf.RadialLayer(3, context_dim=2, hidden=H), perturb=0.3),
    Case("SylvesterLayer-orthogonal", lambda: nf.SylvesterLayer(4), perturb=0.5),
    Case("SylvesterLayer-householder-m2",
         lambda: nf.SylvesterLayer(4, m=2, kind="householder", reflections=3), perturb=0.5),
    Case("SylvesterLayer-triangular-flip", lambda: nf.SylvesterLayer(3, kind="triangular", flip=True),
         perturb=0.5),
    Case("SylvesterLayer-context", lambda: nf.SylvesterLayer(3, m=2, context_dim=2, hidden=H), perturb=0.3),
    # The sampling direction is one pass without host synchronisation: it compiles with fullgraph=True.
    Case("Inverse-PlanarLayer", lambda: nf.Inverse(nf.PlanarLayer(3)), perturb=0.5, compile=True),
    Case("Inverse-SylvesterLayer", lambda: nf.Inverse(nf.SylvesterLayer(3, kind="householder")), perturb=0.5,
         compile=True),
    Case("Planar", lambda: nf.Planar(2, layers=3), perturb=0.3),
    Case("Planar-context", lambda: nf.Planar(2, context_dim=2, layers=2, hidden=H), perturb=0.3),
    Case("Radial", lambda: nf.Radial(2, layers=3), perturb=0.3),
    Case("Sylvester-triangular", lambda: nf.Sylvester(3, layers=2, kind="triangular"), perturb=0.3),
    Case("Sylvester-householder-context", lambda: nf.Sylvester(
        3, context_dim=2, layers=2, kind="householder", m=2, hidden=H), perturb=0.3),
]
