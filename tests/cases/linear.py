"""Harness cases for the linear and normalisation bijections (permutations, LU linear, ActNorm,
BatchNorm). Parameter-free permutations are paired with a shift (see ``cases/elementwise.py``)."""

from __future__ import annotations

import torch

import torchnf as nf
from cases.elementwise import with_shift
from torchnf.testing import Case


def _data(*shape: int, seed: int = 123) -> torch.Tensor:
    """Non-standardised data (mean ~1.5, std ~3) for data-dependent initialisations."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3.0 + 1.5


def _actnorm(event_shape: tuple[int, ...]) -> nf.ActNorm:
    return nf.ActNorm(event_shape).initialize(_data(64, *event_shape))


def _trained_batchnorm(event_shape: tuple[int, ...]) -> nf.BatchNorm:
    """A BatchNorm whose running statistics have moved away from (0, 1)."""
    bn = nf.BatchNorm(event_shape, momentum=0.5)
    for seed in range(3):
        bn(_data(32, *event_shape, seed=seed))
    return bn


CASES: list[Case] = [
    Case("Permutation-random", lambda: with_shift(nf.Permutation(5, seed=3)), identity_at_init=False),
    Case("Permutation-given", lambda: with_shift(nf.Permutation(4, torch.tensor([2, 0, 3, 1]))),
         identity_at_init=False),
    Case("Reverse", lambda: with_shift(nf.Reverse(4)), identity_at_init=False),
    Case("LULinear", lambda: nf.LULinear(4), compile=True),
    Case("LULinear-no-bias", lambda: nf.LULinear(3, bias=False)),
    Case("LULinear-row-permutation", lambda: nf.LULinear(4, permutation=[3, 1, 0, 2]),
         identity_at_init=False),
    Case("ActNorm-initialized", lambda: _actnorm((3,)), structure="elementwise", identity_at_init=False,
         compile=True),
    Case("ActNorm-image", lambda: _actnorm((2, 3, 3)), structure="elementwise", identity_at_init=False),
    Case("BatchNorm", lambda: nf.BatchNorm(3), eval_only=True, structure="elementwise"),
    Case("BatchNorm-trained", lambda: _trained_batchnorm((3,)), eval_only=True, structure="elementwise",
         identity_at_init=False),
    Case("BatchNorm-image", lambda: _trained_batchnorm((2, 3, 3)), eval_only=True, identity_at_init=False),
]
