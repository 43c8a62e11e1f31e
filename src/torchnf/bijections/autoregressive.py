"""Masked autoregressive layers (MAF; IAF as their :class:`~torchnf.Inverse`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.core import Bijection, needs_graph
from torchnf.nn import MaskedMLP, _after_linear, get_activation
from torchnf.transformers.affine import Affine
from torchnf.transformers.base import Transformer

__all__ = ["MaskedAutoregressive", "MaskedAffineAutoregressive"]


class MaskedAutoregressive(Bijection):
    r"""Autoregressive layer ``z_i = tau(x_i; c_i(x_{<i}, context))`` with a MADE conditioner.

    ``forward`` (density evaluation) is one MADE pass. ``inverse`` (sampling) takes ``D``
    sequential steps: step ``k`` fixes the ``k``-th feature in the order. Without a graph
    (``no_grad``, as in :meth:`~torchnf.Flow.sample`) the steps together cost less than one
    MADE pass in the hidden layers, since each hidden unit is computed once, as soon as the
    features it depends on are known. The Jacobian is
    triangular in the order, so ``ladj`` is the sum of the transformer's log-derivatives.

    Args:
        transformer: elementwise map.
        dim: number of features ``D``.
        order: permutation of ``range(D)`` (``order[i]`` = position of feature ``i``); default
            the identity order.
        context_dim: size of the context.
        hidden: hidden widths of the MADE.
        residual_blocks: residual MADE (equal hidden widths).
        activation: activation name.
        circular: the features are angles; the MADE sees ``(cos x, sin x)`` (Rezende et al. 2020).

    Example:
        >>> layer = MaskedAutoregressive(nf.transformers.Affine(), 4, hidden=(32, 32))
        >>> z, ladj = layer(torch.randn(10, 4))

    References:
        Papamakarios et al., "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", 2016.
    """

    fast_direction = "forward"

    def __init__(
        self,
        transformer: Transformer,
        dim: int,
        order: Tensor | Sequence[int] | None = None,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (256, 256),
        residual_blocks: bool = False,
        activation: str = "relu",
        circular: bool = False,
    ) -> None:
        super().__init__((dim,), context_dim)
        self.transformer = transformer
        self.made = MaskedMLP(
            dim, transformer.num_params, context_dim, hidden, order, residual_blocks, activation,
            circular=circular,
        )
        self._pshape = tuple(transformer.param_shape)
        identity = transformer.identity_params()
        self._add_identity = bool(identity.abs().sum() > 0)
        self.register_buffer("identity", identity, persistent=False)
        self._steps = tuple(int(i) for i in self.made.order.argsort())

    @property
    def order(self) -> Tensor:
        return self.made.order

    def _params(self, x: Tensor, context: Tensor | None) -> Tensor:
        params = self.made(x, context)
        if self._pshape != (self.transformer.num_params,):
            params = params.view(*params.shape[:-1], *self._pshape)
        return params + self.identity if self._add_identity else params

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, l = self.transformer.forward(x, self._params(x, context))
        return z, l.sum(-1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.made.residual_blocks or len(self.made.net) == 1:
            x = torch.zeros_like(z)
            for _ in range(self.event_shape[0]):
                x, l = self.transformer.inverse(z, self._params(x, context))
            return x, l.sum(-1)
        if needs_graph(z, *self.parameters(), *(() if context is None else (context,))):
            return self._inverse_sequential(z, context)
        return self._inverse_by_degree(z, context)

    def _inverse_by_degree(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``D`` steps without a graph, each computing every hidden unit exactly once.

        A hidden unit of degree ``m`` depends only on the features at positions ``<= m`` of the
        order, so its value is final as soon as those are solved. With the units of every hidden
        layer sorted by degree, step ``p`` (solving the feature at position ``p``) computes only
        the units of degree ``p - 1``, from the prefix of lower-degree units of the layer below,
        and the feature's ``P`` outputs from the prefix of degree ``< p``. The hidden layers thus
        cost less than one full MADE pass over all ``D`` steps (a unit of degree ``m`` reads only
        the ``m``-prefix below it). Activations are kept transposed, ``(units, batch)``, so every
        group and every prefix is a contiguous block of rows.
        """
        made = self.made
        D, P, C = self.event_shape[0], made.params_per_feature, made.context_dim
        batch = z.shape[:-1]
        zf = z.reshape(-1, D)
        n = zf.shape[0]
        act = _after_linear(made.activation)
        ends = made.degree_ends  # ends[j][m]: units of degree <= m in hidden layer j
        weights, biases = zip(*((w, b.unsqueeze(1)) for w, b in made.layers_by_degree()), strict=True)
        zt = zf.t().contiguous()
        n_x = 2 * D if made.circular else D
        inputs = zf.new_zeros(n_x + C, n)  # unsolved features: masked out, any finite value will do
        if context is not None:
            inputs[n_x:] = context.reshape(n, C).t()
        hidden = [zf.new_empty(e[-1], n) for e in ends]  # e[-1]: all units of the layer
        cols: list[Tensor | None] = [None] * D
        total: Tensor | None = None
        for m, i in enumerate(self._steps):  # the feature at position m + 1 sees degrees <= m
            below = inputs
            for j, h in enumerate(hidden):
                lo, hi = (ends[j][m - 1] if m else 0), ends[j][m]
                if hi > lo:
                    block = h[lo:hi]
                    k = below.shape[0] if j == 0 else ends[j - 1][m]
                    torch.addmm(biases[j][lo:hi], weights[j][lo:hi, :k], below[:k], out=block)
                    done = act(block)
                    if done is not block:
                        block.copy_(done)
                below = h
            rows, k = slice(i * P, (i + 1) * P), ends[-1][m]
            if k:
                params = torch.addmm(biases[-1][rows], weights[-1][rows, :k], hidden[-1][:k]).t()
            else:
                params = biases[-1][rows].t().expand(n, P)
            if self._pshape != (P,):
                params = params.reshape(n, *self._pshape)
            if self._add_identity:
                params = params + self.identity
            xi, li = self.transformer.inverse(zt[i], params)
            cols[i] = xi
            total = li if total is None else total + li
            if made.circular:
                inputs[i], inputs[D + i] = xi.cos(), xi.sin()
            else:
                inputs[i] = xi
        x = torch.stack(cols, dim=-1).view(*batch, D)
        return x, total.view(batch)  # type: ignore[union-attr]

    def _inverse_sequential(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``D`` steps keeping a graph (``rsample``); step ``k`` solves for the ``k``-th feature in
        the order only.

        Each step runs the hidden layers once but only the ``P`` output rows of the feature being
        solved, and the first layer's pre-activation is updated by a rank-one term instead of a full
        matrix product, so a step costs less than one full MADE pass.
        """
        made = self.made
        D, P = self.event_shape[0], made.params_per_feature
        layers = made.plain_layers()
        weights = [(m.masked_weight(), m.bias) for m in layers]
        w0, b0 = weights[0]
        w_last, b_last = weights[-1]
        act = get_activation(made.activation)  # out of place: ``pre`` is kept and updated
        batch = z.shape[:-1]
        n_x = 2 * D if made.circular else D  # input columns fed by x (cos and sin blocks)
        if made.circular:  # x starts at 0: cos(0) = 1 feeds every cos column
            b0 = b0 + w0[:, :D].sum(dim=1)
        pre = b0 if context is None else torch.addmm(b0, context.reshape(-1, made.context_dim),
                                                      w0[:, n_x:].t()).view(*batch, -1)
        pre = pre.expand(*batch, w0.shape[0])
        cols: list[Tensor | None] = [None] * D
        total: Tensor | None = None
        for k, i in enumerate(self._steps):
            if k == 0 and not made.degree_ends[-1][0]:  # no hidden unit reaches the first feature
                params = b_last[i * P : (i + 1) * P].expand(*batch, P)
            else:
                h = act(pre)
                for w, b in weights[1:-1]:
                    h = act(torch.nn.functional.linear(h, w, b))
                rows = slice(i * P, (i + 1) * P)
                params = torch.nn.functional.linear(h, w_last[rows], b_last[rows])
            if self._pshape != (P,):
                params = params.view(*batch, *self._pshape)
            if self._add_identity:
                params = params + self.identity
            xi, li = self.transformer.inverse(z[..., i], params)
            cols[i] = xi
            total = li if total is None else total + li
            if made.circular:
                pre = pre + (xi.cos() - 1).unsqueeze(-1) * w0[:, i] + xi.sin().unsqueeze(-1) * w0[:, D + i]
            else:
                pre = pre + xi.unsqueeze(-1) * w0[:, i]
        return torch.stack(cols, dim=-1), total  # type: ignore[arg-type,return-value]

    def extra_repr(self) -> str:
        return f"{self.transformer!r}, " + super().extra_repr()


class MaskedAffineAutoregressive(MaskedAutoregressive):
    """Affine MAF layer (:class:`MaskedAutoregressive` with an affine transformer).

    Example:
        >>> layer = MaskedAffineAutoregressive(4, hidden=(32, 32), order=[3, 2, 1, 0])
        >>> z, ladj = layer(torch.randn(10, 4))
        >>> ladj.shape
        torch.Size([10])
    """

    def __init__(
        self,
        dim: int,
        order: Tensor | Sequence[int] | None = None,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (256, 256),
        residual_blocks: bool = False,
        activation: str = "relu",
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__(Affine(scale_bound), dim, order, context_dim, hidden, residual_blocks, activation)
