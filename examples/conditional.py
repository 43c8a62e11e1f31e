"""A conditional flow: learn p(x | c) for a banana that turns with the context c.

The data are pairs ``(c, x)``: ``c ~ U(-1, 1)`` and, given ``c``, a banana-shaped 2-D density
rotated by the angle ``c * pi / 2``:

    u ~ N(0, I),   y = (u_1, s u_2 + b (u_1^2 - 1)),   x = R(c pi / 2) y,

whose conditional log-density is exact: ``log p(x | c) = log N(u_1) + log N(u_2) - log s`` with
``u`` recovered from ``y = R(-c pi / 2) x``. A neural spline flow with ``context_dim=1`` is
fitted to the pairs; the script prints its test conditional log-likelihood beside the true one,
and writes, for three contexts, the true and the learned conditional densities and samples.

    python examples/conditional.py                 # ~1 min on 2 cores
    python examples/conditional.py --arch maf --steps 3000 --seconds 120

Conditional flows take ``context=`` in every call: ``flow.log_prob(x, context=c)`` with one
context row per data row, ``flow.sample(n, context=c0)`` for one context ``c0`` of shape ``(1,)``
(samples ``(n, 2)``), or ``flow.sample(n, context=cs)`` for ``k`` contexts (samples ``(n, k, 2)``).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

import torchnf as nf
from torchnf import plotting

SPREAD, BEND = 0.5, 0.5  # s and b above
LOG_2PI = math.log(2 * math.pi)


def rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate the rows of ``x`` ``(..., 2)`` by ``angle`` ``(...)`` radians."""
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([cos * x[..., 0] - sin * x[..., 1], sin * x[..., 0] + cos * x[..., 1]], dim=-1)


def sample_given(c: Tensor, generator: torch.Generator) -> Tensor:
    """One draw of ``x | c`` per context row: ``c`` ``(n, 1)`` -> ``x`` ``(n, 2)`` (float64)."""
    u = torch.randn(len(c), 2, generator=generator, dtype=torch.float64)
    y = torch.stack([u[:, 0], SPREAD * u[:, 1] + BEND * (u[:, 0] ** 2 - 1)], dim=-1)
    return rotate(y, c[:, 0].double() * math.pi / 2)


def sample_pairs(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` pairs: contexts ``(n, 1)`` uniform on ``[-1, 1]`` and data ``(n, 2)`` given each."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    return c.float(), sample_given(c, g).float()


def true_log_prob(x: Tensor, c: Tensor) -> Tensor:
    """Exact ``log p(x | c)`` for ``x`` ``(..., 2)`` and ``c`` ``(..., 1)`` (broadcasting)."""
    x, c = x.double(), c.double()
    y = rotate(x, -c[..., 0] * math.pi / 2)
    u1 = y[..., 0]
    u2 = (y[..., 1] - BEND * (u1**2 - 1)) / SPREAD
    return -0.5 * (u1**2 + u2**2) - LOG_2PI - math.log(SPREAD)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="nsf", choices=("nsf", "maf", "realnvp"),
                   help="architecture (default nsf)")
    p.add_argument("--layers", type=int, default=4, help="transforms (default 4)")
    p.add_argument("--hidden", default="64,64", help="conditioner widths (default 64,64)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--seconds", type=float, default=40.0, help="wall-clock cap on training (default 40)")
    p.add_argument("--n-train", type=int, default=20000, help="training pairs (default 20000)")
    p.add_argument("--n-test", type=int, default=20000, help="test pairs (default 20000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--resolution", type=int, default=120, help="grid cells per side of the heat maps")
    p.add_argument("--out", default="conditional-out",
                   help="folder for the pictures (default conditional-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Fit and evaluate; returns ``{"test_ll", "true_ll", "gap", "gap_stderr"}`` (nats)."""
    args = parse_args(argv)
    c, x = sample_pairs(args.n_train, args.seed)
    c_val, x_val = sample_pairs(max(args.n_train // 10, 10), args.seed + 1)
    c_test, x_test = sample_pairs(args.n_test, args.seed + 2)

    torch.manual_seed(args.seed)
    arch = {"nsf": nf.NSF, "maf": nf.MAF, "realnvp": nf.RealNVP}[args.arch]
    hidden = tuple(int(h) for h in args.hidden.split(","))
    flow = nf.Flow(arch(2, context_dim=1, layers=args.layers, hidden=hidden))
    epochs = math.ceil(args.steps * args.batch_size / len(x))  # max_steps ends the last one
    history = flow.fit(x, context=c, val=x_val, val_context=c_val, epochs=epochs, max_steps=args.steps,
                       time_limit=args.seconds, batch_size=args.batch_size, lr=args.lr, patience=None,
                       seed=args.seed, progress=args.progress)

    with torch.no_grad():
        lp = flow.log_prob(x_test, context=c_test).double()
    true = true_log_prob(x_test, c_test)
    gap = true - lp
    n = len(lp)
    result = {"test_ll": float(lp.mean()), "true_ll": float(true.mean()), "gap": float(gap.mean()),
              "gap_stderr": float(gap.std() / math.sqrt(n))}
    name = type(flow.bijection).__name__
    print(f"{name} with context_dim=1, {history.steps} steps in {history.seconds:.0f} s")
    print(f"test log p(x | c): flow {result['test_ll']:.4f} ± {lp.std() / math.sqrt(n):.4f} nats, "
          f"truth {result['true_ll']:.4f}; gap {result['gap']:.4f} ± {result['gap_stderr']:.4f} nats")

    # One call samples all three contexts: (n, 3, 2).
    contexts = torch.tensor([[-1.0], [0.0], [1.0]])
    with torch.no_grad():
        samples = flow.sample(2000, context=contexts)
    images = {}
    for k, ck in enumerate(contexts):
        truth = sample_given(ck.expand(2000, 1), torch.Generator().manual_seed(args.seed + 3 + k))
        name = f"c={float(ck):+.0f}"
        images[f"{name}: density"] = plotting.plot_density(
            flow, os.path.join(args.out, f"density_{name}.png"), lim=3.5, context=ck,
            true_log_prob=lambda v, ck=ck: true_log_prob(v, ck.to(v.dtype)), resolution=args.resolution)
        images[f"{name}: samples"] = plotting.plot_samples(
            truth, samples[:, k], os.path.join(args.out, f"samples_{name}.png"), lim=3.5,
            titles=(f"true x | {name}", f"flow samples x | {name}"))
    images["training curves"] = plotting.plot_losses(history, os.path.join(args.out, "losses.png"),
                                                     reference=-result["true_ll"])
    rows = [("flow", f"{name}(2, context_dim=1, layers={args.layers}, hidden={hidden})"),
            ("test log p(x | c)", f"{result['test_ll']:.4f} nats (truth {result['true_ll']:.4f})"),
            ("gap to the truth", f"{result['gap']:.4f} ± {result['gap_stderr']:.4f} nats")]
    page = plotting.html_report(os.path.join(args.out, "index.html"), "A conditional flow", rows, images)
    print(f"wrote {page}")
    return result


if __name__ == "__main__":
    main()
