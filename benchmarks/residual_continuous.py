"""Per-step cost and peak memory of residual and continuous flows (IResNet, ResidualFlow, FFJORD).

One training step is ``-flow.log_prob(x).mean()`` (+ the RNODE penalty for FFJORD) forward and
backward on a batch of 256 in training mode (stochastic log-dets); an eval step is ``log_prob``
without gradient in eval mode (exact log-dets). Parameters are perturbed away from the identity
initialisation, so that the residual branches are active and the ODE needs real steps. Each
(model, dim) runs in its own process so that the peak resident memory (``getrusage`` max RSS) belongs
to it alone; "extra" is the peak minus the RSS after building the model (the cost of the steps). On
CUDA the peak is ``torch.cuda.max_memory_allocated``. "ODE evals/step" counts evaluations of the
dynamics network per training step (forward solve plus backpropagation through the solver). Run:

    OMP_NUM_THREADS=1 python benchmarks/residual_continuous.py [--dims 2 16 64] [--steps 5] [--device cpu]

With ``--toys`` it instead fits each architecture (and NSF for reference) by maximum likelihood on the
eight-Gaussians and rings toys with one budget (``--fit-steps`` AdamW steps, cosine schedule) and
reports the gap ``KL(p || q) ~ mean[log p(x) - log q(x)]`` on held-out points (eval mode: exact
log-dets), with its standard error:

    OMP_NUM_THREADS=1 python benchmarks/residual_continuous.py --toys [--fit-steps 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import torchnf as nf
from torchnf import datasets

MODELS = {
    "IResNet": lambda d: nf.IResNet(d, layers=4, hidden=(128, 128)),
    "ResidualFlow": lambda d: nf.ResidualFlow(d, layers=4, hidden=(128, 128)),
    "FFJORD": lambda d: nf.FFJORD(d, layers=1, hidden=(128, 128), kinetic=0.01, jacobian_norm=0.01),
}


TOY_MODELS = {
    "IResNet(layers=8, hidden=(64, 64))": lambda: nf.IResNet(2, layers=8, hidden=(64, 64)),
    "IResNet(..., estimator='exact')": lambda: nf.IResNet(2, layers=8, hidden=(64, 64), estimator="exact"),
    "ResidualFlow(layers=8, hidden=(64, 64))": lambda: nf.ResidualFlow(2, layers=8, hidden=(64, 64)),
    "FFJORD(layers=1, hidden=(64, 64, 64))": lambda: nf.FFJORD(2, hidden=(64, 64, 64)),
    "NSF(layers=5, hidden=(64, 64))": lambda: nf.NSF(2, layers=5, hidden=(64, 64)),
}


def toys(steps: int, batch: int, lr: float, seed: int, only: str | None) -> None:
    print(f"{steps} AdamW steps (cosine lr from {lr}), batch {batch}, 20000 training points, gap "
          f"KL(p||q) on 20000 held-out points, seed {seed}")
    for name in ("eight_gaussians", "rings"):
        toy = datasets.get(name)
        x, x_test = toy.sample(20_000, seed=seed), toy.sample(20_000, seed=seed + 1)
        print(f"\n{name}: true mean log p = {toy.log_prob(x_test).mean().item():.4f}")
        print(f"{'model':40s} {'gap':>8s} {'+-se':>7s} {'params':>7s} {'fit time':>9s}")
        for label, make in TOY_MODELS.items():
            if only is not None and only not in label:
                continue
            torch.manual_seed(seed)
            flow = nf.Flow(make())
            start = time.perf_counter()
            flow.fit(x, val_fraction=0.0, epochs=10**6, max_steps=steps, batch_size=batch, lr=lr,
                     patience=None, progress=False, seed=seed)
            seconds = time.perf_counter() - start
            flow.eval()
            with torch.no_grad():
                d = toy.log_prob(x_test) - torch.cat([flow.log_prob(c) for c in x_test.split(2000)])
            n_params = sum(p.numel() for p in flow.parameters())
            print(f"{label:40s} {d.mean().item():8.4f} {(d.std() / d.numel() ** 0.5).item():7.4f} "
                  f"{n_params:7d} {seconds:8.1f}s", flush=True)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: str, dim: int, steps: int, batch: int, device: str) -> dict:
    """Time ``steps`` training steps and eval passes of one model (after one warm-up step each)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    flow = nf.Flow(MODELS[model](dim)).to(dev)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(dev))
    x = (torch.randn(batch, dim, generator=g) * 1.5).to(dev)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    reg = model == "FFJORD"  # add the RNODE penalty, as a training loop would
    nfe = [0]
    for m in flow.modules():
        if isinstance(m, nf.ContinuousFlow):
            m.net.register_forward_hook(lambda *_: nfe.__setitem__(0, nfe[0] + 1))
    base_rss = _rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def train_step() -> float:
        _sync(dev)
        start = time.perf_counter()
        loss = -flow.log_prob(x).mean()
        if reg:
            loss = loss + flow.bijection.regularization.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(dev)
        return time.perf_counter() - start

    flow.train()
    train_step()
    nfe[0] = 0
    train = [train_step() for _ in range(steps)]
    train_nfe = nfe[0] / steps
    flow.eval()
    evals = []
    for _ in range(steps + 1):
        _sync(dev)
        start = time.perf_counter()
        with torch.no_grad():
            nll = -flow.log_prob(x).mean()
        _sync(dev)
        evals.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_mib()
    return {"model": model, "dim": dim, "train_ms": 1e3 * statistics.median(train),
            "eval_ms": 1e3 * statistics.median(evals[1:]), "peak_mib": peak,
            "extra_mib": peak - (0.0 if dev.type == "cuda" else base_rss), "nll": float(nll),
            "nfe": train_nfe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--toys", action="store_true", help="fit the 2-D toys instead")
    parser.add_argument("--fit-steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="with --toys: fit only the models whose label contains this")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.toys:
        toys(args.fit_steps, args.batch, args.lr, args.seed, args.only)
        return
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.batch, args.device)))
        return
    print(f"batch {args.batch}, median of {args.steps} steps, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':13s} {'dim':>4s} {'train ms/step':>14s} {'eval ms':>9s} {'peak MiB':>9s} "
          f"{'extra MiB':>10s} {'ODE evals/step':>15s}")
    for model in args.models:
        for dim in args.dims:
            cmd = [sys.executable, __file__, "--one", model, str(dim), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{model:13s} {dim:4d} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{model:13s} {dim:4d} {r['train_ms']:14.1f} {r['eval_ms']:9.1f} {r['peak_mib']:9.0f} "
                  f"{r['extra_mib']:10.0f} {r['nfe']:15.0f}", flush=True)


if __name__ == "__main__":
    main()
