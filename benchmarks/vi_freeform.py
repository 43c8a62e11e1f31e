"""Planar, radial and Sylvester flows as variational posteriors for a 2-D banana (reverse KL).

The target is :class:`torchnf.targets.Banana` (``a = b = 1``): a standard normal pushed through a
map with unit Jacobian, so its normaliser is known exactly, ``log Z = log(2 pi)``. Each flow ``q`` is
fitted with :func:`torchnf.inference.fit_variational` (reparameterised samples from the flows'
cheap sampling direction); the final ELBO ``E_q[log p~(x) - log q(x)]`` is then estimated from
100k fresh samples, and ``log Z - ELBO = KL(q || p)`` is the gap reported. Run:

    OMP_NUM_THREADS=1 python benchmarks/vi_freeform.py [--steps 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import torchnf as nf

FLOWS = {
    "Planar(layers=16)": lambda: nf.Planar(2, layers=16),
    "Radial(layers=16)": lambda: nf.Radial(2, layers=16),
    "Sylvester(orthogonal, layers=8)": lambda: nf.Sylvester(2, layers=8, kind="orthogonal"),
    "Sylvester(householder, layers=8)": lambda: nf.Sylvester(2, layers=8, kind="householder"),
    "Sylvester(triangular, layers=8)": lambda: nf.Sylvester(2, layers=8, kind="triangular"),
}


def elbo(flow: nf.Flow, target: nf.targets.Banana, n: int = 100_000) -> tuple[float, float]:
    """ELBO estimate and its standard error from ``n`` samples (in chunks of 10k)."""
    with torch.no_grad():
        w = []
        for _ in range(n // 10_000):
            x, log_q = flow.sample_and_log_prob(10_000)
            w.append(target.log_prob(x) - log_q)
        w = torch.cat(w)
    return w.mean().item(), (w.std() / math.sqrt(w.numel())).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    target = nf.targets.Banana()
    log_z = target.log_normalizer
    print(f"Banana(a=1, b=1): log Z = {log_z:.4f}; fit_variational with {args.steps} steps of "
          f"{args.samples} samples, lr {args.lr} (cosine), seed {args.seed}; ELBO from 100k samples")
    print(f"{'flow':34s} {'ELBO':>9s} {'+-se':>7s} {'gap':>7s} {'fit time':>9s}")
    torch.manual_seed(args.seed)
    m0, se0 = elbo(nf.Flow(nf.Planar(2, layers=1)), target)
    print(f"{'N(0, I) (identity flow)':34s} {m0:9.4f} {se0:7.4f} {log_z - m0:7.4f}")
    for name, make in FLOWS.items():
        torch.manual_seed(args.seed)
        flow = nf.Flow(make())
        start = time.perf_counter()
        flow.fit_variational(target, steps=args.steps, samples=args.samples, lr=args.lr, progress=False,
                             seed=args.seed)
        seconds = time.perf_counter() - start
        mean, se = elbo(flow, target)
        print(f"{name:34s} {mean:9.4f} {se:7.4f} {log_z - mean:7.4f} {seconds:8.1f}s", flush=True)


if __name__ == "__main__":
    main()
