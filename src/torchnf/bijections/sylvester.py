r"""Sylvester flows (van den Berg et al. 2018): :class:`SylvesterLayer`.

The generative map is ``inverse`` (one pass, ``fast_direction = "inverse"``); ``forward`` (data to
base) solves a triangular nonlinear system exactly by back-substitution, one safeguarded Newton
root solve per coordinate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.bijections.orthogonal import MatrixCache, _check_dim, householder_matrix, skew_exp
from torchnf.bijections.planar import (
    _FLOOR,
    _UNIT_SHIFT,
    _check_solver,
    _ContextParams,
    solve_tanh_root,
    tanh_slope,
)

__all__ = ["SylvesterLayer"]

_KINDS = ("orthogonal", "householder", "triangular")


class SylvesterLayer(MatrixCache, _ContextParams):
    r"""Sylvester flow layer: a rank-``M`` generalisation of the planar flow, invertible by construction.

    The generative map (``inverse`` here, the cheap direction) is

    .. math::
        x = g(z) = z + Q R \tanh(\tilde R Q^T z + b),

    with ``Q`` a ``(D, M)`` matrix of orthonormal columns and ``R``, :math:`\tilde R` ``(M, M)``
    upper triangular. By Sylvester's determinant identity, with
    :math:`t = \tanh(\tilde R Q^T z + b)`,

    .. math::
        \log\lvert\det \partial x/\partial z\rvert
        = \sum_i \log\bigl(1 + (1 - t_i^2)\, r_{ii}\tilde r_{ii}\bigr).

    Invertibility needs :math:`r_{ii}\tilde r_{ii} > -1/\sup h' = -1`. It holds for any raw
    parameters: :math:`\tilde r_{ii} = \operatorname{softplus}(\tau_i + c_0) + \epsilon > 0` and
    :math:`r_{ii} = (s_i - 1)/\tilde r_{ii}` with
    :math:`s_i = 1 + r_{ii}\tilde r_{ii} = \operatorname{softplus}(\pi_i + c_0) + \epsilon > 0`
    (:math:`c_0` makes :math:`\tau = \pi = 0` give :math:`\tilde r_{ii} = 1`, :math:`r_{ii} = 0`;
    :math:`\epsilon = 10^{-6}`). A positive :math:`\tilde r_{ii}` loses nothing: ``tanh`` is odd,
    so a sign on :math:`\tilde r_{ii}` can move into ``b`` and :math:`r_{ii}`.

    ``kind`` chooses ``Q``:

    * ``"orthogonal"``: the first ``M`` columns of :math:`\exp(A - A^T)` (exact orthonormality,
      in place of the paper's iterative orthogonalisation), ``A`` random at initialisation;
    * ``"householder"``: the first ``M`` columns of a product of ``reflections`` Householder
      reflections with random vectors;
    * ``"triangular"``: the identity's first ``M`` columns, or the reversal permutation's when
      ``flip=True`` (alternate it between layers).

    ``forward`` (data to base): the part of ``x`` orthogonal to ``Q``'s columns is unchanged, and
    :math:`v = Q^T z` solves :math:`v + R\tanh(\tilde R v + b) = Q^T x`, whose Jacobian
    :math:`I + R\,\mathrm{diag}(1 - t^2)\tilde R` is upper triangular. So ``v`` is found exactly by
    back-substitution, from :math:`v_M` to :math:`v_1`, each coordinate a scalar increasing equation
    :math:`v_i + r_{ii}\tanh(\tilde r_{ii} v_i + p_i) = y_i` solved by safeguarded Newton iteration
    (tolerance ``tol``, at most ``max_iter`` iterations, ``RuntimeError`` otherwise); then
    :math:`z = x - Q R t`. Gradients flow through one implicit Newton step per coordinate, not
    through the iterations. Cost: ``M`` sequential scalar solves.
    The convergence test reads a tensor on the host, so ``forward`` does not compile with
    ``fullgraph=True``; ``inverse`` (sampling) does.

    Identity at initialisation: ``R = 0`` (its diagonal and strict upper part). With a context, the
    entries of ``R``, :math:`\tilde R` and ``b`` are free values plus an MLP of the context
    (zero-initialised last layer); ``Q`` stays unconditional.

    Shapes: ``x``, ``z``: ``(*batch, D)``; context ``(*batch, context_dim)``; ``ladj``: ``(*batch)``.

    Args:
        dim: number of features ``D``.
        m: number of columns ``M <= D`` of ``Q`` (default ``D``).
        kind: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        context_dim: size of the context (0: unconditional).
        hidden: hidden widths of the context MLP.
        activation: its activation.
        reflections: number of reflections for ``kind="householder"`` (default ``D``).
        flip: for ``kind="triangular"``, use the reversal permutation.
        tol: relative tolerance of the ``forward`` root solves.
        max_iter: iteration cap of each root solve.

    Example:
        >>> layer = SylvesterLayer(3, kind="householder")
        >>> x, ladj = layer.inverse(torch.randn(4, 3))
        >>> z, ladj = layer(x)

    References:
        van den Berg, Hasenclever, Tomczak, Welling, "Sylvester Normalizing Flows for Variational
        Inference", UAI 2018.
    """

    fast_direction = "inverse"

    def __init__(
        self,
        dim: int,
        m: int | None = None,
        kind: str = "orthogonal",
        context_dim: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        activation: str = "relu",
        reflections: int | None = None,
        flip: bool = False,
        tol: float = 1e-12,
        max_iter: int = 100,
    ) -> None:
        name = "SylvesterLayer"
        _check_dim(name, dim)
        m = dim if m is None else m
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= dim:
            raise ValueError(f"{name}: m must be an integer in [1, dim={dim}], got {m!r}")
        if kind not in _KINDS:
            raise ValueError(f"{name}: kind must be one of {_KINDS}, got {kind!r}")
        if flip and kind != "triangular":
            raise ValueError(f"{name}: flip=True applies to kind='triangular' only, got kind={kind!r}")
        k = dim if reflections is None else reflections
        if kind == "householder" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"{name}: reflections must be an integer >= 1, got {reflections!r}")
        super().__init__((dim,), context_dim)
        self.tol, self.max_iter = _check_solver(name, tol, max_iter)
        self.m, self.kind, self.flip = m, kind, bool(flip)
        if kind == "orthogonal":
            self.q_params = nn.Parameter(torch.randn(dim, dim))
        elif kind == "householder":
            self.q_params = nn.Parameter(torch.randn(k, dim))
        else:
            eye = torch.eye(dim)
            self.register_buffer("q_fixed", (eye.flip(1) if flip else eye)[:, :m].clone(), persistent=False)
        self.register_buffer("triu", torch.triu_indices(m, m, 1), persistent=False)
        n_up = m * (m - 1) // 2
        self._sizes = (n_up, n_up, m, m, m)  # R strict upper, R~ strict upper, pi, tau, b
        self._init_params(torch.zeros(sum(self._sizes)), context_dim, hidden, activation)

    # -- parameters ------------------------------------------------------------------------------
    def orthonormal(self) -> Tensor:
        """``Q``: ``(D, M)`` with orthonormal columns (cached in eval mode without gradients)."""
        if self.kind == "triangular":
            return self.q_fixed
        build = skew_exp if self.kind == "orthogonal" else householder_matrix
        return self._cached(  # type: ignore[return-value]
            "q", (self.q_params,), lambda: build(self.q_params)[:, : self.m]
        )

    def triangular(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""``(R, R~, b, s)``: ``(*, M, M)``, ``(*, M, M)``, ``(*, M)`` and ``s = 1 + diag(R) diag(R~)``.

        ``*`` is empty without context and the context's batch shape with one.
        """
        r_up, rt_up, pi, tau, b = self._raw(context).split(self._sizes, dim=-1)
        rt_diag = F.softplus(tau + _UNIT_SHIFT) + _FLOOR
        s = F.softplus(pi + _UNIT_SHIFT) + _FLOOR
        return self._upper(r_up, (s - 1) / rt_diag), self._upper(rt_up, rt_diag), b, s

    def _upper(self, strict: Tensor, diag: Tensor) -> Tensor:
        out = torch.diag_embed(diag)
        out[..., self.triu[0], self.triu[1]] = strict
        return out

    # -- maps ------------------------------------------------------------------------------------
    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        q = self.orthonormal()
        r, rt, b, s = self.triangular(context)
        v = z @ q
        t = torch.tanh((rt @ v.unsqueeze(-1)).squeeze(-1) + b)
        x = z + (r @ t.unsqueeze(-1)).squeeze(-1) @ q.mT
        return x, tanh_slope(t, s).log().sum(-1)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        q = self.orthonormal()
        r, rt, b, s = self.triangular(context)
        y = x @ q
        batch = y.shape[:-1]
        r_diag, rt_diag = r.diagonal(dim1=-2, dim2=-1), rt.diagonal(dim1=-2, dim2=-1)
        # pre[i] = b_i + sum_{j>i, solved} rt_ij v_j;  rhs[i] = y_i - sum_{j>i, solved} r_ij t_j
        pre, rhs = b.expand(*batch, self.m), y
        ts: list[Tensor] = [y[..., 0]] * self.m
        for i in reversed(range(self.m)):
            c, k, p, si, yi = r_diag[..., i], rt_diag[..., i], pre[..., i], s[..., i], rhs[..., i]
            root = solve_tanh_root(
                yi, c, k, p, si, tol=self.tol, max_iter=self.max_iter, owner=type(self).__name__
            )
            t0 = torch.tanh(k * root + p)
            vi = root - (root + c * t0 - yi) / tanh_slope(t0, si).detach()  # implicit gradient
            ts[i] = torch.tanh(k * vi + p)
            if i:
                pre = pre + rt[..., :, i] * vi.unsqueeze(-1)
                rhs = rhs - r[..., :, i] * ts[i].unsqueeze(-1)
        t = torch.stack(ts, dim=-1)
        z = x - (r @ t.unsqueeze(-1)).squeeze(-1) @ q.mT
        return z, -tanh_slope(t, s).log().sum(-1)

    def extra_repr(self) -> str:
        flip = ", flip=True" if self.flip else ""
        return f"m={self.m}, kind={self.kind!r}{flip}, " + super().extra_repr()
