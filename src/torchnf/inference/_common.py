"""Helpers shared by the inference modules: seeding, evaluation mode, target checks, batching."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

LogTarget = Callable[[Tensor], Tensor]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG seeded by ``seed`` and restore the caller's RNG afterwards;
    do nothing when ``seed`` is ``None``."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Put ``module`` (and its children) in train or eval mode for the block, then restore each
    submodule's own flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def reference(flow: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype and device of a module's first parameter or buffer (float32 on CPU if it has none)."""
    for t in list(flow.parameters()) + list(flow.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _fmt_row(x: Tensor, width: int = 8) -> str:
    vals = [f"{v:.4g}" for v in x.detach().flatten()[:width].tolist()]
    return "[" + ", ".join(vals) + (", ..." if x.numel() > width else "") + "]"


def check_log_target(owner: str, lp: object, x: Tensor, allow_neg_inf: bool = False) -> Tensor:
    """Check that ``log_target(x)`` returned a tensor of ``x``'s batch shape with finite values.

    Raises a ``ValueError`` that names ``owner``, the offending value, its index and the sample
    (never averaging it away). With ``allow_neg_inf``, ``-inf`` (zero density) is accepted.
    """
    batch = x.shape[:-1]
    x = x.detach()
    if not isinstance(lp, Tensor):
        raise TypeError(f"{owner}: log_target must return a tensor, got {type(lp).__name__}")
    if lp.shape != batch:
        raise ValueError(
            f"{owner}: log_target must map samples of shape {tuple(x.shape)} to log-densities of shape "
            f"{tuple(batch)}, got {tuple(lp.shape)}"
        )
    lp_ = lp.detach()
    bad = torch.isnan(lp_) | (lp_ == float("inf"))
    if not allow_neg_inf:
        bad = bad | (lp_ == float("-inf"))
    if bool(bad.any()):
        flat = bad.flatten().nonzero()
        i = int(flat[0])
        idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), batch)) if batch else ()
        value = float(lp_.flatten()[i]) if batch else float(lp_)
        row = x.reshape(-1, x.shape[-1])[i] if batch else x
        raise ValueError(
            f"{owner}: log_target returned {value} at sample {idx} (one of {flat.numel()} non-finite "
            f"values): x = {_fmt_row(row)}"
        )
    return lp


def chunks(n: int, batch: int) -> Iterator[int]:
    """Sizes of consecutive batches that add up to ``n``."""
    done = 0
    while done < n:
        m = min(batch, n - done)
        yield m
        done += m


def check_count(owner: str, name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def flow_inverse(flow: nn.Module, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """``x = f^{-1}(z)`` and ``log|det dx/dz|`` of a :class:`~torchnf.Flow`, with its context handling."""
    z, context = flow._data(z, context, flow.bijection.out_event_shape)
    return flow.bijection._inverse(z, flow._split_context(context)[0])
