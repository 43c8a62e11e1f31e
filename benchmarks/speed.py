#!/usr/bin/env python
"""torchnf throughput for every architecture family: train step, log_prob and sampling.

For each architecture, dimension D and batch size B it times
  train    -mean log_prob on a batch of B -> backward -> Adam step      (ms per step)
  logprob  no-grad log_prob of B points                                   (samples/s)
  sample   no-grad sampling of B points                                   (samples/s)
and prints a table and writes JSON (``--json``); ``--plot`` draws cost against D and batch size.
``--compare`` also runs the peer harness (``../shared/bench/peers.py``) when zuko/nflows/... are
installed in the running environment (see benchmarks/README.md).

Examples:
  python benchmarks/speed.py --archs RealNVP,MAF,NSF --dims 8,64 --batches 512
  python benchmarks/speed.py --json speed.json --plot speed.png          # the full grid
  python benchmarks/speed.py --compare --configs maf,realnvp,nsf-c,nsf-ar --dims 8,64
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import torchnf as nf

DEFAULT_ARCHS = (
    "NICE,RealNVP,MAF,IAF,NSF,NSF-AR,LRSNSF,UMNNMAF,NAF,Planar,Radial,Sylvester,IResNet,ResidualFlow,FFJORD"
)


def build(name: str, dim: int, layers: int, hidden: tuple[int, ...]) -> nf.Flow:
    """Build ``name`` (a torchnf architecture; ``NSF-AR`` = ``NSF(coupling=False)``) at dimension ``dim``."""
    kwargs: dict = {}
    if name == "NSF-AR":
        name, kwargs = "NSF", {"coupling": False}
    cls = getattr(nf, name, None)
    if cls is None:
        raise LookupError(f"torchnf has no architecture {name!r}")
    params = inspect.signature(cls).parameters
    if "layers" in params:
        kwargs["layers"] = layers
    if "hidden" in params:
        kwargs["hidden"] = hidden
    return nf.Flow(cls(dim, **kwargs))


def timeit(fn, budget: float, min_reps: int = 3, max_reps: int = 30) -> float:
    """Median seconds per call; one warm-up call; stops after ``budget`` seconds."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if times[-1] > budget:
            break
    return statistics.median(times)


def measure(flow: nf.Flow, dim: int, batch: int, budget: float) -> dict:
    g = torch.Generator().manual_seed(dim * 7919 + batch)
    x = torch.randn(batch, dim, generator=g)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()

    def logprob() -> None:
        with torch.no_grad():
            flow.log_prob(x)

    def sample() -> None:
        flow.sample(batch)

    out = {}
    flow.train()
    out["train_ms"] = timeit(train, budget) * 1e3
    flow.eval()
    out["logprob_per_s"] = batch / timeit(logprob, budget)
    out["sample_per_s"] = batch / timeit(sample, budget)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=DEFAULT_ARCHS)
    ap.add_argument("--dims", default="2,8,64,256")
    ap.add_argument("--batches", default="64,512,4096")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per (arch, D, B, task)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of cost against D and batch size")
    ap.add_argument("--compare", action="store_true", help="also run ../shared/bench/peers.py")
    ap.add_argument("--configs", default="maf,realnvp,nsf-c,nsf-ar", help="peer configs for --compare")
    ap.add_argument("--peer-libs", default="torchnf,zuko,nflows,normflows,torchflows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    rows = []
    print(f"{'arch':14s} {'D':>4s} {'B':>5s} {'train ms':>9s} {'logprob/s':>11s} {'sample/s':>11s}")
    for name in args.archs.split(","):
        for dim in (int(d) for d in args.dims.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                torch.manual_seed(0)
                try:
                    flow = build(name, dim, args.layers, hidden)
                    r = measure(flow, dim, batch, args.budget)
                except Exception as e:  # an architecture may not support a dimension (e.g. coupling, D=1)
                    print(f"{name:14s} {dim:4d} {batch:5d}  skipped: {type(e).__name__}: {e}"[:120])
                    continue
                rows.append({"arch": name, "dim": dim, "batch": batch, **r})
                print(f"{name:14s} {dim:4d} {batch:5d} {r['train_ms']:9.2f} {r['logprob_per_s']:11.0f} "
                      f"{r['sample_per_s']:11.0f}", flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "layers": args.layers,
            "hidden": hidden}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    if args.compare:
        peers = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench", "peers.py")
        cmd = [sys.executable, peers, "--libs", args.peer_libs, "--configs", args.configs,
               "--dims", args.dims]
        print("running", " ".join(cmd), flush=True)
        return subprocess.call(cmd)
    return 0


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["arch"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    dims = sorted({r["dim"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    big, mid = max(batches), (64 if 64 in dims else dims[len(dims) // 2])
    panels = (("dim", "batch", big, "D", f"train step (ms), batch {big}", "cost against dimension"),
              ("batch", "dim", mid, "batch size", f"train step (ms), D={mid}", "cost against batch size"))
    for ax, (x_key, fixed_key, fixed, xlabel, ylabel, title) in zip(axes, panels):
        for a in archs:
            pts = sorted((r[x_key], r["train_ms"]) for r in rows if r["arch"] == a and r[fixed_key] == fixed)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=a)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
