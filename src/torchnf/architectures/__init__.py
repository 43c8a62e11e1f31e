"""Named architectures, one file per family; all share the signature
``Arch(dim, *, context_dim=0, layers=..., hidden=(...), **family_options)``."""

from torchnf.architectures.continuous import *
from torchnf.architectures.core import *
from torchnf.architectures.freeform import *
from torchnf.architectures.monotonic import *
from torchnf.architectures.residual import *
from torchnf.architectures.splines import *
