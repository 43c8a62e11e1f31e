"""Elementwise transformers (one file each; register new ones here)."""

from torchnf.transformers.affine import Affine, Shift
from torchnf.transformers.base import Transformer

__all__ = ["Transformer", "Affine", "Shift"]
