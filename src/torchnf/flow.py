"""The :class:`Flow`: a bijection plus a base distribution, itself a distribution."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from torchnf import __version__
from torchnf.core import (
    Bijection,
    Recorded,
    all_finite,
    check_context,
    check_input,
    check_like_parameters,
    floating_reference,
    from_config,
    to_config,
    validation_enabled,
)
from torchnf.distributions import Distribution, StandardNormal, _shape

if TYPE_CHECKING:
    from torchnf.training import History

__all__ = ["Flow", "load"]

_FORMAT = "torchnf-flow-1"


class Flow(Recorded, nn.Module):
    r"""A normalizing flow: ``log p(x) = log p_Z(f(x)) + log|det J_f(x)|``.

    Args:
        bijection: the map ``f`` from data to the base space (e.g. ``nf.RealNVP(dim)``).
        base: base distribution over ``f``'s output events; default standard normal. It is
            moved to the dtype and device of the bijection's parameters (or floating buffers).
        context_encoder: optional module applied once per call to the raw context; its output
            (of size ``bijection.context_dim``) is what the bijection and the base receive. It must
            expose ``in_features`` (use :class:`~torchnf.MLP`) for save/load and shape checks.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(16, 16)))
        >>> x = torch.randn(100, 2)
        >>> flow.log_prob(x).shape
        torch.Size([100])
        >>> flow.sample(5).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        bijection: Bijection,
        base: Distribution | None = None,
        context_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(bijection, Bijection):
            raise TypeError(f"Flow: expected a Bijection, got {type(bijection).__name__}")
        if base is None:
            base = StandardNormal(bijection.out_event_shape)
        if not isinstance(base, Distribution):
            raise TypeError(f"Flow: base must be a torchnf Distribution, got {type(base).__name__}")
        ref = floating_reference(bijection)
        if ref is not None:  # the base follows the bijection (e.g. a bijection already in float64)
            base = base.to(ref.device, ref.dtype)
        if base.event_shape != bijection.out_event_shape:
            raise ValueError(
                f"Flow: base event shape {tuple(base.event_shape)} does not match the bijection's "
                f"output event shape {tuple(bijection.out_event_shape)}"
            )
        inner = max(bijection.context_dim, base.context_dim)
        if bijection.context_dim and base.context_dim and bijection.context_dim != base.context_dim:
            raise ValueError(
                f"Flow: bijection context_dim={bijection.context_dim} != base context_dim={base.context_dim}"
            )
        self.bijection = bijection
        self.base = base
        self.context_encoder = context_encoder
        if context_encoder is not None:
            if not inner:
                raise ValueError(
                    "Flow: a context_encoder was given but neither bijection nor base is conditional"
                )
            self.context_dim = int(context_encoder.in_features)
        else:
            self.context_dim = inner
        self.event_shape = bijection.event_shape
        self._inner_context_dim = inner

    # -- helpers ---------------------------------------------------------------------------------
    def _ref(self) -> Tensor | None:
        return floating_reference(self)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.pop("_reference", None)  # the cached dtype/device of check_like_parameters
        return super()._apply(fn, *args, **kwargs)

    def _check_tensor(self, t: Tensor, what: str) -> None:
        check_like_parameters(self, t, what, "the flow's parameters", "cast the input or call flow.to(...)")
        if validation_enabled() and not all_finite(t):
            bad = (~torch.isfinite(t)).reshape(-1, t.shape[-1]).any(-1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"Flow: {what} contains NaN or inf (first bad rows: {bad})")

    def _context(self, context: Tensor | None, batch: torch.Size) -> tuple[Tensor | None, torch.Size]:
        context, shape = check_context(self, context, self.context_dim, batch)
        if context is not None:
            self._check_tensor(context, "context")
            if self.context_encoder is not None:
                context = self.context_encoder(context)
        return context, shape

    def _split_context(self, context: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        return (
            context if self.bijection.context_dim else None,
            context if self.base.context_dim else None,
        )

    def _data(self, x: Tensor, context: Tensor | None, event: torch.Size) -> tuple[Tensor, Tensor | None]:
        batch = check_input(self, x, event)
        self._check_tensor(x, "input")
        context, shape = self._context(context, batch)
        if shape != batch:
            x = x.expand(*shape, *event)
        return x, context

    # -- density ---------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` (``(*batch, *event_shape)``) -> ``(*batch)``."""
        x, context = self._data(x, context, self.event_shape)
        cb, cd = self._split_context(context)
        z, ladj = self.bijection._forward(x, cb)
        return self.base._log_prob(z, cd) + ladj

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob` (so that ``DistributedDataParallel(flow)(x)`` works)."""
        return self.log_prob(x, context)

    def transform(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Latent ``z = f(x)``."""
        x, context = self._data(x, context, self.event_shape)
        return self.bijection._forward(x, self._split_context(context)[0])[0]

    def inverse_transform(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Data ``x = f^{-1}(z)``."""
        z, context = self._data(z, context, self.bijection.out_event_shape)
        return self.bijection._inverse(z, self._split_context(context)[0])[0]

    # -- sampling --------------------------------------------------------------------------------
    def _base_sample(
        self, shape: int | Sequence[int], context: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Base samples ``(*shape, *context_batch, *event)`` and the context expanded to match."""
        shape = _shape(shape, "Flow", "sample shape")
        context, cbatch = self._context(context, torch.Size())
        if context is not None:
            context = context.expand(*shape, *context.shape)
        z = self.base._sample(shape + cbatch, self._split_context(context)[1])
        return z, context

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        """Reparameterised samples of shape ``(*shape, *context_batch, *event_shape)``."""
        z, context = self._base_sample(shape, context)
        return self.bijection._inverse(z, self._split_context(context)[0])[0]

    def sample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        """Samples (no gradient) of shape ``(*shape, *context_batch, *event_shape)``."""
        with torch.no_grad():
            return self.rsample(shape, context)

    def rsample_and_log_prob(
        self, shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised samples and their log-density, from one inverse pass."""
        z, context = self._base_sample(shape, context)
        cb, cd = self._split_context(context)
        x, ladj = self.bijection._inverse(z, cb)
        return x, self.base._log_prob(z, cd) - ladj

    def sample_and_log_prob(
        self, shape: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density (no gradient), from one inverse pass."""
        with torch.no_grad():
            return self.rsample_and_log_prob(shape, context)

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, x: Tensor, context: Tensor | None = None, val: Any = None, **kwargs: Any) -> History:
        """Maximum-likelihood fit (minibatch AdamW, early stopping, best weights restored).

        See :func:`torchnf.training.fit` for every option. Returns the per-epoch
        :class:`~torchnf.training.History`. A bijection with its own fitting procedure (a
        ``fit_data`` method, e.g. :class:`~torchnf.SINF`'s greedy, gradient-free algorithm) is
        fitted by that instead.

        Example:
            >>> flow = nf.Flow(nf.MAF(2, layers=2, hidden=(16, 16)))
            >>> history = flow.fit(torch.randn(500, 2), epochs=3, progress=False)
            >>> len(history.train)
            3
        """
        fit_data = getattr(self.bijection, "fit_data", None)
        if fit_data is not None:  # a bijection with its own (e.g. greedy, gradient-free) fit: SINF
            history = fit_data(x, val, context=context, **kwargs)
            self.eval()  # as after a gradient fit
            return history
        from torchnf.training import fit

        return fit(self, x, context=context, val=val, **kwargs)

    def fit_variational(self, log_target: Callable[[Tensor], Tensor], **kwargs: Any) -> Any:
        """Reverse-KL fit to an unnormalised log-density; see :func:`torchnf.inference.fit_variational`."""
        from torchnf.inference.variational import fit_variational

        return fit_variational(self, log_target, **kwargs)

    # -- probability questions (Monte Carlo with standard errors; see torchnf.inference.queries) --
    def probability(self, region: Callable[[Tensor], Tensor], n: int = 100_000, **kwargs: Any) -> Any:
        """``P(x in region)`` for a boolean function ``region(x)``, with its standard error.

        Example:
            >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8, 8)))
            >>> p = flow.probability(lambda x: x[..., 0] > 0, n=20_000, seed=0)
            >>> abs(p.estimate - 0.5) < 4 * p.stderr
            True
        """
        from torchnf.inference.queries import probability

        return probability(self, region, n=n, **kwargs)

    def expectation(self, fn: Callable[[Tensor], Tensor], n: int = 100_000, **kwargs: Any) -> Any:
        """``E[fn(x)]`` under the flow, with its standard error."""
        from torchnf.inference.queries import expectation

        return expectation(self, fn, n=n, **kwargs)

    def marginal_cdf(self, i: int, values: Tensor | float, n: int = 100_000, **kwargs: Any) -> Any:
        """``P(x_i <= v)`` for each ``v`` in ``values``, with standard errors."""
        from torchnf.inference.queries import marginal_cdf

        return marginal_cdf(self, i, values, n=n, **kwargs)

    # -- persistence -----------------------------------------------------------------------------
    def config(self) -> dict:
        """Plain-data description from which :func:`load` rebuilds the flow."""
        return to_config(self)

    def save(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write configuration, weights and train/eval mode to ``path`` atomically (temporary file,
        then rename)."""
        ref = self._ref()
        save_atomic({"format": _FORMAT, "version": __version__, "config": self.config(),
                     "state_dict": self.state_dict(), "train_mode": self.training,
                     "dtype": None if ref is None else str(ref.dtype).removeprefix("torch."),
                     "extra": extra}, path)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Flow:
    """Rebuild a flow saved with :meth:`Flow.save` (no user code needed; ``weights_only=True``).

    The flow comes back in the dtype of its saved weights and in the mode it was saved in (a
    training checkpoint, or a file without that record, loads in ``eval()`` mode), so batch-norm
    layers and stochastic log-dets give the saved flow's ``log_prob``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved flow at {os.fspath(path)!r}")
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a torchnf flow file")
    flow = from_config(data["config"])
    state = data["state_dict"]
    dtype = data.get("dtype")  # recorded since the weights alone may not show it (no parameters)
    ref = next((t for t in state.values() if t.is_floating_point()), None)
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        flow = flow.to(getattr(torch, dtype))
    elif ref is not None:
        flow = flow.to(ref.dtype)
    flow.load_state_dict(state)
    return flow.train(bool(data.get("train_mode", False)))
