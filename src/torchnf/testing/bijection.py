"""``check_bijection`` and ``check_compiled``: the DESIGN properties, run on one bijection."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.core import Bijection, Inverse, from_config, to_config
from torchnf.testing.base import (
    BATCH_SHAPES,
    Case,
    _as_case,
    _attr,
    _Checker,
    _device,
    _fmt,
    _jacobian,
    _randn,
    _seeded,
    perturb,
    tolerances,
)

__all__ = ["check_bijection", "check_compiled"]


# --------------------------------------------------------------------------------------------
# check_bijection
# --------------------------------------------------------------------------------------------


class _Run:
    """State of one ``check_bijection`` run: the bijection under test, inputs and tolerances."""

    def __init__(self, case: Case, dtype: torch.dtype, seed: int,
                 device: torch.device | str | None = None) -> None:
        self.case, self.dtype, self.seed, self.target = case, dtype, seed, device
        self.c = _Checker(f"check_bijection[{case.name}, {str(dtype).removeprefix('torch.')}]")
        self.tol = tolerances(dtype, case.tol)
        self.g = torch.Generator().manual_seed(seed)
        self.b = self.build(seed)
        self.device = _device(self.b)
        self.name = type(self.b).__name__
        self.cdim = self.b.context_dim

    def build(self, seed: int) -> Bijection:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            b = self.case.make()
        if not isinstance(b, Bijection):
            self.c.fail("(0) build", f"make() returned a {type(b).__name__}, not a Bijection")
        return b.to(self.dtype) if self.target is None else b.to(self.target, self.dtype)

    def x(self, batch: Sequence[int]) -> Tensor:
        batch = torch.Size(batch)
        if self.case.inputs is not None:
            with torch.random.fork_rng(devices=[]):
                x = self.case.inputs(batch, self.dtype, self.g)
            return x.to(self.device, self.dtype)
        return _randn((*batch, *self.b.event_shape), self.dtype, self.g, self.device)

    def ctx(self, batch: Sequence[int]) -> Tensor | None:
        return _randn((*batch, self.cdim), self.dtype, self.g, self.device) if self.cdim else None

    def both(self, b: Bijection, x: Tensor, ctx: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``z, ladj = b(x)`` and ``x2, ladj2 = b.inverse(z)``."""
        z, ladj = b(x, ctx)
        x2, ladj2 = b.inverse(z, ctx)
        return z, ladj, x2, ladj2

    def same_outputs(self, prop: str, other: Bijection, x: Tensor, ctx: Tensor | None) -> None:
        """``other`` maps ``x`` (both directions) as the bijection under test does."""
        with torch.no_grad():
            ref, got = self.both(self.b, x, ctx), self.both(other, x, ctx)
        for what, r, o in zip(("z", "forward ladj", "inverse x", "inverse ladj"), ref, got):
            self.c.close(prop, o, r, self.tol["rtol"], self.tol["atol"], what)

    # (9) -------------------------------------------------------------------------------------
    def identity(self) -> None:
        prop = "(9) identity at initialisation"
        x, ctx = self.x((7,)), self.ctx((7,))
        with torch.no_grad():
            z, ladj, x2, ladj2 = self.both(self.b, x, ctx)
        for what, a, e in (("z", z, x), ("forward ladj", ladj, torch.zeros_like(ladj)),
                           ("inverse ladj", ladj2, torch.zeros_like(ladj2))):
            self.c.close(prop, a, e, self.tol["rtol"], self.tol["atol"], f"{what}, batch (7,)")

    # (1)-(3), (8) batched vs row by row ---------------------------------------------------
    def round_trips(self) -> None:
        t = self.tol
        for batch in BATCH_SHAPES:
            where = f"batch shape {_fmt(batch)}"
            x, ctx = self.x(batch), self.ctx(batch)
            with torch.no_grad():
                z, ladj, x2, ladj2 = self.both(self.b, x, ctx)
                zz = self.b(self.x(batch), ctx)[0]
                x3, ladj3 = self.b.inverse(zz, ctx)
                z3, ladj4 = self.b(x3, ctx)
            self.shapes(batch, x, z, ladj, x2, ladj2)
            self.c.close("(2) round trip x -> z -> x", x2, x, t["rtol"], t["atol"], where)
            self.c.close("(2) round trip z -> x -> z", z3, zz, t["rtol"], t["atol"], where)
            self.c.close("(3) forward and inverse ladj cancel", ladj + ladj2, torch.zeros_like(ladj),
                         0.0, t["cancel"] * (1 + float(ladj.abs().max()) if ladj.numel() else 1), where)
            self.c.close("(3) inverse and forward ladj cancel", ladj3 + ladj4, torch.zeros_like(ladj3),
                         0.0, t["cancel"] * (1 + float(ladj3.abs().max()) if ladj3.numel() else 1), where)
        # batched equals row by row
        x, ctx = self.x((4,)), self.ctx((4,))
        with torch.no_grad():
            full = self.both(self.b, x, ctx)
            rows = [self.both(self.b, x[i], None if ctx is None else ctx[i]) for i in range(4)]
        for k, what in enumerate(("z", "forward ladj", "inverse x", "inverse ladj")):
            self.c.close("(8) batched equals row by row", full[k], torch.stack([r[k] for r in rows]),
                         t["rtol"], t["atol"], what)

    def shapes(self, batch: Sequence[int], x: Tensor, z: Tensor, ladj: Tensor, x2: Tensor,
               ladj2: Tensor) -> None:
        prop, where = "(1) shapes and dtypes", f"batch shape {_fmt(batch)}"
        b = self.b
        for what, t, shape in (("z", z, (*batch, *b.out_event_shape)), ("forward ladj", ladj, batch),
                               ("inverse x", x2, (*batch, *b.event_shape)), ("inverse ladj", ladj2, batch)):
            self.c.true(t.shape == torch.Size(shape), prop,
                        f"{what} has shape {_fmt(t.shape)}, expected {_fmt(shape)} at {where}")
            self.c.true(t.dtype == self.dtype, prop,
                        f"{what} has dtype {t.dtype}, expected {self.dtype} at {where}")
            self.c.true(t.device == x.device, prop, f"{what} is on {t.device}, input on {x.device}")

    # (4), (5) --------------------------------------------------------------------------------
    def jacobians(self) -> None:
        b, t = self.b, self.tol
        x, ctx = self.x((3,)), self.ctx((3,))
        with torch.no_grad():
            z = b(x, ctx)[0]
        for i in range(x.shape[0]):
            ci = None if ctx is None else ctx[i]
            for direction, fn, point in (("forward", b.forward, x[i]), ("inverse", b.inverse, z[i])):
                where = f"{direction} direction, point {i}"
                jac = _jacobian(lambda v, fn=fn, ci=ci: fn(v, ci)[0], point)
                with torch.no_grad():
                    ladj = fn(point, ci)[1]
                self.c.true(jac.shape[0] == jac.shape[1], "(4) ladj vs autograd Jacobian",
                            f"Jacobian is {tuple(jac.shape)}, not square")
                sign, logdet = torch.linalg.slogdet(jac)
                self.c.true(bool(sign != 0), "(4) ladj vs autograd Jacobian", f"singular Jacobian at {where}")
                self.c.close("(4) ladj vs autograd Jacobian", ladj, logdet, t["jac"], t["jac"], where)
                if self.case.structure:
                    self.structure(jac, where)

    def structure(self, jac: Tensor, where: str) -> None:
        kind, n = self.case.structure, jac.shape[0]
        prop = f"(5) {kind} Jacobian structure"
        eye = torch.eye(n, dtype=torch.bool, device=jac.device)
        if kind == "elementwise":
            must_zero = ~eye
        elif kind == "coupling":
            mask = _attr(self.b, "mask")
            self.c.true(mask is not None, prop, f"{self.name} has no `mask` attribute")
            keep = ~mask.to(jac.device).bool().flatten()
            self.c.close(prop, jac[keep], eye[keep].to(jac.dtype), 0.0, self.tol["zero"],
                         f"rows of the untouched features {keep.nonzero().flatten().tolist()}, {where}")
            return
        elif kind == "autoregressive":
            order = _attr(self.b, "order")
            self.c.true(order is not None, prop, f"{self.name} has no `order` attribute")
            order = order.to(jac.device).flatten()
            must_zero = order[None, :] > order[:, None]  # d out_i / d in_j with j after i in the order
        else:
            raise ValueError(f"Case {self.case.name}: unknown structure {kind!r}; expected "
                             "'coupling', 'autoregressive' or 'elementwise'")
        bad = jac.abs() * must_zero
        if bool((bad > self.tol["zero"]).any()):
            i, j = divmod(int(bad.flatten().argmax()), n)
            self.c.fail(prop, f"d out[{i}] / d in[{j}] = {jac[i, j].item():.3g} should be 0 "
                        f"(tolerance {self.tol['zero']:.1g}), {where}")

    # (6) -------------------------------------------------------------------------------------
    def large_inputs(self) -> None:
        prop = "(6) finite values and gradients at |x| = 1e4"
        b = copy.deepcopy(self.b)
        x = self.x((6,))
        x = (torch.where(x >= 0, 1.0, -1.0) * 1e4).to(x).requires_grad_(True)
        ctx = self.ctx((6,))
        z, ladj = b(x, ctx)
        self.c.finite(prop, z, "forward output")
        self.c.finite(prop, ladj, "forward ladj")
        zi = z.detach().requires_grad_(True)
        x2, ladj2 = b.inverse(zi, ctx)
        self.c.finite(prop, x2, "inverse output (at the forward image)")
        self.c.finite(prop, ladj2, "inverse ladj (at the forward image)")
        (z.sum() + ladj.sum() + x2.sum() + ladj2.sum()).backward()
        self.c.finite(prop, x.grad, "gradient w.r.t. x")
        self.c.finite(prop, zi.grad, "gradient w.r.t. z")
        for name, p in b.named_parameters():
            self.c.finite(prop, p.grad, f"gradient of parameter {name}")

    # (7) -------------------------------------------------------------------------------------
    def gradients(self) -> None:
        from torchnf.flow import Flow

        skip = set(self.case.extra.get("no_grad_ok", ()))
        if not any(p.requires_grad for p in self.b.parameters()):
            return  # nothing to train (fixed maps, a fitted SINF): no parameter gradient to check
        for how in ("log_prob", "rsample"):
            prop = f"(7) parameter gradients through Flow.{how}"
            b = copy.deepcopy(self.b).train()  # gradients matter in training mode
            flow = Flow(b).to(self.device, self.dtype)
            ctx = self.ctx((7,))
            if how == "log_prob":
                out = flow.log_prob(self.x((7,)), ctx)
            else:
                out = flow.rsample(() if ctx is not None else 7, ctx)
            out.sum().backward()
            for name, p in b.named_parameters():
                if name in skip:
                    continue
                self.c.true(p.grad is not None, prop, f"parameter {name} gets no gradient")
                self.c.finite(prop, p.grad, f"gradient of parameter {name}")
                self.c.true(bool(p.grad.abs().sum() > 0), prop, f"gradient of parameter {name} is all zero")

    # (8) -------------------------------------------------------------------------------------
    def context_and_errors(self) -> None:
        b, name, t = self.b, self.name, self.tol
        x = self.x((7,))
        prop = "(8) bad input raises ValueError"
        ctx = self.ctx((7,))
        for direction, ev in (("forward", b.event_shape), ("inverse", b.out_event_shape)):
            fn = getattr(b, direction)
            bad = torch.zeros(7, *ev[:-1], ev[-1] + 1, dtype=self.dtype, device=self.device)
            self.c.raises(prop, lambda fn=fn, bad=bad: fn(bad, ctx), ValueError, name,
                          f"{direction} of shape {_fmt(bad.shape)}")
        if not self.cdim:
            c = _randn((7, 2), self.dtype, self.g, self.device)
            self.c.raises(prop, lambda: b(x, c), ValueError, name,
                          "context given to an unconditional bijection")
            return
        with torch.no_grad():
            single = self.ctx(())
            self.c.close("(8) context broadcasts", b(x, single)[0], b(x, single.expand(7, self.cdim))[0],
                         t["rtol"], t["atol"], "single (context_dim,) context vs the same context repeated")
            self.c.close("(8) context broadcasts", b(x[0], ctx)[0], b(x[0].expand_as(x), ctx)[0],
                         t["rtol"], t["atol"], "single event with a (7, context_dim) context")
            z1, z2 = b(x, ctx)[0], b(x, self.ctx((7,)))[0]
        diff = float((z1 - z2).abs().max())
        self.c.true(diff > 100 * t["atol"], "(8) context changes the output",
                    f"max |z(x, c1) - z(x, c2)| = {diff:.3g} for independent contexts")
        for direction in ("forward", "inverse"):
            fn = getattr(b, direction)
            self.c.raises(prop, lambda fn=fn: fn(x), ValueError, name, f"{direction} without context")
            wrong = _randn((7, self.cdim + 1), self.dtype, self.g, self.device)
            self.c.raises(prop, lambda fn=fn, w=wrong: fn(x, w), ValueError, name,
                          f"{direction} with context of shape {_fmt(wrong.shape)}")

    # (10) ------------------------------------------------------------------------------------
    def modes_and_copies(self) -> None:
        x, ctx = self.x((7,)), self.ctx((7,))
        if not (self.case.stochastic or self.case.eval_only):
            b2 = copy.deepcopy(self.b).eval()
            self.same_outputs("(10) train and eval agree", b2, x, ctx)
        fresh = self.build(self.seed + 1)
        try:
            fresh.load_state_dict(self.b.state_dict())
        except (RuntimeError, KeyError) as e:
            self.c.fail("(10) state_dict round trip", f"load_state_dict into a fresh build failed: {e}")
        fresh.train(self.b.training)
        self.same_outputs("(10) state_dict round trip into a fresh build", fresh, x, ctx)
        self.same_outputs("(10) Inverse(Inverse(b)) acts as b", Inverse(Inverse(self.b)), x, ctx)
        prop = "(10) save/load via to_config/from_config"
        try:
            cfg = json.loads(json.dumps(to_config(self.b)))
            rebuilt = from_config(cfg).to(self.device, self.dtype)
        except (TypeError, KeyError, ValueError) as e:
            self.c.fail(prop, f"{type(e).__name__}: {e}")
        self.c.true(type(rebuilt) is type(self.b), prop, f"rebuilt a {type(rebuilt).__name__}")
        self.c.true(to_config(rebuilt) == cfg, prop, "the rebuilt bijection has a different configuration")
        rebuilt.load_state_dict(self.b.state_dict())
        rebuilt.train(self.b.training)
        self.same_outputs(prop, rebuilt, x, ctx)

    # stochastic log-dets ---------------------------------------------------------------------
    def stochastic_mean(self, calls: int = 32, copies: int = 4) -> None:
        """Training-mode ``ladj`` averaged over ``calls`` calls on ``copies`` stacked copies of 5 points
        vs the eval-mode value; the standard error comes from the spread of the per-call means, so
        it stays valid if an estimator shares its noise across a batch."""
        prop = "(10) stochastic ladj estimator is unbiased"
        x, ctx = self.x((5,)), self.ctx((5,))
        xr = x.expand(copies, *x.shape)
        cr = None if ctx is None else ctx.expand(copies, *ctx.shape)
        with torch.no_grad():
            exact = self.b.eval()(x, ctx)[1]
            self.b.train()
            est = torch.stack([self.b(xr, cr)[1].mean(0) for _ in range(calls)])
            self.b.eval()
        mean, se = est.mean(0), est.std(0) / calls**0.5
        err = (mean - exact).abs()
        limit = 5 * se + self.tol["jac"] * (1 + exact.abs())
        if bool((err > limit).any()):
            i = int((err - limit).argmax())
            self.c.fail(prop, f"mean of {calls * copies} draws {mean[i].item():.6g} vs exact "
                        f"{exact[i].item():.6g}: error {err[i].item():.3g} > 5 standard errors "
                        f"({se[i].item():.3g})")


def check_bijection(
    bijection_or_case: Case | Bijection,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    device: torch.device | str | None = None,
    **case_options: object,
) -> None:
    """Run the DESIGN properties on a bijection; raise ``AssertionError`` on the first failure.

    Checked with batch shapes ``()``, ``(7,)``, ``(3, 5)`` and, for a conditional bijection, a
    context (tolerances from :func:`tolerances`, times ``case.tol``):

    1. output shape, dtype and device; ``ladj`` has the batch shape;
    2. round trips ``x -> z -> x`` and ``z -> x -> z``;
    3. forward and inverse ``ladj`` cancel;
    4. ``ladj`` equals ``slogdet`` of the autograd Jacobian in both directions (three points);
    5. the Jacobian structure named by ``case.structure``;
    6. finite values and gradients at ``|x| = 1e4`` (where the inputs allow it);
    7. every parameter gets a finite, non-zero gradient through ``Flow.log_prob`` and ``Flow.rsample``;
    8. batched equals row by row; context broadcasts and matters; bad shapes and a missing or
       unexpected context raise ``ValueError`` naming the class;
    9. identity at initialisation (``case.identity_at_init``);
    10. train and eval agree; ``state_dict`` round trip into a fresh build; ``Inverse(Inverse(b))``;
        ``to_config``/``from_config`` rebuilds an equal bijection (through JSON); for stochastic
        log-dets, the training-mode estimate is unbiased (mean of draws within 5 standard errors).

    Parameters are perturbed by ``case.perturb * randn`` (seeded) after the identity check, so the
    map under test is not the identity. Exactness checks of ``stochastic`` and ``eval_only`` cases
    run in ``eval()``. The global random state is left untouched.

    Args:
        bijection_or_case: a :class:`Case`, or a bijection (tested on a deep copy; not assumed to
            be at the identity).
        dtype: ``torch.float64`` (tight tolerances) or ``torch.float32``.
        seed: seed of the build, the perturbation and the inputs.
        device: device to move the bijection to (default: where ``make`` put it); inputs follow.
        **case_options: overrides of :class:`Case` fields, e.g. ``structure="coupling"``, ``tol=10``.

    Raises:
        AssertionError: naming the property, the batch shape or point, the largest error and the
            tolerance.

    Example:
        >>> import torchnf as nf
        >>> check_bijection(nf.MaskedAffineAutoregressive(3, hidden=(8, 8)), structure="autoregressive")
    """
    case = _as_case(bijection_or_case, case_options)
    with _seeded(seed):
        _check_bijection(_Run(case, dtype, seed, device))


def _check_bijection(run: _Run) -> None:
    case = run.case
    if case.stochastic or case.eval_only:
        run.b.eval()
    if case.identity_at_init:
        run.identity()
    perturb(run.b, case.perturb, generator=run.g)
    run.round_trips()
    if case.jacobian:
        run.jacobians()
    if case.extra.get("large_inputs", case.inputs is None):
        run.large_inputs()
    run.gradients()
    run.context_and_errors()
    run.modes_and_copies()
    if case.stochastic:
        run.stochastic_mean()


def check_compiled(bijection_or_case: Case | Bijection, *, dtype: torch.dtype = torch.float64,
                   seed: int = 0, device: torch.device | str | None = None,
                   **case_options: object) -> None:
    """(11) ``torch.compile(fullgraph=True)`` of ``forward`` gives the eager numbers.

    The bijection is built and perturbed as in :func:`check_bijection`, put in ``eval()``, compiled
    and called on batches of shape ``(7,)`` and ``(3, 5)`` (with a context when conditional); ``z``
    and ``ladj`` must match the eager call within the round-trip tolerances. Compilation caches are
    cleared first (``torch.compiler.reset()``), since all bijections share one ``forward``.

    Args:
        bijection_or_case: a :class:`Case` or a bijection (tested on a deep copy).
        dtype: ``torch.float64`` or ``torch.float32``.
        seed: seed of the build, the perturbation and the inputs.
        device: device to move the bijection to (default: where ``make`` put it).
        **case_options: overrides of :class:`Case` fields.

    Raises:
        AssertionError: when the compiled numbers differ; ``torch.compile`` errors (graph breaks
            under ``fullgraph=True``) propagate unchanged.

    Example:
        >>> import torchnf as nf
        >>> check_compiled(nf.AffineCoupling(3, hidden=(8,)), dtype=torch.float32)  # doctest: +SKIP
    """
    case = _as_case(bijection_or_case, case_options)
    run = _Run(case, dtype, seed, device)
    perturb(run.b, case.perturb, generator=run.g)
    run.b.eval()
    # Every bijection shares Bijection.forward's code object: start from empty compile caches so
    # that earlier checks do not count against this one's recompile limit.
    torch.compiler.reset()
    compiled = torch.compile(run.b, fullgraph=True)
    for batch in BATCH_SHAPES[1:]:
        x, ctx = run.x(batch), run.ctx(batch)
        with torch.no_grad(), _seeded(seed):
            ref = run.b(x, ctx)
        with torch.no_grad(), _seeded(seed):
            got = compiled(x, ctx)
        for what, r, o in zip(("z", "ladj"), ref, got):
            run.c.close("(11) torch.compile(fullgraph=True) agrees", o, r, run.tol["rtol"], run.tol["atol"],
                        f"{what}, batch shape {_fmt(batch)}")
