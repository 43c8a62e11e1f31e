r"""Orthogonal and QR-factorised linear maps: :class:`Householder`, :class:`QRLinear`,
:class:`OrthogonalExp`.

All three assemble a ``(D, D)`` matrix from their parameters and apply it as ``z = W x`` (plus a
bias for :class:`QRLinear`). Both directions are one matrix product (or a triangular solve), so
``fast_direction = "both"``.

Eval-time caching: in ``eval()`` mode and with gradients disabled, the assembled matrix is kept
and reused while the parameters are unchanged. The cache key is each parameter's storage pointer,
version counter, dtype and device, so an optimiser step, ``load_state_dict``, ``.to(...)`` or any
in-place edit under ``torch.no_grad()`` invalidates it. Writes through ``param.data`` bypass
PyTorch's version counter: call :meth:`clear_cache` after those. Training mode, enabled gradients
and ``torch.compile`` tracing never use the cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.core import Bijection

__all__ = ["Householder", "QRLinear", "OrthogonalExp", "MatrixCache", "householder_matrix"]


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


class MatrixCache:
    """Mixin for bijections whose assembled matrices may be cached in eval mode.

    See the module docstring for when the cache is used and what invalidates it.
    """

    def _cached(self, name: str, tensors: Sequence[Tensor], build: Callable[[], object]) -> object:
        """``build()``, or its cached value in eval mode when ``tensors`` are unchanged."""
        training = self.training  # type: ignore[attr-defined]
        if training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return build()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        cache = self.__dict__.setdefault("_matrix_cache", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = build()
        cache[name] = (key, value)
        return value

    def clear_cache(self) -> None:
        """Drop cached matrices (needed only after writing to parameters through ``.data``)."""
        for m in self.modules():  # type: ignore[attr-defined]
            m.__dict__.pop("_matrix_cache", None)


def _check_dim(name: str, dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{name}: dim must be an integer >= 1, got {dim!r}")
    return dim


def householder_matrix(vectors: Tensor) -> Tensor:
    r"""Product of reflections :math:`H(v_1) H(v_2) \cdots H(v_k)`, :math:`H(v) = I - 2 v v^T / |v|^2`.

    Args:
        vectors: ``(k, D)`` reflection vectors (rows); a zero row acts as the identity.

    Returns:
        The orthogonal ``(D, D)`` matrix.
    """
    d = vectors.shape[-1]
    tiny = torch.finfo(vectors.dtype).tiny
    scaled = vectors * (2.0 / vectors.square().sum(-1, keepdim=True).clamp_min(tiny))
    q = torch.eye(d, dtype=vectors.dtype, device=vectors.device)
    for v, s in zip(vectors.unbind(0), scaled.unbind(0)):
        q = q - torch.outer(q @ v, s)  # Q H(v) = Q - 2 (Q v) v^T / |v|^2
    return q


def _apply(x: Tensor, w: Tensor) -> Tensor:
    """``W x`` for a batch of row vectors ``x`` of shape ``(*batch, D)``."""
    return x @ w.mT


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[:-1])


# --------------------------------------------------------------------------------------------
# Householder
# --------------------------------------------------------------------------------------------


class Householder(MatrixCache, Bijection):
    r"""Orthogonal map given by a product of Householder reflections; ``ladj = 0``.

    .. math::
        z = Q x, \qquad Q = H(v_1) \cdots H(v_k), \qquad H(v) = I - 2 \frac{v v^T}{\lVert v \rVert^2}.

    Identity at initialisation: the vectors start in equal pairs, and ``H(v) H(v) = I``. A product
    of an odd number of reflections has determinant ``-1`` and can never be the identity, so for odd
    ``reflections`` a fixed reflection (the buffer ``anchor``) is placed first and paired with
    ``v_1``. The map is then always a rotation (determinant ``+1``); any rotation is a product of at
    most ``D`` reflections, so ``reflections >= D - 1`` can represent every rotation.

    Shapes: ``x`` and ``z`` are ``(*batch, D)``; ``ladj`` is ``(*batch)`` (zeros). Both directions
    are one matrix product (``inverse`` uses ``Q^T``).

    Args:
        dim: number of features ``D``.
        reflections: number of learnable reflections ``k`` (default ``D``).

    Example:
        >>> b = Householder(3)
        >>> z, ladj = b(torch.randn(5, 3))

    References:
        Tomczak & Welling, "Improving Variational Auto-Encoders using Householder Flow", 2016.
        Householder, "Unitary Triangularization of a Nonsymmetric Matrix", J. ACM, 1958.
    """

    def __init__(self, dim: int, reflections: int | None = None) -> None:
        _check_dim("Householder", dim)
        k = dim if reflections is None else reflections
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Householder: reflections must be an integer >= 1, got {reflections!r}")
        super().__init__((dim,))
        pairs = torch.randn((k + 1) // 2, dim).repeat_interleave(2, dim=0)
        odd = k % 2 == 1
        self.vectors = nn.Parameter(pairs[1:].clone() if odd else pairs)
        self.register_buffer("anchor", pairs[:1].clone() if odd else pairs[:0].clone())
        self.reflections = k

    def matrix(self) -> Tensor:
        """The orthogonal ``(D, D)`` matrix ``Q`` (cached in eval mode without gradients)."""
        return self._cached(  # type: ignore[return-value]
            "q", (self.vectors, self.anchor),
            lambda: householder_matrix(torch.cat([self.anchor, self.vectors], dim=0)),
        )

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return _apply(x, self.matrix()), _zeros(x)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z @ self.matrix(), _zeros(z)

    def extra_repr(self) -> str:
        return f"reflections={self.reflections}, " + super().extra_repr()


# --------------------------------------------------------------------------------------------
# QR
# --------------------------------------------------------------------------------------------


class QRLinear(MatrixCache, Bijection):
    r"""Invertible linear map ``z = Q R x + b`` with ``Q`` orthogonal and ``R`` upper triangular.

    ``Q`` is a product of Householder reflections (a :class:`Householder` submodule, so always a
    rotation); ``R`` has free entries above the diagonal and a positive diagonal
    :math:`r_{ii} = \epsilon + \operatorname{softplus}(\rho_i + c)`, with ``c`` chosen so that
    ``rho = 0`` gives ``r_ii = 1`` (``epsilon = 1e-5`` keeps ``R`` invertible). Starts at the
    identity (``R = I``, ``Q = I``, ``b = 0``).

    .. math::
        \log\lvert\det \partial z / \partial x\rvert = \sum_i \log r_{ii}, \qquad
        x = R^{-1} Q^T (z - b) \text{ (triangular solve).}

    Shapes: ``(*batch, D)`` in and out; ``ladj`` is ``(*batch)``. Both directions are one pass.

    Args:
        dim: number of features ``D``.
        reflections: number of Householder reflections in ``Q`` (default ``D``).
        bias: learn the offset ``b``.

    Example:
        >>> b = QRLinear(4)
        >>> z, ladj = b(torch.randn(8, 4))

    References:
        Hoogeboom, van den Berg, Welling, "Emerging Convolutions for Generative Normalizing Flows",
        ICML 2019 (QR parameterisation of invertible linear layers).
    """

    _FLOOR = 1e-5

    def __init__(self, dim: int, reflections: int | None = None, bias: bool = True) -> None:
        _check_dim("QRLinear", dim)
        super().__init__((dim,))
        self.q = Householder(dim, reflections)
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.diag = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self._shift = math.log(math.expm1(1.0 - self._FLOOR))

    def diagonal(self) -> Tensor:
        """The positive diagonal of ``R``."""
        return F.softplus(self.diag + self._shift) + self._FLOOR

    def triangular(self) -> Tensor:
        """The upper-triangular ``(D, D)`` factor ``R``."""
        return self.upper.triu(1) + torch.diag_embed(self.diagonal())

    def _parts(self) -> tuple[Tensor, Tensor, Tensor]:
        def build() -> tuple[Tensor, Tensor, Tensor]:
            r = self.triangular()
            q = self.q.matrix()
            return q @ r, r, self.diagonal().log().sum()

        return self._cached(  # type: ignore[return-value]
            "qr", (self.upper, self.diag, self.q.vectors, self.q.anchor), build
        )

    def matrix(self) -> Tensor:
        """The weight ``W = Q R``."""
        return self._parts()[0]

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        w, _, logdet = self._parts()
        z = _apply(x, w)
        if self.bias is not None:
            z = z + self.bias
        return z, _zeros(x) + logdet

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        _, r, logdet = self._parts()
        y = z - self.bias if self.bias is not None else z
        y = y @ self.q.matrix()  # rows of Q^T (z - b)
        flat = y.reshape(-1, y.shape[-1])
        # x^T = y^T R^{-T}: solve X R^T = Y with R^T lower triangular.
        x = torch.linalg.solve_triangular(r.mT, flat, upper=False, left=False)
        return x.reshape(y.shape), _zeros(z) - logdet


# --------------------------------------------------------------------------------------------
# Matrix exponential
# --------------------------------------------------------------------------------------------


def skew_exp(weight: Tensor) -> Tensor:
    """``matrix_exp(A - A^T)`` with ``A`` the strictly upper part of ``weight``: an orthogonal matrix."""
    a = weight.triu(1)
    return torch.linalg.matrix_exp(a - a.mT)


class OrthogonalExp(MatrixCache, Bijection):
    r"""Rotation ``z = Q x`` with ``Q = exp(A - A^T)``, ``A`` strictly upper triangular; ``ladj = 0``.

    The exponential of a skew-symmetric matrix is a rotation, and every rotation is reached.
    ``A = 0`` at initialisation, so the layer starts at the identity. Both directions are one
    matrix product (``inverse`` uses ``Q^T``).

    Shapes: ``(*batch, D)`` in and out; ``ladj`` is ``(*batch)`` (zeros).

    Args:
        dim: number of features ``D``.

    Example:
        >>> b = OrthogonalExp(3)
        >>> z, ladj = b(torch.randn(5, 3))

    References:
        Lezcano-Casado & Martinez-Rubio, "Cheap Orthogonal Constraints in Neural Networks: A Simple
        Parametrization of the Orthogonal and Unitary Group", ICML 2019.
    """

    def __init__(self, dim: int) -> None:
        _check_dim("OrthogonalExp", dim)
        super().__init__((dim,))
        self.weight = nn.Parameter(torch.zeros(dim, dim))

    def matrix(self) -> Tensor:
        """The orthogonal ``(D, D)`` matrix ``Q``."""
        return self._cached("q", (self.weight,), lambda: skew_exp(self.weight))  # type: ignore[return-value]

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return _apply(x, self.matrix()), _zeros(x)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z @ self.matrix(), _zeros(z)
