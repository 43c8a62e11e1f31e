"""Named architectures, one file per family; all share the signature
``Arch(dim, *, context_dim=0, layers=..., hidden=(...), **family_options)``."""

from torchnf.architectures import continuous, core, freeform, monotonic, residual, splines
from torchnf.architectures.continuous import *
from torchnf.architectures.core import *
from torchnf.architectures.freeform import *
from torchnf.architectures.monotonic import *
from torchnf.architectures.residual import *
from torchnf.architectures.splines import *

# Only the architectures: the submodule names must not leak into ``torchnf`` (``torchnf.core``).
__all__ = [n for m in (core, splines, monotonic, freeform, residual, continuous) for n in m.__all__]
