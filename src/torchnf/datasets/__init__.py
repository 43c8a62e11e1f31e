"""Data for flows: toy 2-D densities (with true log-density where known), the tabular benchmarks
of the MAF/NSF papers, (Fashion-)MNIST image loaders, and readers for user data tables.

Example:
    >>> from torchnf import datasets
    >>> datasets.names()
    ['checkerboard', 'circles', 'eight_gaussians', 'moons', 'pinwheel', 'rings', 'two_spirals']
    >>> x = datasets.get("rings").sample(100, seed=0)
"""

from torchnf.datasets.files import *  # noqa: F403
from torchnf.datasets.files import __all__ as _files_all
from torchnf.datasets.images import *  # noqa: F403
from torchnf.datasets.images import __all__ as _images_all
from torchnf.datasets.tabular import *  # noqa: F403
from torchnf.datasets.tabular import __all__ as _tabular_all
from torchnf.datasets.toy import *  # noqa: F403
from torchnf.datasets.toy import __all__ as _toy_all

__all__ = [*_toy_all, *_tabular_all, *_images_all, *_files_all]
