#!/usr/bin/env python
"""Sequential MADE sampler against ``D`` full MADE passes, on the same weights.

torchnf samples masked-autoregressive layers one feature per step; without a graph each step
computes only the hidden units whose degree the step completes, and the solved feature's output
rows, so the ``D`` steps cost less than one MADE pass in the hidden layers. The straightforward
inverse runs the whole MADE ``D`` times.

  python benchmarks/ar_sampler.py            # MAF and NSF-AR at D = 8, 64; 4096 samples
"""

from __future__ import annotations

import time

import torch

import torchnf as nf


def median_seconds(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[reps // 2]


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for name, dim in [("MAF", 8), ("MAF", 64), ("NSF-AR", 8), ("NSF-AR", 64)]:
        arch = (nf.MAF(dim, layers=5, hidden=(256, 256)) if name == "MAF"
                else nf.NSF(dim, layers=5, hidden=(256, 256), coupling=False))
        z = torch.randn(4096, dim)

        def full_passes(arch=arch, z=z, dim=dim) -> None:
            with torch.no_grad():
                x = z
                for layer in reversed(list(arch)):
                    y = torch.zeros_like(x)
                    for _ in range(dim):
                        y, _ = layer.transformer.inverse(x, layer._params(y, None))
                    x = y

        def sequential(arch=arch, z=z) -> None:
            with torch.no_grad():
                arch.inverse(z)

        slow, fast = median_seconds(full_passes), median_seconds(sequential)
        print(f"{name} D={dim}: D full passes {slow * 1e3:.0f} ms, sequential {fast * 1e3:.0f} ms "
              f"({slow / fast:.2f}x)")


if __name__ == "__main__":
    main()
