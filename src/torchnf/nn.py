"""Conditioner networks: :class:`MLP` and the masked MLP of MADE (:class:`MaskedMLP`).

Conditioners predict transformer parameters as *offsets from the identity*: their last layer is
initialised at zero so that every flow starts as the identity map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.core import Recorded

__all__ = ["MLP", "MaskedMLP", "MaskedLinear", "get_activation"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


def get_activation(name: str) -> nn.Module:
    """Build an activation module from its name (``relu``, ``elu``, ``silu``, ``gelu``, ``tanh``, ...)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except (KeyError, AttributeError):
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


def _after_linear(name: str) -> nn.Module:
    """The activation that follows a linear layer inside a network: ReLU runs in place (the
    layer's fresh output is not needed by autograd, and ReLU's backward reads only its result),
    saving one allocation and one pass per layer; the others as :func:`get_activation`."""
    return nn.ReLU(inplace=True) if name.lower() == "relu" else get_activation(name)


def hidden_widths(hidden: Sequence[int] | int, owner: str = "network") -> tuple[int, ...]:
    """Hidden widths as a tuple of positive ints; a clear ``ValueError`` otherwise."""
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in widths):
        raise ValueError(f"{owner}: hidden widths must be integers >= 1, got {hidden!r}")
    return widths



class MLP(Recorded, nn.Sequential):
    """Fully connected network ``in_features -> hidden... -> out_features``.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: widths of the hidden layers.
        activation: name of the activation between layers.
        zero_last: initialise the last layer at zero (outputs start at zero).

    Example:
        >>> net = MLP(3, 4, hidden=(16, 16))
        >>> net(torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] | int = (256, 256),
        activation: str = "relu",
        zero_last: bool = True,
    ) -> None:
        sizes = [int(in_features), *hidden_widths(hidden, "MLP"), int(out_features)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_after_linear(activation))
        super().__init__(*layers)
        self.in_features, self.out_features = sizes[0], sizes[-1]
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed binary mask (a buffer)."""

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def masked_weight(self) -> Tensor:
        """The weight the layer computes with: ``weight * mask``."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class _Residual(nn.Module):
    def __init__(self, mask: Tensor, act: str) -> None:
        super().__init__()
        self.act1, self.act2 = get_activation(act), _after_linear(act)  # act1 reads the skip input
        self.l1, self.l2 = MaskedLinear(mask), MaskedLinear(mask)
        nn.init.zeros_(self.l2.weight)
        nn.init.zeros_(self.l2.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.l2(self.act2(self.l1(self.act1(h))))


class MaskedMLP(Recorded, nn.Module):
    r"""MADE: an MLP whose output for feature ``i`` depends only on features before ``i`` in ``order``.

    The output has shape ``(*batch, features, params_per_feature)``. Context inputs (degree 0) reach
    every output.

    Args:
        features: number of autoregressive features ``D``.
        params_per_feature: number of outputs per feature ``P``.
        context_dim: size of an optional context appended to the input.
        hidden: widths of the hidden layers (all equal when ``residual_blocks=True``).
        order: a permutation of ``range(D)``; ``order[i]`` is the position of feature ``i`` in the
            autoregressive ordering. Default: the identity order.
        circular: the inputs are angles: feed ``(cos x, sin x)`` so outputs are continuous on the
            circle (Rezende et al. 2020).
        residual_blocks: use pre-activation residual blocks between the hidden layers
            (one block per hidden layer after the first).
        activation: activation name.
        zero_last: initialise the output layer at zero.

    Example:
        >>> made = MaskedMLP(4, 2, hidden=(32, 32))
        >>> made(torch.randn(7, 4)).shape
        torch.Size([7, 4, 2])

    References:
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        context_dim: int = 0,
        hidden: Sequence[int] | int = (256, 256),
        order: Tensor | Sequence[int] | None = None,
        residual_blocks: bool = False,
        activation: str = "relu",
        zero_last: bool = True,
        circular: bool = False,
    ) -> None:
        super().__init__()
        D, P, C = int(features), int(params_per_feature), int(context_dim)
        hidden = hidden_widths(hidden, "MaskedMLP")
        if order is None:
            order = torch.arange(D)
        order = torch.as_tensor(order, dtype=torch.long)
        if order.shape != (D,) or not torch.equal(order.sort().values, torch.arange(D)):
            raise ValueError(f"MaskedMLP: order must be a permutation of range({D}), got {order.tolist()}")
        if residual_blocks and len(set(hidden)) != 1:
            raise ValueError("MaskedMLP: residual blocks need equal hidden widths")
        self.features, self.params_per_feature, self.context_dim = D, P, C
        self.register_buffer("order", order, persistent=False)

        x_deg = torch.cat([order + 1, order + 1]) if circular else order + 1  # (cos x, sin x) share it
        deg_in = torch.cat([x_deg, torch.zeros(C, dtype=torch.long)])  # context: degree 0
        deg_out = (order + 1).repeat_interleave(P)

        # Hidden degrees cycle over lo..D-1. With a context, degree-0 units (fed by the context
        # alone) let the first feature in the order depend on it; without one they would be constant.
        lo = 0 if C > 0 else min(1, D - 1)

        def hidden_degrees(h: int) -> Tensor:
            return torch.arange(h) % max(D - lo, 1) + lo

        layers: list[nn.Module] = []
        prev = deg_in
        ends = []  # per hidden layer: the number of units of degree <= m, m = 0..D-1
        for i, h in enumerate(hidden):
            deg = hidden_degrees(h)
            sorted_deg, perm = deg.sort(stable=True)
            self.register_buffer(f"_degree_order{i}", perm, persistent=False)
            ends.append(tuple(torch.searchsorted(sorted_deg, torch.arange(D), right=True).tolist()))
            mask = deg[:, None] >= prev[None, :]
            if residual_blocks and i > 0:
                layers.append(_Residual(mask, activation))
            else:
                if i > 0:
                    layers.append(_after_linear(activation))
                layers.append(MaskedLinear(mask))
            prev = deg
        if hidden:  # follows a masked linear layer or a residual block's fresh sum
            layers.append(_after_linear(activation))
        last = MaskedLinear(deg_out[:, None] > prev[None, :])
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.degree_ends: tuple[tuple[int, ...], ...] = tuple(ends)
        self.residual_blocks = bool(residual_blocks)
        self.activation = activation
        self.circular = bool(circular)

    def plain_layers(self) -> list[MaskedLinear]:
        """The masked linear layers in order (for the sequential sampler; plain MADE only)."""
        if self.residual_blocks:
            raise RuntimeError("MaskedMLP.plain_layers: not available with residual blocks")
        return [m for m in self.net if isinstance(m, MaskedLinear)]

    def layers_by_degree(self) -> list[tuple[Tensor, Tensor]]:
        """The masked weights and biases of :meth:`plain_layers` with every hidden layer's units
        sorted by degree (stably), so that the units of degree ``<= m`` of hidden layer ``j`` are
        its first ``degree_ends[j][m]``."""
        out, prev = [], None
        for j, layer in enumerate(self.plain_layers()):
            w, b = layer.masked_weight(), layer.bias
            perm = getattr(self, f"_degree_order{j}", None)
            if perm is not None:
                w, b = w[perm], b[perm]
            if prev is not None:
                w = w[:, prev]
            out.append((w, b))
            prev = perm
        return out

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.circular:
            x = torch.cat([x.cos(), x.sin()], dim=-1)
        h = x if context is None else torch.cat([x, context], dim=-1)
        out = self.net(h)
        return out.view(*out.shape[:-1], self.features, self.params_per_feature)
