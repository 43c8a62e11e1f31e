"""Checks for scalar transformers and whole flows, and a grid integral of a flow's density."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.flow import Flow
from torchnf.testing.base import _Checker, _device, _fmt, _randn, _seeded, tolerances
from torchnf.transformers.base import Transformer

__all__ = ["check_transformer", "check_flow", "normalization_error"]


def _dname(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_transformer(
    transformer: Transformer,
    *,
    dtype: torch.dtype = torch.float64,
    inputs: Tensor | None = None,
    seed: int = 0,
    scale: float = 1.0,
    tol: float = 1.0,
    large_inputs: bool | None = None,
) -> None:
    r"""Check a scalar :class:`~torchnf.transformers.Transformer` with random parameters.

    For ``K = 4`` parameter vectors ``identity_params() + scale * randn`` and a grid of inputs:

    * ``forward`` and ``inverse`` return values and log-derivatives of the input's shape and dtype;
    * ``y = tau(x)`` is strictly increasing in ``x``;
    * round trips ``x -> y -> x`` and ``y -> x -> y``; ``log tau'(x) + log (tau^{-1})'(y) = 0``;
    * the log-derivatives equal ``log`` of the autograd derivatives, in both directions;
    * ``identity_params()`` gives the identity with zero log-derivative;
    * finite values and gradients (input and parameters) at ``x`` in ``{0, +-1e2, +-1e4}``.

    Args:
        transformer: the transformer under test.
        dtype: ``torch.float64`` or ``torch.float32`` (tolerances from :func:`tolerances`).
        inputs: 1-D tensor of valid inputs (for a restricted domain); default 49 points in
            ``[-6, 6]``.
        seed: seed of the random parameters.
        scale: scale of the random parameter offsets.
        tol: multiplier on the tolerances.
        large_inputs: run the extreme-input check; default: only when ``inputs`` is not given.

    Raises:
        AssertionError: naming the property, the largest error and the tolerance.

    Example:
        >>> from torchnf.transformers import Affine
        >>> check_transformer(Affine())
    """
    c = _Checker(f"check_transformer[{type(transformer).__name__}, {_dname(dtype)}]")
    t = tolerances(dtype, tol)
    g = torch.Generator().manual_seed(seed)
    pshape = tuple(transformer.param_shape)
    x = torch.linspace(-6, 6, 49, dtype=dtype) if inputs is None else inputs.detach().to(dtype).flatten()
    x = x.sort().values
    identity = transformer.identity_params().to(dtype)
    params = identity + scale * torch.randn(4, *pshape, generator=g, dtype=dtype)
    X = x.expand(4, -1).contiguous()
    P = params[:, None].expand(4, x.numel(), *pshape)

    Xg = X.clone().requires_grad_(True)
    y, ld = transformer.forward(Xg, P)
    for what, v in (("forward output", y), ("forward log-derivative", ld)):
        c.true(v.shape == X.shape and v.dtype == dtype, "shapes and dtypes",
               f"{what}: {_fmt(v.shape)} {v.dtype}, expected {_fmt(X.shape)} {dtype}")
    (dy,) = torch.autograd.grad(y.sum(), Xg)
    y, ld = y.detach(), ld.detach()
    steps = y.diff(dim=-1)
    if not bool((steps > 0).all()):
        k, i = divmod(int(steps.flatten().argmin()), steps.shape[-1])
        c.fail("strictly increasing", f"tau({x[i + 1].item():.4g}) - tau({x[i].item():.4g}) = "
               f"{steps[k, i].item():.3g} <= 0 for parameters {params[k].flatten().tolist()}")
    c.close("log-derivative vs autograd (forward)", ld, dy.log(), t["jac"], t["jac"])

    Yg = y.clone().requires_grad_(True)
    x2, ild = transformer.inverse(Yg, P)
    (dx,) = torch.autograd.grad(x2.sum(), Yg)
    c.close("round trip x -> y -> x", x2.detach(), X, t["rtol"], t["atol"])
    c.close("log-derivatives cancel", ld + ild.detach(), torch.zeros_like(ld), 0.0, t["cancel"])
    c.close("log-derivative vs autograd (inverse)", ild.detach(), dx.log(), t["jac"], t["jac"])
    with torch.no_grad():
        y2 = transformer.forward(x2, P)[0]
        c.close("round trip y -> x -> y", y2, y, t["rtol"], t["atol"])
        yi, ldi = transformer.forward(X, identity.expand(*X.shape, *pshape))
    c.close("identity at identity_params()", yi, X, t["rtol"], t["atol"])
    c.close("identity at identity_params()", ldi, torch.zeros_like(ldi), 0.0, t["atol"], "log-derivative")

    if large_inputs if large_inputs is not None else inputs is None:
        prop = "finite values and gradients at extreme inputs"
        xe = torch.tensor([-1e4, -1e2, 0.0, 1e2, 1e4], dtype=dtype).expand(4, -1).clone().requires_grad_(True)
        pe = params.clone().requires_grad_(True)
        pexp = pe[:, None].expand(4, 5, *pshape)
        ye, lde = transformer.forward(xe, pexp)
        ze = ye.detach().requires_grad_(True)
        xe2, ilde = transformer.inverse(ze, pexp)
        for what, v in (("forward output", ye), ("forward log-derivative", lde), ("inverse output", xe2),
                        ("inverse log-derivative", ilde)):
            c.finite(prop, v, what)
        (ye.sum() + lde.sum() + xe2.sum() + ilde.sum()).backward()
        for what, v in (("gradient w.r.t. x", xe.grad), ("gradient w.r.t. y", ze.grad),
                        ("gradient w.r.t. the parameters", pe.grad)):
            c.finite(prop, v, what)


def check_flow(
    flow: Flow,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    tol: float = 1.0,
) -> None:
    """Check a :class:`~torchnf.Flow` (on a deep copy cast to ``dtype``).

    * ``sample`` shapes for an int and a tuple shape and, for a conditional flow, with a single
      ``(context_dim,)`` context and a batch ``(B, context_dim)`` of contexts (giving
      ``(*shape, B, *event_shape)``); samples are finite and of the right dtype;
    * ``sample_and_log_prob`` returns the same samples' ``log_prob`` (in ``eval()``), tolerance
      ``tolerances(dtype)["jac"]`` relative and absolute;
    * ``rsample`` and ``log_prob`` give finite parameter gradients, at least one non-zero.

    Raises:
        AssertionError: naming the property, the shapes or the largest error.

    Example:
        >>> import torchnf as nf
        >>> check_flow(nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,))))
    """
    c = _Checker(f"check_flow[{type(flow.bijection).__name__}, {_dname(dtype)}]")
    t = tolerances(dtype, tol)
    flow = copy.deepcopy(flow).to(dtype)
    g = torch.Generator().manual_seed(seed)
    device, ev, cdim = _device(flow), tuple(flow.event_shape), flow.context_dim
    one = _randn((cdim,), dtype, g, device) if cdim else None
    many = _randn((3, cdim), dtype, g, device) if cdim else None
    calls: list[tuple[object, Tensor | None, tuple[int, ...]]] = [(4, one, (4,)), ((2, 3), one, (2, 3))]
    if cdim:
        calls += [(2, many, (2, 3)), ((), many, (3,))]
    flow.eval()
    with _seeded(seed):
        for shape, ctx, batch in calls:
            where = f"sample({shape!r}) with context {'none' if ctx is None else _fmt(ctx.shape)}"
            x = flow.sample(shape, context=ctx)
            c.true(x.shape == (*batch, *ev) and x.dtype == dtype, "sample shapes",
                   f"{where}: got {_fmt(x.shape)} {x.dtype}, expected {_fmt((*batch, *ev))} {dtype}")
            c.finite("sample shapes", x, where)
            xs, lp = flow.sample_and_log_prob(shape, context=ctx)
            c.true(lp.shape == batch, "sample_and_log_prob shapes", f"{where}: log_prob {_fmt(lp.shape)}")
            with torch.no_grad():
                ref = flow.log_prob(xs, ctx)
            c.close("sample_and_log_prob agrees with log_prob", lp, ref, t["jac"], t["jac"], where)
        flow.train()
        for how in ("rsample", "log_prob"):
            flow.zero_grad()
            if how == "rsample":
                out = flow.rsample(6, context=one)
            else:
                out = flow.log_prob(flow.sample(6, context=one), one)
            out.sum().backward()
            grads = [(n, p.grad) for n, p in flow.named_parameters() if p.grad is not None]
            c.true(bool(grads) or not any(True for _ in flow.parameters()), f"{how} gradients",
                   "no parameter received a gradient")
            for name, grad in grads:
                c.finite(f"{how} gradients", grad, f"gradient of {name}")
            c.true(not grads or any(bool(gr.abs().sum() > 0) for _, gr in grads), f"{how} gradients",
                   "every parameter gradient is zero")


def normalization_error(
    flow: Flow,
    lo: float | Sequence[float],
    hi: float | Sequence[float],
    n: int = 400,
    context: Tensor | None = None,
    chunk: int = 65536,
) -> float:
    r"""``\\int exp(log_prob) - 1`` by the midpoint rule on ``n`` cells per axis of ``[lo, hi]^d``.

    For flows over 1-D or 2-D vectors. The error of the rule is ``O(h^2)`` for a smooth density,
    plus the mass outside the box; a normalised flow gives a result near 0.

    Args:
        flow: a flow with ``event_shape`` ``(1,)`` or ``(2,)``.
        lo, hi: box bounds, scalars or one per axis.
        n: cells per axis.
        context: one ``(context_dim,)`` context for a conditional flow.
        chunk: points per ``log_prob`` call.

    Returns:
        The signed error ``integral - 1`` as a Python float.

    Example:
        >>> import torchnf as nf
        >>> abs(normalization_error(nf.Flow(nf.MAF(1, layers=1, hidden=(4,))), -8, 8)) < 1e-3
        True
    """
    if len(flow.event_shape) != 1 or flow.event_shape[0] not in (1, 2):
        raise ValueError(f"normalization_error: expected a flow over (1,) or (2,) vectors, got event shape "
                         f"{_fmt(flow.event_shape)}")
    d = flow.event_shape[0]
    ref = next(iter(flow.parameters()), None)
    ref = ref if ref is not None else next(iter(flow.buffers()))
    lo_t = torch.as_tensor(lo, dtype=ref.dtype).expand(d)
    hi_t = torch.as_tensor(hi, dtype=ref.dtype).expand(d)
    h = (hi_t - lo_t) / n
    axes = [lo_t[i] + h[i] * (torch.arange(n, dtype=ref.dtype) + 0.5) for i in range(d)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d).to(ref.device)
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for part in pts.split(chunk):
            total += flow.log_prob(part, context).double().exp().sum().cpu()
    return float(total * math.prod(h.double().tolist())) - 1.0
