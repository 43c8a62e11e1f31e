"""Tabular density-estimation benchmark: POWER, GAS, HEPMASS, MINIBOONE, BSDS300.

Fits a flow on the training split (early stopping on the validation split) and prints the test
log-likelihood in nats with its standard error ``std / sqrt(N_test)``, beside the published RQ-NSF
figure. Data follow the MAF paper's files and protocol (see ``torchnf.datasets.tabular``).

Usage::

    python benchmarks/tabular.py --data-dir ../shared/data --dataset power --arch nsf \\
        --layers 5 --hidden 256,256 --epochs 200 --time-limit 3600
    python benchmarks/tabular.py --synthetic --dataset all --epochs 3     # smoke test, no files needed

``--synthetic`` writes small random files in each dataset's layout to a temporary folder (GAS needs
pandas, BSDS300 h5py; they are skipped without them) and runs the same pipeline on them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence

import torch

import torchnf as nf
from torchnf.cli import CLIError, build_architecture
from torchnf.datasets import PUBLISHED_LL, TABULAR_LOADERS, load_tabular, write_synthetic

_OPTIONAL = {"gas": "pandas", "bsds300": "h5py"}


def evaluate(flow: nf.Flow, x: torch.Tensor, batch: int = 10000) -> tuple[float, float]:
    """Mean test log-likelihood and its standard error."""
    flow.eval()
    with torch.no_grad():
        lp = torch.cat([flow.log_prob(b) for b in x.split(batch)]).double()
    se = lp.std().item() / math.sqrt(len(lp)) if len(lp) > 1 else float("nan")
    return lp.mean().item(), se


def run(name: str, root: str, args: argparse.Namespace) -> dict:
    """Load one dataset, fit, evaluate; returns a result row."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    train, val, test = load_tabular(name, root, dtype=dtype, seed=args.data_seed)
    torch.manual_seed(args.seed)
    dim = train.shape[1]
    flow = nf.Flow(build_architecture(args.arch, dim, layers=args.layers, hidden=args.hidden,
                                      options=args.arch_arg or ())).to(dtype)
    start = time.perf_counter()
    history = flow.fit(train, val=val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       patience=args.patience, time_limit=args.time_limit, seed=args.seed,
                       progress=not args.no_progress)
    seconds = time.perf_counter() - start
    ll, se = evaluate(flow, test)
    return {
        "dataset": name, "dim": dim, "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "arch": type(flow.bijection).__name__, "params": sum(p.numel() for p in flow.parameters()),
        "epochs": len(history.train), "stopped": history.stopped, "seconds": round(seconds, 1),
        "test_ll": ll, "test_ll_se": se, "published_ll": PUBLISHED_LL[name],
        "synthetic": bool(args.synthetic),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder holding power/, gas/, hepmass/, miniboone/, BSDS300/")
    p.add_argument("--dataset", default="all",
                   help="comma-separated names or 'all': " + ", ".join(TABULAR_LOADERS))
    p.add_argument("--arch", default="nsf", help="architecture name from torchnf (default nsf)")
    p.add_argument("--layers", type=int, help="transforms (architecture default if omitted)")
    p.add_argument("--hidden", default="256,256", help="conditioner widths (default 256,256)")
    p.add_argument("--arch-arg", action="append", metavar="KEY=VALUE", help="extra architecture option")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs (default 200)")
    p.add_argument("--time-limit", type=float, help="training seconds per dataset")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience in epochs")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0, help="initialisation and training seed")
    p.add_argument("--data-seed", type=int, default=42, help="shuffle seed of the split (published: 42)")
    p.add_argument("--synthetic", action="store_true", help="run on small synthetic files (smoke test)")
    p.add_argument("--n-synthetic", type=int, default=3000, help="rows per synthetic file")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip().lower() for n in args.dataset.split(",")]
    names = list(TABULAR_LOADERS) if names == ["all"] else names
    unknown = [n for n in names if n not in TABULAR_LOADERS]
    if unknown:
        print(f"unknown dataset(s) {unknown}; choose from {', '.join(TABULAR_LOADERS)}", file=sys.stderr)
        return 2
    if not args.synthetic and not args.data_dir:
        print("pass --data-dir (or --synthetic for a smoke test)", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory() if args.synthetic else None
    root = tmp.name if tmp else args.data_dir
    results = []
    try:
        for name in names:
            if args.synthetic:
                if name in _OPTIONAL and importlib.util.find_spec(_OPTIONAL[name]) is None:
                    print(f"{name}: skipped ({_OPTIONAL[name]} is not installed)")
                    continue
                write_synthetic(name, root, n=args.n_synthetic, seed=args.data_seed)
            try:
                row = run(name, root, args)
            except (FileNotFoundError, ImportError, ValueError, CLIError) as e:
                print(f"{name}: error: {e}", file=sys.stderr)
                return 2
            results.append(row)
            tag = " (synthetic data)" if args.synthetic else f"   published RQ-NSF: {row['published_ll']:.2f}"
            print(f"{name:10s} D={row['dim']:<3d} {row['arch']} {row['params']:,} params, "
                  f"{row['epochs']} epochs in {row['seconds']:.0f} s ({row['stopped']}): test log-likelihood "
                  f"{row['test_ll']:.3f} +- {row['test_ll_se']:.3f} nats{tag}")
    finally:
        if tmp:
            tmp.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
