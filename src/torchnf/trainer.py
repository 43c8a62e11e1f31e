"""The epoch loop behind :func:`torchnf.fit`: steps, validation, snapshots, checkpoints, stopping.

:func:`torchnf.fit` checks its inputs and builds a :class:`Trainer`; the trainer owns the
optimiser, the learning-rate schedule, the last good snapshot (for rolling back non-finite
epochs), the best weights and the checkpoint file. Everything the ranks of a data-parallel run must
agree on goes through :mod:`torchnf.distributed`.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchnf import __version__, distributed
from torchnf.bijections.continuous import ContinuousFlow
from torchnf.flow import _FORMAT, save_atomic
from torchnf.training import History

__all__: list[str] = []

MAX_FAILURES = 3  # consecutive non-finite epochs before giving up
CHECK_EVERY = 64  # steps between mid-epoch looks at the non-finite flag (one device sync each)
TIME_SYNC_EVERY = 8  # steps between all-reduced time-limit checks in a data-parallel run


class Data(NamedTuple):
    """Rows of a data set: ``x (N, *event)``, ``context (N, C)`` or None, ``weights (N,)`` or None."""

    x: Tensor
    context: Tensor | None
    weights: Tensor | None

    def rows(self, index: Tensor | slice) -> Data:
        pick = (lambda t: t[index]) if isinstance(index, slice) else (lambda t: t.index_select(0, index))
        return Data(*(None if t is None else pick(t) for t in self))


def nll(model: nn.Module, x: Tensor, context: Tensor | None, weights: Tensor | None) -> Tensor:
    """Mean NLL of a batch; ``weights`` are normalised to mean one over the training set.

    Zero-weight rows are selected away with ``torch.where``, so they cannot inject NaN.
    """
    lp = model(x, context)
    if weights is None:
        return -lp.mean()
    return -torch.where(weights > 0, weights * lp, torch.zeros_like(lp)).mean()


def load_checkpoint(path: str, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by :class:`Trainer` (``weights_only=True``)."""
    data = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT or "training" not in data:
        raise ValueError(f"fit: {path!r} is not a torchnf training checkpoint (resume=True needs one)")
    return data


def _clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class Trainer:
    """One maximum-likelihood run (see :func:`torchnf.fit` for the meaning of ``options``)."""

    def __init__(
        self, flow: nn.Module, train: Data, val: Data | None, options: dict[str, Any], seed: int,
        device: torch.device, resumed: dict[str, Any] | None = None,
    ) -> None:
        self.flow, self.val, self.o, self.seed, self.device = flow, val, options, seed, device
        if train.weights is not None:
            train = train._replace(weights=train.weights / train.weights.mean())
        self.train = train
        self.dtype = train.x.dtype
        self.params = [p for p in flow.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if options["optimizer"] == "adamw" else torch.optim.Adam
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = cls(self.params, lr=options["lr"], weight_decay=options["weight_decay"], **fused)
        self.sampler = distributed.sampler(len(train.x), seed)
        self.batches = math.ceil(len(self.sampler) / options["batch_size"])
        planned = options["epochs"] * self.batches
        if options["max_steps"] is not None:
            planned = min(planned, options["max_steps"])
        self.total_steps = max(planned, 1)
        self.clip = options["clip_grad"] or math.inf
        self.config = flow.config()
        self.history = History()
        self.epoch = self.step = self.bad_epochs = self.failures = 0
        self.lr_scale = 1.0
        self.best_state: dict[str, Tensor] | None = None
        if resumed is not None:
            self._restore(resumed)
        elif distributed.active():
            # Data-dependent initialisations (ActNorm) must happen once, identically, before the
            # wrapper broadcasts rank 0's state; inside DDP each rank would see its own batch.
            with torch.no_grad():
                flow.train()
                first = train.rows(slice(0, options["batch_size"]))
                flow.log_prob(first.x, first.context)
        self.model = distributed.wrap(flow, device)
        # Layers that expose a training penalty (FFJORD's RNODE kinetic / Jacobian-norm terms).
        self.penalized = [m for m in flow.modules() if isinstance(m, ContinuousFlow)]
        self.compiled = self._compile(options["compile"])
        self._snapshot()

    # -- set-up --------------------------------------------------------------------------------
    def loss(self, x: Tensor, context: Tensor | None, weights: Tensor | None) -> Tensor:
        """Batch loss through the (possibly data-parallel) model, plus any layer's penalty."""
        loss = nll(self.model, x, context, weights)
        for m in self.penalized:
            penalty = m.regularization
            if penalty is not None:
                loss = loss + penalty.mean()
        return loss

    def _compile(self, mode: bool | str) -> Callable[..., Tensor] | None:
        if mode == "auto":
            mode = self.device.type == "cuda" and self.total_steps >= 1000
        return torch.compile(self.loss) if mode else None

    def _restore(self, data: dict[str, Any]) -> None:
        if data["config"] != self.config:
            raise ValueError(
                f"fit: the checkpoint {self.o['checkpoint']!r} was written for a different flow (its "
                "configuration differs); build the same flow, or pass resume=False to start afresh"
            )
        tr = data["training"]
        self.flow.load_state_dict(tr["state"])
        # keep this machine's kernel choice (a run saved with fused CUDA kernels may resume on CPU)
        impl = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.opt.param_groups]
        self.opt.load_state_dict(tr["optimizer"])
        for group, keep in zip(self.opt.param_groups, impl):
            group.update(keep)
        self.best_state = data["state_dict"]
        self.history = History(**tr["history"])
        self.epoch, self.step, self.bad_epochs = tr["epoch"], tr["step"], tr["bad_epochs"]
        self.lr_scale = float(tr["scheduler"]["lr_scale"])

    # -- pieces of an epoch --------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: ``lr * lr_scale`` times the cosine factor."""
        base = self.o["lr"] * self.lr_scale
        if self.o["schedule"] != "cosine":
            return base
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))

    def _forward_backward(self, batch: Data) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        if self.compiled is not None:
            try:
                loss = self.compiled(*batch)
                loss.backward()
                return loss
            except Exception as e:  # noqa: BLE001 - any compiler failure falls back to eager
                warnings.warn(
                    f"fit: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training "
                    "continues without compilation", RuntimeWarning, stacklevel=4,
                )
                self.compiled = None
                self.opt.zero_grad(set_to_none=True)
        loss = self.loss(*batch)
        loss.backward()
        return loss

    def _time_up(self, k: int | None = None) -> bool:
        """Time-limit check; mid-epoch (``k`` = step in epoch) all-reduced every few steps."""
        limit = self.o["time_limit"]
        if limit is None:
            return False
        if distributed.active():
            if k is not None and k % TIME_SYNC_EVERY:
                return False
            return distributed.any_rank(time.monotonic() - self.t0 > limit, self.device)
        return time.monotonic() - self.t0 > limit

    def _max_steps(self) -> bool:
        return self.o["max_steps"] is not None and self.step >= self.o["max_steps"]

    def train_epoch(self) -> tuple[Tensor, Tensor, str | None]:
        """One pass over this rank's shard: (mean loss, non-finite flag, stop reason or None)."""
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler), device=self.device)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        stop, k = None, 0
        for k, idx in enumerate(torch.tensor_split(order, self.batches), 1):
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step)
            loss = self._forward_backward(self.train.rows(idx)).detach()
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self.step += 1
            total += loss
            bad |= ~(torch.isfinite(loss) & torch.isfinite(norm))
            if k % CHECK_EVERY == 0 and distributed.any_rank(bad, self.device):
                break
            stop = "max_steps" if self._max_steps() else "time_limit" if self._time_up(k) else None
            if stop:
                break
        return total / max(k, 1), bad, stop

    @torch.no_grad()
    def evaluate(self, data: Data) -> float:
        """Weighted mean NLL over ``data`` in ``eval()`` mode, all-reduced over the ranks."""
        self.flow.eval()
        part = data.rows(distributed.shard(len(data.x)))
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        chunk = 4 * self.o["batch_size"]
        for s in range(0, len(part.x), chunk):
            x, c, w = part.rows(slice(s, s + chunk))
            lp = self.flow.log_prob(x, c).double()
            if w is None:
                sums += torch.stack([-lp.sum(), lp.new_tensor(float(len(lp)))])
            else:
                w = w.double()
                sums += torch.stack([-torch.where(w > 0, w * lp, torch.zeros_like(lp)).sum(), w.sum()])
        sums = distributed.sum_across(sums)
        return float(sums[0] / sums[1])

    # -- snapshots and checkpoints ---------------------------------------------------------------
    def _snapshot(self) -> None:
        self.good = {
            "state": _clone(self.flow.state_dict()),
            "optimizer": copy.deepcopy(self.opt.state_dict()),
            "step": self.step,
        }

    def _rollback(self) -> None:
        self.flow.load_state_dict(self.good["state"])
        self.opt.load_state_dict(copy.deepcopy(self.good["optimizer"]))
        self.step = self.good["step"]

    def _save(self) -> None:
        path = self.o["checkpoint"]
        if path is None or distributed.rank() != 0:
            return
        training = {
            "epoch": self.epoch, "step": self.good["step"], "seed": self.seed,
            "state": self.good["state"], "optimizer": self.good["optimizer"],
            "scheduler": {"schedule": self.o["schedule"], "step": self.good["step"],
                          "total_steps": self.total_steps, "lr_scale": self.lr_scale},
            "history": self.history.to_dict(), "bad_epochs": self.bad_epochs,
        }
        best = self.best_state if self.best_state is not None else self.good["state"]
        save_atomic({"format": _FORMAT, "version": __version__, "config": self.config,
                     "state_dict": best, "extra": {}, "training": training}, os.fspath(path))

    # -- the loop ------------------------------------------------------------------------------
    def _fail(self, what: str) -> None:
        self.failures += 1
        self._rollback()
        if self.failures >= MAX_FAILURES:
            if self.best_state is not None:
                self.flow.load_state_dict(self.best_state)
            raise RuntimeError(
                f"fit: the {what} was non-finite in {self.failures} consecutive attempts at epoch "
                f"{self.epoch + 1}, even after rolling back and halving the learning rate to "
                f"{self.lr_at(self.step):.3g}. The flow holds its best weights so far. Standardise the "
                "data, lower lr or clip_grad, or use tighter scale bounds."
            )
        self.lr_scale *= 0.5
        warnings.warn(
            f"fit: non-finite {what} in epoch {self.epoch + 1}; rolled parameters and optimiser state "
            f"back to the last good epoch and halved the learning rate to {self.o['lr'] * self.lr_scale:.3g} "
            f"(attempt {self.failures} of {MAX_FAILURES})", RuntimeWarning, stacklevel=4,
        )

    def _epoch(self, bar: Any) -> str | None:
        """Train, validate and book-keep one epoch; return a stop reason or None."""
        loss, bad, stop = self.train_epoch()
        stats = distributed.sum_across(torch.stack([loss.double(), bad.double()]))
        train = float(stats[0]) / distributed.world_size()
        val = self.evaluate(self.val) if self.val is not None else None
        if bool(stats[1] > 0) or not math.isfinite(train) or (val is not None and not math.isfinite(val)):
            self._fail("validation NLL" if bool(stats[1] == 0) and math.isfinite(train) else
                       "training loss or gradient norm")
            return stop if stop == "time_limit" else None  # the rollback also undid the steps
        self.failures = 0
        h = self.history
        h.train.append(train)
        if val is not None:
            h.val.append(val)
        h.lr.append(self.lr_at(max(self.step - 1, 0)))
        metric = val if val is not None else train
        improved = metric < h.best_val
        if improved:
            h.best_val, h.best_epoch, self.bad_epochs = metric, self.epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch += 1
        h.epochs, h.steps = len(h.train), self.step
        self._snapshot()
        if improved:
            self.best_state = self.good["state"]
        self._save()
        bar.set_postfix({"train": f"{train:.4f}", **({"val": f"{val:.4f}"} if val is not None else {})},
                        refresh=False)
        bar.update(1)
        callback = self.o["callback"]
        asked = bool(callback(self.epoch - 1, h)) if callback is not None else False
        asked = distributed.any_rank(asked, self.device)  # every rank joins, callback or not
        timed = stop is None and self._time_up()
        patience = self.o["patience"]
        for reason, hit in (("early_stopping", patience is not None and self.bad_epochs >= patience),
                            ("callback", asked), ("epochs", self.epoch >= self.o["epochs"]),
                            ("max_steps", self._max_steps()), ("time_limit", timed)):
            if stop is None and hit:
                stop = reason
        return stop

    def run(self) -> History:
        """Train until a stop condition; restore the best weights; return the history."""
        self.t0 = time.monotonic()
        seconds = self.history.seconds
        patience = self.o["patience"]
        stop = ("epochs" if self.epoch >= self.o["epochs"] else
                "early_stopping" if patience is not None and self.bad_epochs >= patience else
                "max_steps" if self._max_steps() else None)
        bar = tqdm(total=self.o["epochs"], initial=min(self.epoch, self.o["epochs"]), unit="epoch",
                   desc="fit", dynamic_ncols=True,
                   disable=not self.o["progress"] or distributed.rank() != 0)
        try:
            while stop is None:
                stop = self._epoch(bar)
        except KeyboardInterrupt:
            if distributed.active():
                raise
            stop = "interrupted"
        finally:
            bar.close()
        self.flow.load_state_dict(self.best_state if self.best_state is not None else self.good["state"])
        self.flow.eval()
        self.history.stopped = stop
        self.history.seconds = seconds + time.monotonic() - self.t0
        self._save()
        return self.history
