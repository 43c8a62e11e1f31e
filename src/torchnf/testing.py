"""Property harness for bijections and flows (public, so users can check their own bijections).

A :class:`Case` describes how to build and exercise one bijection; ``check_bijection`` runs the
properties of ``DESIGN.md`` on it and raises ``AssertionError`` with a precise message on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from torchnf.core import Bijection

__all__ = ["Case"]


@dataclass
class Case:
    """How to build and test one bijection.

    Attributes:
        name: test id.
        make: builds the bijection (called under a fixed seed, default dtype float32; the harness
            casts to float64 as needed).
        inputs: ``(batch_shape, dtype, generator) -> x`` producing valid inputs of shape
            ``(*batch_shape, *event_shape)``; default standard normal.
        structure: ``"coupling"``, ``"autoregressive"``, ``"elementwise"`` or ``None``: which
            Jacobian structure to check.
        perturb: scale of the random noise added to parameters so the map is not the identity
            (0 to keep the parameters as built).
        stochastic: the log-det is a stochastic estimate in training mode (exact in eval mode).
        eval_only: round-trip and log-det checks only hold in ``eval()`` (e.g. batch norm).
        tol: multiplier on the default tolerances (splines and iterative inverses need more).
        jacobian: run the autograd-Jacobian log-det check (disable only if prohibitively slow).
        compile: include in the (slow) ``torch.compile(fullgraph=True)`` test; opt in for one or two
            representatives per family.
        identity_at_init: the freshly built bijection is the identity map.
        extra: free-form options for family-specific checks.
    """

    name: str
    make: Callable[[], Bijection]
    inputs: Callable[[torch.Size, torch.dtype, torch.Generator], Tensor] | None = None
    structure: str | None = None
    perturb: float = 0.1
    stochastic: bool = False
    eval_only: bool = False
    tol: float = 1.0
    jacobian: bool = True
    compile: bool = False
    identity_at_init: bool = True
    extra: dict = field(default_factory=dict)
