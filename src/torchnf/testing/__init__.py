"""Property harness for bijections and flows (public, so users can check their own bijections).

A :class:`Case` describes how to build and exercise one bijection; :func:`check_bijection` runs the
properties of ``DESIGN.md`` on it and raises ``AssertionError`` naming the property, the batch
shape, the largest error and the tolerance. :func:`check_transformer`, :func:`check_flow` and
:func:`normalization_error` do the same for scalar transformers and whole flows.

Example:
    >>> import torchnf as nf
    >>> from torchnf.testing import check_bijection
    >>> check_bijection(nf.AffineCoupling(4, hidden=(8,)), structure="coupling")
"""

from torchnf.testing.base import Case, perturb, tolerances
from torchnf.testing.bijection import check_bijection, check_compiled
from torchnf.testing.flow import check_flow, check_transformer, normalization_error

__all__ = ["Case", "check_bijection", "check_compiled", "check_flow", "check_transformer",
           "normalization_error", "perturb", "tolerances"]
