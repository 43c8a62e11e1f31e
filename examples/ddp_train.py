"""Data-parallel training of a flow with ``torch.distributed`` (CPU/gloo or GPU/NCCL).

Run on two CPU processes::

    torchrun --nproc_per_node=2 examples/ddp_train.py --epochs 20 --out ddp_model.pt

Every process builds the same data and the same flow and calls ``flow.fit`` exactly as on one
process; ``fit`` sees the initialised process group and then wraps the flow in
``DistributedDataParallel``, gives each rank its ``DistributedSampler`` shard, all-reduces the
validation NLL and every stop decision, and lets only rank 0 show progress and write checkpoints.
At the end the script checks that the ranks hold identical parameters and rank 0 saves the flow.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist

import torchnf as nf


def ring_data(n: int, seed: int) -> torch.Tensor:
    """A noisy ring of radius 2 in 2-D (the same rows on every rank: ``fit`` does the sharding)."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = 2.0 + 0.2 * torch.randn(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rows", type=int, default=4000, help="number of training rows")
    parser.add_argument("--batch-size", type=int, default=128, help="per-rank batch size")
    parser.add_argument("--checkpoint", default=None, help="checkpoint path (written by rank 0)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--out", default="ddp_model.pt", help="where rank 0 saves the trained flow")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(rank)  # deliberately different: DDP broadcasts rank 0's initial weights
    flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(64, 64)))
    x = ring_data(args.rows, seed=0)
    history = flow.fit(x, epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, seed=0,
                       checkpoint=args.checkpoint, resume=args.resume, device=device)

    vector = torch.nn.utils.parameters_to_vector(flow.parameters()).detach()
    gathered = [torch.empty_like(vector) for _ in range(world)]
    dist.all_gather(gathered, vector)
    if rank == 0:
        same = all(torch.equal(gathered[0], v) for v in gathered[1:])
        print(f"parameters identical across {world} ranks: {same}")
        print(f"validation NLL: first epoch {history.val[0]:.4f}, best {history.best_val:.4f} "
              f"(epoch {history.best_epoch + 1} of {history.epochs}, stopped: {history.stopped})")
        flow.cpu().save(args.out)
        print(f"saved {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
