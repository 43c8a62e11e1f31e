"""Maximum-likelihood training of a :class:`~torchnf.Flow`: :func:`fit` and its :class:`History`.

:func:`fit` minimises the (optionally weighted) negative log-likelihood

.. math::  \\mathcal{L}(\\theta) = -\\frac{\\sum_i w_i \\log p_\\theta(x_i \\mid c_i)}{\\sum_i w_i}

by minibatch AdamW, with a cosine learning-rate schedule, gradient-norm clipping, early stopping on
the validation NLL with the best weights restored, recovery from non-finite steps, atomic
checkpoints that a run can resume from, and data-parallel training when ``torch.distributed`` is
initialised (see :mod:`torchnf.distributed`). Input checks and the per-epoch loop live in
:mod:`torchnf.trainer`; this module holds the public entry point and its input checks.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchnf.core import _fmt

__all__ = ["fit", "History"]


@dataclass
class History:
    """What happened during :func:`fit`; also readable as ``history["train"]``.

    Attributes:
        train: mean training NLL (nats per example) of each epoch, averaged over its minibatches.
        val: validation NLL after each epoch (empty when there is no validation data).
        best_epoch: index (into ``train``/``val``) of the epoch whose weights were restored.
        best_val: the monitored value at ``best_epoch``: validation NLL, or the training NLL when
            there is no validation data.
        stopped: why training ended: ``"epochs"`` (budget used), ``"early_stopping"``,
            ``"time_limit"``, ``"max_steps"``, ``"callback"`` or ``"interrupted"`` (Ctrl-C).
        epochs: number of completed epochs (``len(train)``).
        seconds: wall-clock training time, summed over resumed runs.
        lr: learning rate at the end of each epoch.
        steps: optimiser steps taken.

    Example:
        >>> h = History(train=[1.5, 1.2], val=[1.4, 1.3], best_epoch=1, best_val=1.3)
        >>> h["val"][h["best_epoch"]]
        1.3
    """

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = math.inf
    stopped: str = ""
    epochs: int = 0
    seconds: float = 0.0
    lr: list[float] = field(default_factory=list)
    steps: int = 0

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(f"History has no entry {key!r}; entries: {self.keys()}")
        return getattr(self, key)

    def keys(self) -> list[str]:
        """Names of the entries."""
        return [f.name for f in fields(self)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (lists, numbers and strings)."""
        return asdict(self)


def fit(
    flow: Any,
    x: Tensor | np.ndarray,
    context: Tensor | np.ndarray | None = None,
    val: Tensor | np.ndarray | None = None,
    *,
    val_context: Tensor | np.ndarray | None = None,
    weights: Tensor | np.ndarray | None = None,
    val_weights: Tensor | np.ndarray | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    schedule: str | None = "cosine",
    clip_grad: float | None = 5.0,
    val_fraction: float = 0.1,
    patience: int | None = 10,
    max_steps: int | None = None,
    time_limit: float | None = None,
    progress: bool = True,
    seed: int | None = None,
    compile: bool | str = False,
    checkpoint: str | Any | None = None,
    resume: bool = False,
    callback: Callable[[int, History], bool | None] | None = None,
    device: str | torch.device | None = None,
) -> History:
    r"""Fit ``flow`` to data by maximum likelihood; ``flow.fit(x, ...)`` calls this.

    Training minimises the weighted mean NLL :math:`-\sum_i w_i \log p(x_i|c_i) / \sum_i w_i`
    over minibatches (weights are normalised to mean one over the training set, so a batch's loss
    is an unbiased estimate of it). After every epoch the validation NLL is computed in ``eval()``
    mode; the weights of the best epoch are kept and restored at the end, and training stops once
    ``patience`` epochs pass without improvement. On return the flow holds the best weights, sits
    on ``device`` and is in ``eval()`` mode.

    Non-finite steps: if an epoch produces a non-finite loss, gradient norm or validation NLL,
    parameters and optimiser state roll back to the snapshot taken after the last good epoch, the
    learning rate is halved, a warning names the epoch and the new rate, and the epoch is retried;
    three consecutive failures raise ``RuntimeError``. Nothing non-finite is ever averaged in.

    Distributed: when ``torch.distributed`` is initialised, the flow is wrapped in
    ``DistributedDataParallel``, every rank passes the same full ``x`` and trains on its
    ``DistributedSampler`` shard, the validation NLL and every stop decision are all-reduced so the
    ranks stop together, and only rank 0 writes checkpoints and shows progress.

    Args:
        flow: the :class:`~torchnf.Flow` to train (modified in place).
        x: data, tensor or array of shape ``(N, *event_shape)``; cast to the flow's dtype.
        context: ``(N, context_dim)`` for a conditional flow, else ``None``.
        val: validation data ``(M, *event_shape)``; ``None`` splits off ``val_fraction`` of ``x``
            (seeded shuffle). ``val=None`` with ``val_fraction=0`` trains without validation;
            early stopping and the best weights then follow the training NLL.
        val_context: ``(M, context_dim)`` context of ``val``.
        weights: non-negative per-example weights ``(N,)`` (a weight of 2 counts a row twice).
        val_weights: weights ``(M,)`` of ``val`` (a split-off validation set keeps its own).
        epochs: maximum number of epochs, counting those of a resumed run.
        batch_size: maximum minibatch size; each epoch uses ``ceil(n / batch_size)`` batches of
            near-equal size, so no row is dropped and no batch is tiny.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 penalty (Adam).
        optimizer: ``"adamw"`` or ``"adam"``.
        schedule: ``"cosine"`` (from ``lr`` to 0 over all planned steps) or ``None``/``"constant"``.
        clip_grad: maximum global gradient norm; ``None`` or 0 disables clipping.
        val_fraction: fraction of ``x`` held out when ``val`` is ``None``, in ``[0, 1)``.
        patience: epochs without improvement before stopping; ``None`` disables early stopping.
        max_steps: stop after this many optimiser steps (also shortens the cosine schedule).
        time_limit: stop after this many seconds (checked every step), keeping the best weights.
        progress: show a tqdm bar with the epoch, training and validation NLL.
        seed: seeds the validation split, the shuffling and, inside ``fit`` only, torch's global
            generator (restored afterwards). ``None`` draws one from torch's generator.
        compile: ``True`` runs the loss and its gradient through ``torch.compile`` (falling back
            to eager mode with a warning if compilation fails); ``"auto"`` compiles only on CUDA
            when the run plans at least 1000 steps, where the compile time (tens of seconds) is
            repaid; on CPU the small conditioner networks of flows rarely gain enough.
        checkpoint: path of a checkpoint written atomically after every epoch: the flow's config,
            its best weights so far (``nf.load(path)`` returns that flow), the current weights,
            optimiser and schedule state, epoch and history.
        resume: continue from ``checkpoint`` if the file exists (else start afresh), with the
            checkpoint's seed, so a resumed run repeats the uninterrupted one. The flow must have
            the same configuration as the one that wrote it; pass the same data and options.
        callback: ``callback(epoch, history)`` after every epoch (``epoch`` indexes
            ``history.train``); returning ``True`` stops training.
        device: move the flow and the data there first (default: where the flow is).

    Returns:
        The :class:`History` of the run.

    Raises:
        ValueError: bad data (wrong event shape, NaN/inf rows, length mismatches, negative
            weights, empty data) or bad options, with the offending rows or values named.
        RuntimeError: three consecutive non-finite epochs.

    Example:
        >>> import torch, torchnf as nf
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + 1.0
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(16, 16)))
        >>> history = flow.fit(x, epochs=5, batch_size=128, lr=1e-2, progress=False, seed=0)
        >>> history.epochs, history.stopped
        (5, 'epochs')
        >>> history.val[-1] < history.val[0]
        True

    References:
        Loshchilov, Hutter, "Decoupled Weight Decay Regularization" (AdamW), ICLR 2019.
        Loshchilov, Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (cosine), 2017.
    """
    from torchnf import distributed
    from torchnf.core import set_validation, validation_enabled
    from torchnf.trainer import Data, Trainer, load_checkpoint

    options = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
        schedule=schedule, clip_grad=clip_grad, val_fraction=val_fraction, patience=patience,
        max_steps=max_steps, time_limit=time_limit, progress=progress, compile=compile,
        checkpoint=checkpoint, resume=resume, callback=callback,
    )
    _check_options(flow, options)
    if device is not None:
        flow.to(device)
    ref = next(t for t in flow.parameters() if t.requires_grad)
    dtype, device = ref.dtype, ref.device
    x, context, weights = _data(flow, "x", x, "context", context, "weights", weights, dtype, device)
    if val is None:
        for name, v in (("val_context", val_context), ("val_weights", val_weights)):
            if v is not None:
                raise ValueError(f"fit: {name} was given without val")
        valset = None
    else:
        valset = _data(flow, "val", val, "val_context", val_context, "val_weights", val_weights,
                       dtype, device)

    resumed = None
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        resumed = load_checkpoint(os.fspath(checkpoint), device)
        seed = int(resumed["training"]["seed"])
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()))
    seed = distributed.broadcast_int(seed, device)

    train = Data(x, context, weights)
    if valset is None and val_fraction > 0:
        train, valset = _split(train, val_fraction, seed)
    else:
        valset = None if valset is None else Data(*valset)

    old_validation = validation_enabled()
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed + distributed.rank())
        try:
            set_validation(False)  # the data were checked once above; no per-step syncs
            trainer = Trainer(flow, train, valset, options, seed, device, resumed)
            return trainer.run()
        finally:
            set_validation(old_validation)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _check_options(flow: Any, o: dict[str, Any]) -> None:
    from torchnf.flow import Flow

    if not isinstance(flow, Flow):
        raise TypeError(f"fit: expected a torchnf.Flow, got {type(flow).__name__}")
    if not any(p.requires_grad for p in flow.parameters()):
        raise ValueError("fit: the flow has no trainable parameters")
    problems = []
    for name in ("epochs", "batch_size"):
        if not _is_int(o[name], 1):
            problems.append(f"{name} must be an integer >= 1, got {o[name]!r}")
    for name in ("max_steps", "patience"):
        if o[name] is not None and not _is_int(o[name], 1):
            problems.append(f"{name} must be None or an integer >= 1, got {o[name]!r}")
    checks = [
        ("lr", o["lr"], lambda v: isinstance(v, numbers.Real) and 0 < v < math.inf, "a positive number"),
        ("weight_decay", o["weight_decay"], lambda v: isinstance(v, numbers.Real) and 0 <= v < math.inf,
         "a number >= 0"),
        ("clip_grad", o["clip_grad"], lambda v: v is None or (isinstance(v, numbers.Real) and v >= 0),
         "None or a number >= 0"),
        ("val_fraction", o["val_fraction"], lambda v: isinstance(v, numbers.Real) and 0 <= v < 1,
         "a number in [0, 1)"),
        ("time_limit", o["time_limit"], lambda v: v is None or (isinstance(v, numbers.Real) and v > 0),
         "None or a positive number of seconds"),
        ("optimizer", o["optimizer"], lambda v: v in ("adamw", "adam"), "'adamw' or 'adam'"),
        ("schedule", o["schedule"], lambda v: v in ("cosine", "constant", None),
         "'cosine', 'constant' or None"),
        ("compile", o["compile"], lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        ("callback", o["callback"], lambda v: v is None or callable(v), "None or a callable"),
    ]
    problems += [f"{name} must be {want}, got {v!r}" for name, v, ok, want in checks if not ok(v)]
    if o["resume"] and o["checkpoint"] is None:
        problems.append("resume=True needs checkpoint='path.pt'")
    if problems:
        raise ValueError("fit: " + "; ".join(problems))


def _tensor(name: str, value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"fit: {name} must be a tensor or numeric array ({e})") from None
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"fit: {name} must be a tensor or numeric array, got dtype {arr.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(arr))
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"fit: {name} must be real-valued, got dtype {value.dtype}")
    return value.detach().to(device=device, dtype=dtype)


def _finite_rows(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t.reshape(len(t), -1)).all(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"fit: {name} has {len(rows)} row(s) containing NaN or inf (in the flow's dtype "
            f"{t.dtype}); first bad rows: {rows[:10].tolist()}"
        )


def _data(
    flow: Any, xname: str, x: Any, cname: str, context: Any, wname: str, weights: Any,
    dtype: torch.dtype, device: torch.device,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Convert and check one data set: shapes, finiteness, context and weights."""
    x = _tensor(xname, x, dtype, device)
    event = tuple(flow.event_shape)
    if x.dim() != 1 + len(event) or tuple(x.shape[1:]) != event:
        hint = f"; for one feature per row use {xname}[:, None]" if event == (1,) and x.dim() == 1 else ""
        raise ValueError(
            f"fit: the flow models events of shape {_fmt(event)}, so {xname} must have shape "
            f"(N, {', '.join(map(str, event))}); got {_fmt(x.shape)}{hint}"
        )
    n = len(x)
    if n == 0:
        raise ValueError(f"fit: {xname} is empty (0 rows)")
    _finite_rows(xname, x)
    d = flow.context_dim
    if context is None and d:
        raise ValueError(f"fit: the flow is conditional (context_dim={d}): pass {cname} of shape ({n}, {d})")
    if context is not None:
        if not d:
            raise ValueError(f"fit: the flow is unconditional (context_dim=0) but {cname} was given")
        context = _tensor(cname, context, dtype, device)
        if tuple(context.shape) != (n, d):
            raise ValueError(
                f"fit: {cname} must have one row of {d} value(s) per row of {xname}: expected shape "
                f"({n}, {d}), got {_fmt(context.shape)}"
            )
        _finite_rows(cname, context)
    if weights is not None:
        weights = _tensor(wname, weights, dtype, device)
        if tuple(weights.shape) != (n,):
            raise ValueError(
                f"fit: {wname} must have shape ({n},), one per row of {xname}; got {_fmt(weights.shape)}"
            )
        _finite_rows(wname, weights[:, None])
        negative = (weights < 0).nonzero().flatten()
        if len(negative):
            raise ValueError(f"fit: {wname} must be >= 0; negative at rows {negative[:10].tolist()}")
        if not bool(weights.sum() > 0):
            raise ValueError(f"fit: {wname} are all zero")
    return x, context, weights


def _split(data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Seeded shuffle of the rows into (train, validation); validation gets ``fraction`` of them."""
    n = len(data.x)
    n_val = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
    if n_val == 0:
        return data, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(data.x.device)
    train, val = data.rows(perm[n_val:]), data.rows(perm[:n_val])
    for part, name in ((train, "training"), (val, "validation")):
        if part.weights is not None and not bool(part.weights.sum() > 0):
            raise ValueError(
                f"fit: the {name} split has zero total weight; pass val= explicitly or val_fraction=0"
            )
    return train, val
