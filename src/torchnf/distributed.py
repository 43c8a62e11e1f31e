"""Data-parallel plumbing for :func:`torchnf.fit` on top of ``torch.distributed``.

Nothing here is a training engine of its own: gradients are synchronised by
:class:`~torch.nn.parallel.DistributedDataParallel`, batches are sharded by
:class:`~torch.utils.data.distributed.DistributedSampler`, and the few scalars that every rank must
agree on (validation NLL, stop decisions, non-finite flags, the random seed) travel through one
``all_reduce`` or ``broadcast`` each. Without an initialised process group every helper degrades to
the single-process answer, so :func:`~torchnf.fit` has one code path.

Example:
    Launch ``torchrun --nproc_per_node=2 examples/ddp_train.py``; inside each process::

        torch.distributed.init_process_group("gloo")
        flow.fit(x)  # same call as on one process; rank 0 writes checkpoints and shows progress
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

__all__: list[str] = []


def active() -> bool:
    """Whether a process group is initialised (then :func:`~torchnf.fit` trains data-parallel)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def sum_across(t: Tensor) -> Tensor:
    """Sum of ``t`` over all ranks (a copy; ``t`` itself is left alone)."""
    t = t.clone()
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool | Tensor, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one rank."""
    t = torch.as_tensor(flag, device=device).reshape(()).to(torch.int32)
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return int(value)
    t = torch.tensor(int(value), dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t)


def sampler(n: int, seed: int) -> DistributedSampler:
    """Shuffling sampler over ``range(n)`` that gives this rank its share; call ``set_epoch``.

    Every rank gets ``ceil(n / world_size)`` indices (a few repeated to even them out), so every
    rank runs the same number of steps, which ``DistributedDataParallel`` requires.
    """
    return DistributedSampler(
        range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=False
    )


def shard(n: int) -> slice:
    """The rows of an evaluation set of ``n`` rows that this rank evaluates (disjoint, covering)."""
    return slice(rank(), n, world_size())


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` under a process group, ``module`` itself otherwise.

    Wrapping broadcasts rank 0's parameters and buffers, so every rank starts from the same state.
    """
    if not active():
        return module
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
