"""Harness cases for the orthogonal and QR linear maps: Householder, QRLinear, OrthogonalExp."""

from __future__ import annotations

import torchnf as nf
from torchnf.testing import Case

CASES: list[Case] = [
    Case("Householder-odd-reflections", lambda: nf.Householder(3), perturb=0.5),
    Case("Householder-even-reflections", lambda: nf.Householder(4, reflections=2), perturb=0.5),
    Case("QRLinear", lambda: nf.QRLinear(4), perturb=0.5, compile=True),
    # Without a bias, log p(x) = log N(Q R x) = log N(R x): the standard normal is rotation
    # invariant, so Q's reflection vector has an exactly zero log_prob gradient (only rounding
    # noise, which may or may not be nonzero). Its rsample gradient is checked by "QRLinear".
    Case("QRLinear-no-bias-one-reflection", lambda: nf.QRLinear(3, reflections=1, bias=False), perturb=0.5,
         extra={"no_grad_ok": ("q.vectors",)}),
    Case("OrthogonalExp", lambda: nf.OrthogonalExp(4), perturb=0.5, compile=True),
]
