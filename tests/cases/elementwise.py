"""Harness cases for the elementwise bijections: the affine/shift conveniences and the fixed maps
(sigmoid, logit, tanh, leaky ReLU).

The harness's gradient check (7) needs at least one parameter, so each parameter-free map is
composed with an :class:`~torchnf.ElementwiseShift` (:func:`with_shift`); every other property
still exercises the map itself, in both directions.
"""

from __future__ import annotations

import torch

import torchnf as nf
from torchnf.testing import Case

H = (8, 8)


def _unit(low: float, high: float, event: tuple[int, ...]):
    """Inputs uniform in ``[low, high)`` (for maps defined on the unit interval)."""

    def inputs(batch: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
        return low + (high - low) * torch.rand(*batch, *event, generator=g, dtype=dtype)

    return inputs


def with_shift(b: nf.Bijection, after: bool = False) -> nf.Compose:
    """``Compose(shift, b)`` (or ``Compose(b, shift)`` when ``b`` has a restricted input domain)."""
    shift = nf.ElementwiseShift(b.out_event_shape if after else b.event_shape)
    return nf.Compose(b, shift) if after else nf.Compose(shift, b)


CASES: list[Case] = [
    Case("ElementwiseAffine", lambda: nf.ElementwiseAffine(3), structure="elementwise"),
    Case("ElementwiseAffine-image", lambda: nf.ElementwiseAffine((2, 2, 3)), structure="elementwise"),
    Case("ElementwiseAffine-context", lambda: nf.ElementwiseAffine(3, context_dim=2, hidden=H),
         structure="elementwise"),
    Case("ElementwiseShift", lambda: nf.ElementwiseShift(4), structure="elementwise"),
    Case("ElementwiseShift-context", lambda: nf.ElementwiseShift(3, context_dim=2, hidden=H),
         structure="elementwise"),
    Case("Sigmoid", lambda: with_shift(nf.Sigmoid(3)), structure="elementwise", identity_at_init=False),
    Case("Sigmoid-image", lambda: with_shift(nf.Sigmoid((2, 2, 2))), structure="elementwise",
         identity_at_init=False),
    Case("Logit", lambda: with_shift(nf.Logit(3), after=True), inputs=_unit(0.01, 0.99, (3,)),
         structure="elementwise", identity_at_init=False),
    Case("Logit-alpha", lambda: with_shift(nf.Logit(3, alpha=0.05), after=True), inputs=_unit(0.0, 1.0, (3,)),
         structure="elementwise", identity_at_init=False),
    Case("Tanh", lambda: with_shift(nf.Tanh(3)), structure="elementwise", identity_at_init=False),
    Case("LeakyReLU", lambda: with_shift(nf.LeakyReLU(4, negative_slope=0.2)), structure="elementwise",
         identity_at_init=False),
    Case("LeakyReLU-steep", lambda: with_shift(nf.LeakyReLU(3, negative_slope=3.0)), structure="elementwise",
         identity_at_init=False),
]
