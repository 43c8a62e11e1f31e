"""Data-parallel fit on two CPU processes (gloo): ranks agree, stop together, loss goes down."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchnf as nf

ROOT = Path(__file__).resolve().parents[1]


def ring(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = 2.0 + 0.2 * torch.randn(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)


def make_flow() -> nf.Flow:
    return nf.Flow(nf.RealNVP(2, layers=2, hidden=(16, 16)))


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
        flow = make_flow()
        # only rank 1 asks to stop (after epoch index 3): every rank must stop with it
        callback = (lambda epoch, history: epoch == 3) if rank == 1 else None
        history = flow.fit(ring(400), epochs=20, batch_size=64, lr=1e-2, seed=0, progress=False,
                           callback=callback, checkpoint=os.path.join(out, "ckpt.pt"))
        torch.save({"state": flow.state_dict(), "history": history.to_dict()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_end_identical_and_the_loss_goes_down(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    h0, h1 = r0["history"], r1["history"]
    assert h0 == {**h1, "seconds": h0["seconds"]}  # same losses, epochs, stop reason on both ranks
    assert h0["stopped"] == "callback" and h0["epochs"] == 4
    # 400 rows - 40 held out = 360; 180 per rank; ceil(180 / 64) = 3 steps per epoch
    assert h0["steps"] == 12
    x = ring(400)
    flow = make_flow()
    with torch.no_grad():
        start = float(-flow.log_prob(x).mean())  # the flow starts at the identity
        flow.load_state_dict(r0["state"])
        end = float(-flow.log_prob(x).mean())
    assert end < start - 0.3, (start, end)
    assert h0["val"][-1] < h0["val"][0]
    saved = nf.load(tmp_path / "ckpt.pt")  # written by rank 0 only, loadable without user code
    for k, v in saved.state_dict().items():
        assert torch.equal(v, r0["state"][k]), k


@pytest.mark.slow
def test_ddp_example_runs_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "examples" / "ddp_train.py"), "--epochs", "3", "--rows", "1000",
           "--out", str(tmp_path / "model.pt"), "--checkpoint", str(tmp_path / "ckpt.pt")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical across 2 ranks: True" in result.stdout
    flow = nf.load(tmp_path / "model.pt")
    assert flow.sample(5).shape == (5, 2)
