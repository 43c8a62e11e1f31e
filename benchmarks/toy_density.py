"""Toy 2-D density benchmark: every architecture on densities with a known log-density.

Each architecture is fitted by maximum likelihood (``Flow.fit``: AdamW, cosine schedule, the
best validation epoch kept) on samples of a toy density from ``torchnf.datasets``, with the same
budget for all: optimiser steps, batch size, learning rate, number of transforms and conditioner
widths. On fresh test samples from the truth it reports the test log-likelihood and the gap to
the truth, ``KL(p || q) = E_p[log p - log q]`` in nats (with its standard error), the wall time
and the number of parameters.

Usage::

    python benchmarks/toy_density.py                       # checkerboard, RealNVP / MAF / NSF / NSF-AR
    python benchmarks/toy_density.py --datasets checkerboard,eight_gaussians,rings \\
        --archs realnvp,maf,nsf,nsf-ar,lrsnsf,umnnmaf,naf --steps 3000 --json toy.json
    python benchmarks/toy_density.py --archs all --steps 200   # every architecture torchnf has

An architecture is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` (options passed to its constructor,
e.g. ``nsf:bins=16,bound=4``); ``nsf-ar`` / ``lrsnsf-ar`` are the autoregressive variants and
``all`` expands to every architecture class in ``torchnf.architectures``. Architectures that
cannot be built with the common options are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

import torchnf as nf
from torchnf import datasets
from torchnf.cli import CLIError, build_architecture

ALIASES = {
    "nsf-c": "nsf",
    "nsf-ar": "nsf:coupling=false",
    "lrsnsf-ar": "lrsnsf:coupling=false",
}
DEFAULT_ARCHS = "realnvp,maf,nsf,nsf-ar"


def all_architectures() -> list[str]:
    """Names of every architecture class in ``torchnf.architectures``."""
    import torchnf.architectures as archs

    return [n.lower() for n in archs.__all__ if isinstance(getattr(archs, n), type)]


def parse_arch(spec: str) -> tuple[str, list[str]]:
    """``"nsf:bins=16,bound=4"`` -> ``("nsf", ["bins=16", "bound=4"])`` (aliases resolved)."""
    spec = ALIASES.get(spec.strip().lower(), spec.strip())
    name, _, opts = spec.partition(":")
    return name, [o for o in opts.split(",") if o]


def evaluate(flow: nf.Flow, truth: datasets.ToyDensity, x: torch.Tensor) -> dict[str, float]:
    """Test log-likelihood of the model and of the truth on ``x`` and the KL gap, with errors."""
    flow.eval()
    with torch.no_grad():
        model = torch.cat([flow.log_prob(b) for b in x.split(8192)]).double()
        true = truth.log_prob(x.double()).double()
    gap = true - model
    n = len(x)
    finite = bool(torch.isfinite(model).all())
    return {
        "test_ll": model.mean().item(),
        "test_ll_se": model.std().item() / math.sqrt(n),
        "true_ll": true.mean().item(),
        "kl": gap.mean().item(),
        "kl_se": gap.std().item() / math.sqrt(n),
        "finite": finite,
    }


def run_one(dataset: str, spec: str, args: argparse.Namespace) -> dict:
    """Fit one architecture on one dataset; a result row."""
    truth = datasets.get(dataset)
    name, options = parse_arch(spec)
    row: dict = {"dataset": dataset, "arch": spec, "steps": args.steps, "batch_size": args.batch_size,
                 "lr": args.lr, "layers": args.layers, "hidden": args.hidden, "n_train": args.n_train}
    torch.manual_seed(args.seed)
    try:
        bij = build_architecture(name, 2, layers=args.layers, hidden=args.hidden, options=options)
    except CLIError as e:
        row["skipped"] = str(e)
        return row
    flow = nf.Flow(bij)
    row["params"] = sum(p.numel() for p in flow.parameters())
    train = truth.sample(args.n_train, seed=args.seed)
    val = truth.sample(args.n_val, seed=args.seed + 1)
    test = truth.sample(args.n_test, seed=args.seed + 2)
    epochs = math.ceil(args.steps * args.batch_size / args.n_train) + 1
    start = time.perf_counter()
    try:
        history = flow.fit(train, val=val, epochs=epochs, max_steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, patience=None, progress=False, seed=args.seed)
    except (RuntimeError, ValueError) as e:
        row["failed"] = f"{type(e).__name__}: {e}"
        return row
    row["seconds"] = time.perf_counter() - start
    row["steps_run"] = getattr(history, "steps", args.steps)
    row.update(evaluate(flow, truth, test))
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of the results."""
    head = ("| dataset | architecture | test LL | true LL | KL gap (nats) | params | steps x batch | "
            "seconds |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "skipped" in r or "failed" in r:
            lines.append(f"| {r['dataset']} | {r['arch']} | {r.get('skipped') or r.get('failed')} "
                         "| | | | | |")
            continue
        lines.append(
            f"| {r['dataset']} | {r['arch']} | {r['test_ll']:.4f} ± {r['test_ll_se']:.4f} | "
            f"{r['true_ll']:.4f} | {r['kl']:.4f} ± {r['kl_se']:.4f} | {r['params']:,} | "
            f"{r['steps_run']} x {r['batch_size']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="checkerboard",
                   help=f"comma-separated toy densities with a log-density ({', '.join(datasets.names())})")
    p.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated architectures, or 'all'")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps per fit")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to 0)")
    p.add_argument("--layers", type=int, default=5, help="transforms per architecture")
    p.add_argument("--hidden", default="128,128", help="conditioner widths")
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--n-val", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", help="write the result rows to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = [a for s in args.archs.split(",") if s for a in (all_architectures() if s == "all" else [s])]
    rows = []
    for dataset in [d for d in args.datasets.split(",") if d]:
        if not datasets.get(dataset).has_log_prob:
            print(f"{dataset}: no closed-form log-density, skipped", file=sys.stderr)
            continue
        for spec in archs:
            row = run_one(dataset, spec, args)
            rows.append(row)
            done = (f"KL {row['kl']:.4f} ± {row['kl_se']:.4f} nats, test LL {row['test_ll']:.4f}, "
                    f"{row['seconds']:.1f} s") if "kl" in row else row.get("skipped") or row.get("failed")
            print(f"{dataset:16s} {spec:24s} {done}", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\nbudget: {args.steps} steps x batch {args.batch_size}, lr {args.lr} (cosine), "
          f"{args.layers} transforms, hidden {args.hidden}, {args.n_train} training samples; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
