"""Adaptive flow MCMC on a multimodal target: local MALA moves plus flow jumps, the flow learning
from the chains as they run (Gabrie, Rotskoff, Vanden-Eijnden 2022).

The target is a 2-D mixture of three well-separated Gaussians with weights 0.5/0.3/0.2. Chains
start equally in the three modes (weights 1/3 each); MALA alone never leaves its mode, so its mode
weights stay wrong. The adaptive sampler fits a RealNVP to the chains' states during warm-up, and
its independence jumps move chains between modes until the weights are right.

    OMP_NUM_THREADS=1 python examples/adaptive_mixture.py
"""

from __future__ import annotations

import argparse

import torch

import torchnf as nf
from torchnf.inference import diagnostics as D


def mode_weights(target, res) -> tuple[list[float], list[float]]:
    onehot = torch.nn.functional.one_hot(target.assign(res.samples.double()), 3).double()
    return onehot.mean((0, 1)).tolist(), D.mcse_mean(onehot).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    target = nf.targets.GaussianMixtureTarget([[-5.0, -3.0], [5.0, -3.0], [0.0, 5.0]],
                                              weights=[0.5, 0.3, 0.2])
    x0 = target.means.float().repeat(10, 1) + 0.1 * torch.randn(30, 2)
    print("exact mode weights      ", [round(w, 3) for w in target.weights.tolist()])

    mala = nf.mcmc.mala(target, x0, steps=args.steps, seed=args.seed)
    w, se = mode_weights(target, mala)
    print("MALA                    ", [round(v, 3) for v in w], "+-", [round(v, 3) for v in se])

    flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(32, 32)))
    res = nf.mcmc.adaptive_flow_mcmc(target, flow, x0, steps=args.steps, warmup=args.steps,
                                     jump_every=2, refit_every=5, refit_steps=5, lr=3e-3,
                                     seed=args.seed, progress=True)
    w, se = mode_weights(target, res)
    print("adaptive flow MCMC      ", [round(v, 3) for v in w], "+-", [round(v, 3) for v in se])
    print(f"jump acceptance {res.info['jump_acceptance'].mean():.2f}, "
          f"refit NLL {res.info['refit_loss'][0]:.2f} -> {res.info['refit_loss'][-1]:.2f} "
          f"(exact entropy {-target.log_prob(target.sample(20_000, seed=1)).mean():.2f})")


if __name__ == "__main__":
    main()
