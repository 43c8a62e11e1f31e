"""Planar, radial and Sylvester flows as variational posteriors for a 2-D banana (reverse KL).

The target is a transformed standard normal with unit Jacobian, so its normaliser is known:

    z1 = x1 / a,  z2 = a (x2 - b (x1^2 + a^2)),  log p~(x) = -(z1^2 + z2^2) / 2,  log Z = log(2 pi).

Each flow ``q`` is fitted by maximising the ELBO ``E_q[log p~(x) - log q(x)]`` with reparameterised
samples from ``Flow.rsample_and_log_prob`` (the flows' cheap direction). ``log Z - ELBO`` is
``KL(q || p)``, the gap reported. Run:

    OMP_NUM_THREADS=1 python benchmarks/vi_freeform.py [--steps 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import torchnf as nf

A, B = 1.0, 1.0
LOG_Z = math.log(2 * math.pi)


def log_banana(x: torch.Tensor) -> torch.Tensor:
    z1 = x[..., 0] / A
    z2 = A * (x[..., 1] - B * (x[..., 0] ** 2 + A**2))
    return -0.5 * (z1**2 + z2**2)


FLOWS = {
    "Planar(layers=16)": lambda: nf.Planar(2, layers=16),
    "Radial(layers=16)": lambda: nf.Radial(2, layers=16),
    "Sylvester(orthogonal, layers=8)": lambda: nf.Sylvester(2, layers=8, kind="orthogonal"),
    "Sylvester(householder, layers=8)": lambda: nf.Sylvester(2, layers=8, kind="householder"),
    "Sylvester(triangular, layers=8)": lambda: nf.Sylvester(2, layers=8, kind="triangular"),
}


def elbo(flow: nf.Flow, n: int) -> torch.Tensor:
    """Per-sample ``log p~(x) - log q(x)`` for ``n`` reparameterised samples."""
    x, log_q = flow.rsample_and_log_prob(n)
    return log_banana(x) - log_q


def fit(make, steps: int, batch: int, lr: float, seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    flow = nf.Flow(make())
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = -elbo(flow, batch).mean()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        w = torch.cat([elbo(flow, 10_000) for _ in range(10)])
    return w.mean().item(), (w.std() / math.sqrt(w.numel())).item(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"banana a={A}, b={B}: log Z = {LOG_Z:.4f}; {args.steps} Adam steps (cosine lr from {args.lr}), "
          f"batch {args.batch}, seed {args.seed}; ELBO from 100k samples")
    print(f"{'flow':34s} {'ELBO':>9s} {'+-se':>7s} {'gap':>7s} {'fit time':>9s}")
    with torch.no_grad():
        torch.manual_seed(args.seed)
        w0 = torch.cat([elbo(nf.Flow(nf.Planar(2, layers=1)), 10_000) for _ in range(10)])
    m0, se0 = w0.mean().item(), (w0.std() / math.sqrt(w0.numel())).item()
    print(f"{'N(0, I) (untrained)':34s} {m0:9.4f} {se0:7.4f} {LOG_Z - m0:7.4f}")
    for name, make in FLOWS.items():
        mean, se, seconds = fit(make, args.steps, args.batch, args.lr, args.seed)
        print(f"{name:34s} {mean:9.4f} {se:7.4f} {LOG_Z - mean:7.4f} {seconds:8.1f}s", flush=True)


if __name__ == "__main__":
    main()
