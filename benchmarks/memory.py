#!/usr/bin/env python
"""Peak resident memory of a training step, torchnf against the peer libraries.

Each (library, config, D) runs in a fresh Python process built from the adapters of
``../shared/bench/peers.py`` (same models as the speed harness): it builds the model and a batch,
records the resident-set high-water mark, runs a few training steps (log_prob -> mean NLL ->
backward -> Adam step) and reports how far the high-water mark rose. Run it in the environment where
the peers are installed (see benchmarks/README.md):

  python benchmarks/memory.py --libs torchnf,zuko,nflows --configs maf,realnvp,nsf-c,nsf-ar --dims 8,64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench")

CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {peers!r})
import peers
torch.set_num_threads({threads})
torch.manual_seed(0)
cfg = peers.CONFIGS[{config!r}]
model = peers.build_floor(cfg, {dim}) if {lib!r} == "floor" else peers.ADAPTERS[{lib!r}](cfg, {dim})
x = peers.make_data({batch}, {dim}, 0)
opt = torch.optim.Adam(model.module.parameters(), lr=1e-4)
def kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = kib()
for _ in range({steps}):
    opt.zero_grad(set_to_none=True)
    loss = -model.log_prob(x).mean()
    loss.backward()
    opt.step()
print(before, kib())
"""


def run(lib: str, config: str, dim: int, batch: int, steps: int, threads: int) -> tuple[int, int]:
    code = CHILD.format(peers=PEERS, lib=lib, config=config, dim=dim, batch=batch, steps=steps,
                        threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = (int(v) for v in out.stdout.split()[-2:])
    return before, after


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libs", default="torchnf,zuko,nflows,floor")
    ap.add_argument("--configs", default="maf,realnvp,nsf-c,nsf-ar")
    ap.add_argument("--dims", default="8,64")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    print("| config | D | " + " | ".join(f"{lib} step MiB" for lib in args.libs.split(",")) + " |")
    print("|---|---|" + "---|" * len(args.libs.split(",")))
    for config in args.configs.split(","):
        for dim in (int(d) for d in args.dims.split(",")):
            cells = []
            for lib in args.libs.split(","):
                try:
                    before, after = run(lib, config, dim, args.batch, args.steps, args.threads)
                except subprocess.CalledProcessError as e:
                    cells.append("n/a")
                    print(f"  {lib} {config} D={dim} failed: {e.stderr.strip().splitlines()[-1:]}",
                          file=sys.stderr)
                    continue
                rise = (after - before) / 1024
                rows.append({"lib": lib, "config": config, "dim": dim, "rss_before_mib": before / 1024,
                             "rss_peak_mib": after / 1024, "step_rise_mib": rise})
                cells.append(f"{rise:.1f}")
            print(f"| {config} | {dim} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
