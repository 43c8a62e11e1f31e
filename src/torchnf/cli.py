"""The ``torchnf`` command: ``demo``, ``fit``, ``sample`` and ``log-prob``.

Run ``torchnf COMMAND --help`` for the options of each. Bad input (a missing or unreadable file,
the wrong number of columns, NaN rows, an unknown architecture) ends with a one-line message on
stderr and exit status 2, never a traceback.

Example:
    $ torchnf demo --time-limit 60            # fit checkerboard, write demo-out/index.html
    $ torchnf fit data.csv --arch maf --out model.pt --context-columns 3
    $ torchnf sample model.pt -n 1000 --context 0.5 --out samples.npy
    $ torchnf log-prob model.pt data.csv --out lp.npy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchnf.datasets.files import check_table_path, parse_columns, read_table, write_table

__all__ = ["main", "build_parser", "CLIError", "find_architecture", "architectures", "build_architecture"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


@contextmanager
def _user_errors(prefix: str = "") -> Iterator[None]:
    """Turn the library's input errors (bad files, tables, columns) into :class:`CLIError`."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise CLIError(prefix + str(e)) from None


# -- architectures and models --------------------------------------------------------------------
def architectures() -> dict[str, type]:
    """Named architectures exported by torchnf, keyed by lower-case name."""
    import torchnf
    from torchnf import architectures as arch_pkg

    found = {}
    for name in [*arch_pkg.__all__, "SINF"]:  # SINF: a bijection fitted by its own greedy algorithm
        obj = getattr(torchnf, name, None)
        if isinstance(obj, type) and issubclass(obj, torchnf.Bijection):
            found[name.lower()] = obj
    return found


def find_architecture(name: str) -> type:
    """Look an architecture up by name, case-insensitively; :class:`CLIError` lists the choices."""
    table = architectures()
    try:
        return table[name.lower()]
    except KeyError:
        choices = ", ".join(sorted(cls.__name__ for cls in table.values()))
        raise CLIError(f"unknown architecture {name!r}; choose from {choices}") from None


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"true": True, "false": False}.get(text.lower(), text)


def build_architecture(
    name: str,
    dim: int,
    *,
    context_dim: int = 0,
    layers: int | None = None,
    hidden: str | Sequence[int] | None = None,
    options: Sequence[str] = (),
) -> Any:
    """Build ``Arch(dim, context_dim=..., layers=..., hidden=..., **options)`` from command-line values.

    Args:
        name: architecture name, case-insensitive (see :func:`find_architecture`).
        hidden: widths as ``"64,64"`` or a sequence; ``None`` keeps the architecture's default.
        options: extra keyword arguments as ``"KEY=VALUE"`` strings (values parsed as JSON when
            possible, ``true``/``false`` as booleans, else kept as strings).

    Raises:
        CLIError: unknown name, malformed option, or arguments the architecture rejects.
    """
    cls = find_architecture(name)
    kwargs: dict[str, Any] = {}
    if context_dim:
        kwargs["context_dim"] = context_dim
    if layers is not None:
        kwargs["layers"] = layers
    if hidden:
        kwargs["hidden"] = tuple(_ints(hidden, "--hidden") if isinstance(hidden, str) else hidden)
    for item in options:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--arch-arg expects KEY=VALUE, got {item!r}")
        kwargs[key.strip()] = _value(val.strip())
    try:
        return cls(dim, **kwargs)
    except (TypeError, ValueError) as e:
        raise CLIError(f"cannot build {cls.__name__}(dim={dim}, {kwargs}): {e}") from None


def _build(arch: str, dim: int, context_dim: int, args: argparse.Namespace) -> Any:
    return build_architecture(arch, dim, context_dim=context_dim, layers=args.layers, hidden=args.hidden,
                              options=args.arch_arg or ())


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise CLIError(f"{flag} expects positive integers, got {text!r}")
    return values


def _load_model(path: str) -> tuple[Any, dict]:
    import torchnf as nf

    if not os.path.isfile(path):
        raise CLIError(f"no such model file: {path}")
    try:
        flow = nf.load(path)
        extra = torch.load(path, map_location="cpu", weights_only=True).get("extra", {})
    except Exception as e:  # any unreadable or foreign file
        detail = " ".join(str(e).split())[:300]
        raise CLIError(f"cannot load a torchnf model from {path}: not a file written by `torchnf fit` or "
                       f"Flow.save ({type(e).__name__}: {detail})") from None
    if len(flow.event_shape) != 1:
        raise CLIError(f"{path}: the command line handles vector models only, not event shape "
                       f"{tuple(flow.event_shape)}")
    flow.eval()
    return flow, extra.get("cli", {}) if isinstance(extra, dict) else {}


def _batched(fn: Callable[[int, int], Tensor], n: int, batch: int, progress: bool, desc: str) -> Tensor:
    from tqdm.auto import tqdm

    starts = range(0, n, batch)
    with torch.no_grad():
        bar = tqdm(starts, desc=desc, disable=not progress or len(starts) < 2)
        parts = [fn(s, min(s + batch, n)) for s in bar]
    return torch.cat(parts) if parts else torch.zeros(0)


def _split_columns(
    flow: Any, data: np.ndarray, spec: str | None, meta: dict, path: str
) -> tuple[Tensor, Tensor | None]:
    dim, cdim = int(flow.event_shape[0]), int(flow.context_dim)
    if data.shape[1] != dim + cdim:
        what = f"{dim} data + {cdim} context" if cdim else f"{dim} data"
        raise CLIError(f"the model expects {dim + cdim} columns ({what}), {path} has {data.shape[1]}")
    with _user_errors():
        ctx = parse_columns(spec, data.shape[1]) if spec else list(meta.get("context_columns", []))
    if len(ctx) != cdim:
        if not cdim:
            raise CLIError(f"the model is unconditional: drop --context-columns (got {ctx})")
        raise CLIError(f"the model is conditional with {cdim} context columns: pass --context-columns "
                       f"(got {len(ctx)} columns: {ctx})")
    return _split(data, ctx, _dtype(flow))


def _split(data: np.ndarray, ctx: list[int], dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    keep = [j for j in range(data.shape[1]) if j not in set(ctx)]
    x = torch.as_tensor(data[:, keep], dtype=dtype)
    return x, torch.as_tensor(data[:, ctx], dtype=dtype) if ctx else None


def _dtype(flow: Any) -> torch.dtype:
    return next((p.dtype for p in flow.parameters()), torch.get_default_dtype())


# -- commands ------------------------------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    import torchnf as nf

    with _user_errors():
        data = read_table(args.data)
        ctx = parse_columns(args.context_columns, data.shape[1])
    if len(data) < 10:
        raise CLIError(f"{args.data} has {len(data)} rows; fitting a flow needs at least 10")
    dtype = getattr(torch, args.dtype)
    x, c = _split(data, ctx, dtype)
    torch.manual_seed(args.seed)
    arch = _build(args.arch, x.shape[1], len(ctx), args)
    if args.standardize and not hasattr(arch, "fit_data"):  # SINF standardises through its own fit
        arch = nf.Compose(nf.ActNorm(x.shape[1]).initialize(x), arch)
    flow = nf.Flow(arch).to(dtype)
    print(f"torchnf fit: {find_architecture(args.arch).__name__} on {len(x)} rows, "
          f"{x.shape[1]} data + {len(ctx)} context columns", file=sys.stderr)
    options = dict(val_fraction=args.val_fraction, time_limit=args.time_limit, seed=args.seed,
                   progress=not args.no_progress)
    if not hasattr(arch, "fit_data"):  # gradient training (SINF's greedy fit has no epochs or lr)
        options.update(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    history = flow.fit(x, context=c, **options)
    with _user_errors(f"cannot write {args.out}: "):
        flow.save(args.out, cli={"context_columns": ctx, "columns": data.shape[1], "arch": args.arch})
    print(f"best validation NLL {history.best_val:.4f} nats after {len(history.train)} epochs "
          f"({history.stopped}); saved {args.out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    with _user_errors():
        check_table_path(args.out)
    if args.n < 1:
        raise CLIError(f"-n must be a positive integer, got {args.n}")
    flow, _ = _load_model(args.model)
    context = None
    if flow.context_dim:
        if args.context is None:
            raise CLIError(
                f"the model is conditional (context_dim={flow.context_dim}): pass --context v1,v2,..."
            )
        try:
            values = [float(v) for v in args.context.split(",")]
        except ValueError:
            raise CLIError(f"--context expects comma-separated numbers, got {args.context!r}") from None
        if len(values) != flow.context_dim:
            raise CLIError(f"--context has {len(values)} values, the model expects {flow.context_dim}")
        context = torch.tensor(values, dtype=_dtype(flow))
    elif args.context is not None:
        raise CLIError("the model is unconditional: drop --context")
    torch.manual_seed(args.seed)
    out = _batched(lambda a, b: flow.sample(b - a, context=context), args.n, args.batch_size,
                   not args.no_progress, "sampling")
    with _user_errors(f"cannot write {args.out}: "):
        write_table(args.out, out.cpu().numpy())
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def cmd_log_prob(args: argparse.Namespace) -> int:
    with _user_errors():
        if args.out:
            check_table_path(args.out)
        flow, meta = _load_model(args.model)
        data = read_table(args.data)
    x, c = _split_columns(flow, data, args.context_columns, meta, args.data)
    lp = _batched(lambda a, b: flow.log_prob(x[a:b], None if c is None else c[a:b]), len(x),
                  args.batch_size, not args.no_progress, "log_prob").double()
    se = lp.std().item() / math.sqrt(len(lp)) if len(lp) > 1 else float("nan")
    if args.out:
        with _user_errors(f"cannot write {args.out}: "):
            write_table(args.out, lp.numpy())
    print(f"mean log-likelihood {lp.mean().item():.4f} +- {se:.4f} nats over {len(lp)} rows"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0


def _toy_names() -> list[str]:
    from torchnf.datasets import names

    return names()


def _steps_for(flow: Any, x: Tensor, batch_size: int, seconds: float) -> int:
    """Optimiser steps that fit in ``seconds``, from timing a few gradient evaluations."""
    batch = x[:batch_size]
    times = []
    for _ in range(6):
        t = time.perf_counter()
        flow.log_prob(batch).mean().backward()
        times.append(time.perf_counter() - t)
        if sum(times) > 0.1 * seconds:
            break
    flow.zero_grad(set_to_none=True)
    per_step = 1.15 * float(np.median(times[1:] or times))  # + optimiser and validation overhead
    return max(10, int(seconds / per_step))


def cmd_demo(args: argparse.Namespace) -> int:
    import torchnf as nf
    from torchnf import datasets, plotting

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("the demo draws pictures and needs matplotlib: pip install torchnf[plot]") from None
    try:
        toy = datasets.get(args.dataset)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if min(args.n_train, args.n_test) < 10 or args.time_limit <= 0:
        raise CLIError("--n-train and --n-test must be at least 10 and --time-limit positive")
    arch_name = args.arch or ("NSF" if "nsf" in architectures() else "MAF")
    torch.manual_seed(args.seed)
    flow = nf.Flow(_build(arch_name, 2, 0, args))
    x = toy.sample(args.n_train, seed=args.seed)
    val = toy.sample(max(args.n_train // 4, 10), seed=args.seed + 1)
    test = toy.sample(args.n_test, seed=args.seed + 2)
    name = type(flow.bijection).__name__
    print(f"torchnf demo: {name} on {toy.name} ({len(x)} train / {len(val)} val / {len(test)} test points, "
          f"seed {args.seed})")
    if args.epochs:
        epochs, limit = args.epochs, None
    else:  # as many epochs as fit in the budget, so the learning-rate schedule runs to its end
        steps = _steps_for(flow, x, args.batch_size, args.time_limit)
        epochs, limit = max(1, steps // math.ceil(len(x) / args.batch_size)), 1.2 * args.time_limit
    history = flow.fit(x, val=val, epochs=epochs, time_limit=limit, batch_size=args.batch_size, lr=args.lr,
                       patience=20, seed=args.seed, progress=not args.no_progress)
    flow.eval()
    with torch.no_grad():
        lp = flow.log_prob(test).double()
        samples = flow.sample(len(test))
    n = len(lp)
    rows = [("architecture", name), ("parameters", f"{sum(p.numel() for p in flow.parameters()):,}"),
            ("training", f"{len(history.train)} epochs, {history.steps} steps, {history.seconds:.0f} s "
                         f"(stopped: {history.stopped})"),
            ("test log-likelihood (flow)", f"{lp.mean():.4f} ± {lp.std() / math.sqrt(n):.4f} nats")]
    if toy.has_log_prob:
        true = toy.log_prob(test.double())
        gap = true - lp
        rows += [("true log-likelihood", f"{true.mean():.4f} nats (exact density, same {n} test points)"),
                 ("gap = KL(data || flow) estimate",
                  f"{gap.mean():.4f} ± {gap.std() / math.sqrt(n):.4f} nats")]
    for key, value in rows[3:]:
        print(f"  {key:32s} {value}")
    rows.append(("command", "torchnf " + shlex.join(args.argv)))
    os.makedirs(args.out, exist_ok=True)
    images = {
        "data vs flow samples": plotting.plot_samples(
            test, samples, os.path.join(args.out, "data_vs_samples.png"), lim=toy.lim),
        "density": plotting.plot_density(flow, os.path.join(args.out, "density.png"), lim=toy.lim,
                                         true_log_prob=toy.log_prob if toy.has_log_prob else None,
                                         resolution=args.resolution),
        "training curves": plotting.plot_losses(history, os.path.join(args.out, "losses.png"),
                                                reference=-float(true.mean()) if toy.has_log_prob else None),
    }
    flow.save(os.path.join(args.out, "model.pt"))
    index = plotting.html_report(os.path.join(args.out, "index.html"), f"torchnf demo: {name} on {toy.name}",
                                 rows, images)
    print(f"wrote {index} with {', '.join(os.path.basename(p) for p in images.values())} and model.pt")
    return 0


# -- parser --------------------------------------------------------------------------------------
def _common_flags(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--layers", type=int, help="number of transforms (architecture default if omitted)")
        p.add_argument("--hidden", help="conditioner widths, e.g. 128,128")
        p.add_argument("--arch-arg", action="append", metavar="KEY=VALUE",
                       help="extra architecture option, e.g. bins=16 or coupling=false (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``torchnf`` command."""
    from torchnf import __version__

    parser = argparse.ArgumentParser(prog="torchnf", description="Normalizing flows from the command line.")
    parser.add_argument("--version", action="version", version=f"torchnf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="fit a flow on a toy 2-D density and write pictures",
                       description="Fit a flow to a toy 2-D density within a time budget, print its test "
                       "log-likelihood beside the true one, and write PNGs and an index.html to --out.")
    p.add_argument("--dataset", default="checkerboard",
                   help="toy density (default checkerboard): " + ", ".join(_toy_names()))
    p.add_argument("--arch", help="architecture (default: NSF if available, else MAF)")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--time-limit", type=float, default=60.0, help="training seconds (default 60)")
    p.add_argument("--epochs", type=int, help="train for this many epochs instead of a time budget")
    p.add_argument("--n-train", type=int, default=20000, help="training points (default 20000)")
    p.add_argument("--n-test", type=int, default=20000, help="test points (default 20000)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--resolution", type=int, default=200, help="density grid cells per side")
    _common_flags(p)
    p.set_defaults(func=cmd_demo, hidden="64,64")

    p = sub.add_parser("fit", help="fit a flow to a data table and save it",
                       description="Fit a flow by maximum likelihood to DATA (.npy or .csv, one row per "
                       "example) and save it; columns named by --context-columns become the context.")
    p.add_argument("data", help="data file (.npy or .csv/.txt with an optional header line)")
    p.add_argument("--arch", default="maf",
                   help="architecture name from torchnf (case-insensitive; default maf)")
    p.add_argument("--out", default="model.pt", help="where to save the model (default model.pt)")
    p.add_argument("--context-columns", help="columns used as context, e.g. 3 or 0,1 or 4:6")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs (default 100)")
    p.add_argument("--batch-size", type=int, default=256, help="minibatch size (default 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share for early stopping")
    p.add_argument("--time-limit", type=float, help="stop training after this many seconds")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="do not prepend an ActNorm layer initialised to standardise the columns")
    _common_flags(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("sample", help="draw samples from a saved flow",
                       description="Draw N samples from a saved model and write them to .npy or .csv.")
    p.add_argument("model", help="model file written by `torchnf fit` or Flow.save")
    p.add_argument("-n", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--out", default="samples.npy", help="output file, .npy or .csv (default samples.npy)")
    p.add_argument("--context", help="context vector for a conditional model, e.g. 0.5,1.0")
    p.add_argument("--batch-size", type=int, default=10000, help="samples per pass")
    _common_flags(p, model=False)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("log-prob", help="evaluate a saved flow's log-density on data",
                       description="Evaluate log p(x) (nats) of every row of DATA under a saved model.")
    p.add_argument("model", help="model file written by `torchnf fit` or Flow.save")
    p.add_argument("data", help="data file (.npy or .csv) with the model's columns")
    p.add_argument("--out", help="write the per-row log-densities here (.npy or .csv)")
    p.add_argument("--context-columns", help="context columns (default: those used by `torchnf fit`)")
    p.add_argument("--batch-size", type=int, default=10000, help="rows per pass")
    _common_flags(p, model=False)
    p.set_defaults(func=cmd_log_prob)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchnf`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version or a usage error
        return int(e.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"torchnf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        elapsed = time.perf_counter() - start
        print(f"torchnf {args.command}: interrupted after {elapsed:.0f} s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
