"""Harness cases for the orthogonal and QR linear maps: Householder, QRLinear, OrthogonalExp."""

from __future__ import annotations

import torchnf as nf
from torchnf.testing import Case

CASES: list[Case] = [
    Case("Householder-odd-reflections", lambda: nf.Householder(3), perturb=0.5),
    Case("Householder-even-reflections", lambda: nf.Householder(4, reflections=2), perturb=0.5),
    Case("QRLinear", lambda: nf.QRLinear(4), perturb=0.5, compile=True),
    Case("QRLinear-no-bias-one-reflection", lambda: nf.QRLinear(3, reflections=1, bias=False), perturb=0.5),
    Case("OrthogonalExp", lambda: nf.OrthogonalExp(4), perturb=0.5, compile=True),
]
