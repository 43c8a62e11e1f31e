"""Elementwise transformers (one file each; register new ones here)."""

from torchnf.transformers.affine import Affine, Shift
from torchnf.transformers.base import Transformer

__all__ = ["Transformer", "Affine", "Shift"]
from torchnf.transformers.circular import CircularSpline  # noqa: E402
from torchnf.transformers.linear_rational import LinearRationalSpline  # noqa: E402
from torchnf.transformers.splines import RationalQuadraticSpline, rational_quadratic  # noqa: E402

__all__ += ["RationalQuadraticSpline", "rational_quadratic", "LinearRationalSpline", "CircularSpline"]
from torchnf.transformers.monotonic import UMNN, DeepSigmoid  # noqa: E402

__all__ += ["UMNN", "DeepSigmoid"]
