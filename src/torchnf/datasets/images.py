"""Image loaders: MNIST as an ``.npz`` archive and (Fashion-)MNIST in the original idx(.gz) layout.

Both return raw 8-bit images as ``uint8`` tensors of shape ``(N, 1, H, W)`` and labels as
``int64`` tensors of shape ``(N,)``. Dequantise for density estimation with
``x = (v + u) / 256, u ~ U[0, 1)`` (:func:`uniform_dequantize`) and report bits per dimension as
``(-log p(x) + D ln 256) / (D ln 2)``.

The idx format (LeCun et al., 1998) is a big-endian header: two zero bytes, a type code
(``0x08`` = uint8, ...), the number of dimensions, then one 4-byte size per dimension, followed
by the data in C order.

Example:
    >>> from torchnf.datasets import load_mnist_npz
    >>> x, y = load_mnist_npz("/path/to/mnist_test.npz")  # doctest: +SKIP
    >>> x.shape, x.dtype  # doctest: +SKIP
    (torch.Size([10000, 1, 28, 28]), torch.uint8)
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_idx", "load_mnist_npz", "load_idx_images", "uniform_dequantize"]

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (gzip-compressed when its name ends in ``.gz``) into a numpy array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the header is malformed or the data size disagrees with it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_idx: no such file {path!r}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"read_idx: cannot read {path!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"read_idx: {path!r} does not start with an idx header (00 00 type ndim)")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"read_idx: {path!r} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - start != count * dtype.itemsize:
        raise ValueError(
            f"read_idx: {path!r} declares shape {shape} ({count * dtype.itemsize} bytes of data) "
            f"but holds {len(raw) - start}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def _images(x: np.ndarray, what: str) -> Tensor:
    if x.ndim != 3:
        raise ValueError(f"{what}: expected images of shape (N, H, W), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)).unsqueeze(1)


def _labels(y: np.ndarray, n: int, what: str) -> Tensor:
    if y.shape != (n,):
        raise ValueError(f"{what}: expected {n} labels, got an array of shape {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def load_mnist_npz(path: str, split: str = "test") -> tuple[Tensor, Tensor]:
    """Load ``x_<split>`` (uint8 ``(N, 28, 28)``) and ``y_<split>`` from an ``.npz`` archive.

    Returns:
        images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_mnist_npz: no such file {path!r}")
    with np.load(path) as d:
        keys = (f"x_{split}", f"y_{split}")
        if any(k not in d for k in keys):
            raise ValueError(f"load_mnist_npz: {path!r} lacks {keys}; it holds {sorted(d.files)}")
        x, y = d[keys[0]], d[keys[1]]
    images = _images(x, "load_mnist_npz")
    return images, _labels(y, len(images), "load_mnist_npz")


def load_idx_images(root: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """Load (Fashion-)MNIST from the original idx files in ``root``.

    Reads ``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]`` for
    ``split="train"`` and the ``t10k-`` files for ``split="test"`` (the Debian
    ``dataset-fashion-mnist`` package installs them under ``/usr/share/datasets/fashion-mnist``).

    Returns:
        images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_idx_images: split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"

    def find(stem: str) -> str:
        for name in (f"{prefix}-{stem}.gz", f"{prefix}-{stem}"):
            if os.path.isfile(os.path.join(root, name)):
                return os.path.join(root, name)
        raise FileNotFoundError(f"load_idx_images: no {prefix}-{stem}[.gz] in {root!r}")

    images = _images(read_idx(find("images-idx3-ubyte")), "load_idx_images")
    return images, _labels(read_idx(find("labels-idx1-ubyte")), len(images), "load_idx_images")


def uniform_dequantize(images: Tensor, seed: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform dequantisation of 8-bit images: ``x = (v + u) / 256`` with ``u ~ U[0, 1)``."""
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    dtype = dtype or torch.get_default_dtype()
    u = torch.rand(images.shape, generator=gen, dtype=dtype)
    return (images.to(dtype) + u) / 256
