"""Probability questions answered by a flow, with error bars.

A flow fitted to samples of a banana-shaped density answers: the probability of a region, an
expectation, and the marginal CDF of one coordinate, each with a standard error. The exact answers
(from a million exact samples) are printed next to them; the flow's answers differ from the truth by
its fitting error plus the Monte Carlo error shown.

    OMP_NUM_THREADS=1 python examples/probability.py
"""

from __future__ import annotations

import torch

import torchnf as nf
from torchnf.inference import expectation, marginal_cdf, probability


def main() -> None:
    torch.manual_seed(0)
    target = nf.targets.Banana(2, a=1.0, b=1.0)
    flow = nf.Flow(nf.RealNVP(2, layers=6, hidden=(64, 64)))
    flow.fit(target.sample(10_000, seed=0).float(), epochs=40, progress=False)
    exact = target.sample(1_000_000, seed=1)

    def region(x):  # the upper-left arm of the banana
        return (x[:, 0] < -1.0) & (x[:, 1] > 1.0)

    p = probability(flow, region, n=200_000, seed=2)
    lo, hi = p.interval(0.95)
    print(f"P(x1 < -1, x2 > 1)   flow {p.estimate:.4f} +- {p.stderr:.4f}  95% [{lo:.4f}, {hi:.4f}]   "
          f"exact {region(exact).double().mean():.4f}")

    e = expectation(flow, lambda x: x[:, 1].square(), n=200_000, seed=3)
    print(f"E[x2^2]              flow {e.estimate:.3f} +- {e.stderr:.3f}   exact {target.cov[1, 1]:.3f}")

    values = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    cdf = marginal_cdf(flow, 1, values, n=200_000, seed=4)
    for v, est, se in zip(values.tolist(), cdf.estimate.tolist(), cdf.stderr.tolist()):
        truth = (exact[:, 1] <= v).double().mean()
        print(f"P(x2 <= {v:4.1f})        flow {est:.4f} +- {se:.4f}   exact {truth:.4f}")


if __name__ == "__main__":
    main()
