"""The rational-quadratic spline transformer alone: the compiled kernel (``rq_native``, what
``RationalQuadraticSpline`` runs on the CPU), the fused PyTorch version (``rq_fused``, what it runs
elsewhere) and the composed reference implementation of the same map (``_spline``), for a training
pass (forward + backward into the parameters) and no-grad forward and inverse.

  python benchmarks/spline_kernel.py                      # 512 / 4096 rows x 4 / 32 features
  python benchmarks/spline_kernel.py --rows 512 --features 4 --reps 500

Run it under the peer harness's allocator settings for comparable figures
(``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``). It prints medians
and the ratios of the composed and fused versions to the compiled kernel; quote the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
from ar_sampler import median_seconds  # this folder is on the path when run as a script

from torchnf.transformers import RationalQuadraticSpline, rq_native


def _calls(t: RationalQuadraticSpline, rows: int, features: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g) * 2
    p = torch.randn(rows, features, *t.param_shape, generator=g)
    pg = p.clone().requires_grad_()
    ways = {
        "native": (t.forward, t.inverse, contextlib.nullcontext),
        "fused": (t.forward, t.inverse, rq_native.disabled),
        "composed": (t._forward_composed, lambda v, q: t._spline(v, q, True), contextlib.nullcontext),
    }
    calls = {}
    for name, (fwd, inv, ctx) in ways.items():

        def train(fwd=fwd, ctx=ctx):
            with ctx():
                y, ladj = fwd(x, pg)
                torch.autograd.backward((y, ladj), (torch.ones_like(y), torch.ones_like(ladj)))

        def forward(fwd=fwd, ctx=ctx):
            with ctx(), torch.no_grad():
                fwd(x, p)

        def inverse(inv=inv, ctx=ctx):
            with ctx(), torch.no_grad():
                inv(x, p)

        calls[name] = {"fwd+bwd": train, "forward": forward, "inverse": inverse}
    return calls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="512,4096")
    ap.add_argument("--features", default="4,32")
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t = RationalQuadraticSpline(args.bins, bound=5.0)
    if not rq_native.available():
        raise SystemExit(f"the compiled kernel is not built: {rq_native.status()}")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.bins} bins; median us per call")
    print(f"{'rows x features':>16} {'task':>8} {'composed':>10} {'fused':>10} {'native':>10}"
          f" {'composed/native':>16} {'fused/native':>13}")
    for rows in map(int, args.rows.split(",")):
        for features in map(int, args.features.split(",")):
            calls = _calls(t, rows, features)
            for task in ("fwd+bwd", "forward", "inverse"):
                # interleave the two implementations in rounds so that drift hits both alike
                times = {name: [] for name in calls}
                for _ in range(5):
                    for name in calls:
                        times[name].append(median_seconds(calls[name][task], max(1, args.reps // 5)) * 1e6)
                c, f, n = (statistics.median(times[k]) for k in ("composed", "fused", "native"))
                print(f"{rows:>9} x {features:<4} {task:>8} {c:>10.0f} {f:>10.0f} {n:>10.0f}"
                      f" {c / n:>15.2f}x {f / n:>12.2f}x")


if __name__ == "__main__":
    main()
