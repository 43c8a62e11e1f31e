"""torchnf: normalizing flows for PyTorch."""

__version__ = "0.1.0"

from torchnf import datasets, inference, plotting, targets, transformers
from torchnf.architectures import *
from torchnf.bijections.autoregressive import *
from torchnf.bijections.continuous import *
from torchnf.bijections.coupling import *
from torchnf.bijections.elementwise import *
from torchnf.bijections.linear import *
from torchnf.bijections.lipschitz import *
from torchnf.bijections.orthogonal import *
from torchnf.bijections.planar import *
from torchnf.bijections.residual import *
from torchnf.bijections.sinf import *
from torchnf.bijections.sylvester import *
from torchnf.core import *
from torchnf.distributions import *
from torchnf.flow import *
from torchnf.inference import mcmc
from torchnf.inference.outliers import OutlierDetector
from torchnf.nn import MLP, MaskedMLP
from torchnf.training import *
