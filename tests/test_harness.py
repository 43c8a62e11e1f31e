"""Every registered bijection and architecture through the property harness (``torchnf.testing``).

Cases live in ``tests/cases/<family>.py``; each case runs in float64 (tight tolerances) and float32,
with a context when its bijection is conditional. The ``torch.compile`` test is slow and opt-in.
A case module may also define ``TRANSFORMERS: list[tuple[name, make, options]]``: scalar
transformers run through ``check_transformer(make(), dtype=..., **options)``.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import Tensor, nn

import cases
import torchnf as nf
from cases import all_cases
from torchnf.core import Bijection
from torchnf.testing import Case, check_bijection, check_compiled, check_flow, check_transformer
from torchnf.transformers import Affine, Shift

CASES = all_cases()


def _transformer_cases() -> list:
    out = []
    for info in sorted(pkgutil.iter_modules(cases.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"cases.{info.name}")
        for name, make, options in getattr(module, "TRANSFORMERS", []):
            out.append(pytest.param(make, options, id=name))
    return out


def _param(case):
    """A known failure of library code (``case.extra["xfail"]``: the reason) is a strict xfail, so
    the suite stays green and flags the fix."""
    reason = case.extra.get("xfail")
    marks = [pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError)] if reason else []
    return pytest.param(case, marks=marks, id=case.name)


DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def test_case_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bijection_properties(case, dtype):
    check_bijection(case, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, options", _transformer_cases())
def test_transformer_properties(make, options, dtype):
    check_transformer(make(), dtype=dtype, **options)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.compile], ids=lambda c: c.name)
def test_compiled_matches_eager(case):
    check_compiled(case, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# The harness itself: each deliberately broken bijection must fail the property it breaks.
# --------------------------------------------------------------------------------------------


class _Scale(Bijection):
    """``z = x * exp(a)`` elementwise: a correct reference the broken variants below modify."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__((dim,))
        self.a = nn.Parameter(torch.zeros(dim))

    def scale(self, x: Tensor) -> Tensor:
        return self.a.exp()

    def ladj(self, x: Tensor) -> Tensor:
        return self.scale(x).log().sum(-1).expand(x.shape[:-1])

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x * self.scale(x), self.ladj(x)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z / self.scale(z), -self.ladj(z)


class _WrongLadj(_Scale):
    def ladj(self, x: Tensor) -> Tensor:
        return 2 * super().ladj(x)  # cancels between directions, yet wrong


class _BadInverse(_Scale):
    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z / self.scale(z) + 1e-6, -self.ladj(z)


class _LadjWithEventDim(_Scale):
    def ladj(self, x: Tensor) -> Tensor:
        return self.a.expand(x.shape)


class _BatchDependent(_Scale):
    def scale(self, x: Tensor) -> Tensor:
        return self.a.exp() * (1 + 0.01 * x[..., 0].numel())


class _TrainEvalDiffer(_Scale):
    def scale(self, x: Tensor) -> Tensor:
        return self.a.exp() * (1.5 if self.training else 1.0)


class _UnusedParameter(_Scale):
    def __init__(self, dim: int = 3) -> None:
        super().__init__(dim)
        self.unused = nn.Parameter(torch.zeros(dim))


class _RandomBuffer(_Scale):
    def __init__(self, dim: int = 3) -> None:
        super().__init__(dim)
        self.register_buffer("b", torch.rand(dim) + 0.5, persistent=False)  # not saved, not seeded

    def scale(self, x: Tensor) -> Tensor:
        return self.a.exp() * self.b


class _ModuleArgument(_Scale):
    def __init__(self, dim: int = 3, activation: type = nn.ReLU) -> None:
        super().__init__(dim)


class _Sinh(_Scale):
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return torch.sinh(x), torch.cosh(x).log().sum(-1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return torch.asinh(z), -torch.cosh(torch.asinh(z)).log().sum(-1)


class _Linear(Bijection):
    """``z = W x`` with ``W`` upper triangular: not a coupling in ``mask``, not autoregressive in
    ``order``, not elementwise; not the identity."""

    def __init__(self) -> None:
        super().__init__((2,))
        self.w = nn.Parameter(torch.tensor([[1.0, 0.5], [0.0, 2.0]]))
        self.register_buffer("mask", torch.tensor([False, True]), persistent=False)
        self.register_buffer("order", torch.tensor([0, 1]), persistent=False)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x @ self.w.T, torch.linalg.slogdet(self.w)[1].expand(x.shape[:-1])

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = torch.linalg.solve(self.w, z.unsqueeze(-1)).squeeze(-1)
        return x, -torch.linalg.slogdet(self.w)[1].expand(z.shape[:-1])


class _IgnoresContext(_Scale):
    def __init__(self, dim: int = 3) -> None:
        Bijection.__init__(self, (dim,), context_dim=2)
        self.a = nn.Parameter(torch.zeros(dim))


class _BiasedEstimator(_Scale):
    def ladj(self, x: Tensor) -> Tensor:
        exact = super().ladj(x)
        return exact + 0.5 + 0.1 * torch.randn_like(exact) if self.training else exact


BROKEN = [
    (_WrongLadj, {}, r"\(4\) ladj vs autograd Jacobian"),
    (_BadInverse, {}, r"\(2\) round trip x -> z -> x"),
    (_LadjWithEventDim, {}, r"\(1\) shapes and dtypes: forward ladj has shape \(3,\), expected \(\)"),
    (_BatchDependent, {"identity_at_init": False}, r"\(8\) batched equals row by row"),
    (_TrainEvalDiffer, {"identity_at_init": False}, r"\(10\) train and eval agree"),
    (_UnusedParameter, {}, r"\(7\) parameter gradients through Flow.log_prob: parameter unused"),
    (_RandomBuffer, {"identity_at_init": False}, r"\(10\) state_dict round trip"),
    (lambda: _ModuleArgument(3, nn.ReLU), {}, r"\(10\) save/load via to_config/from_config: TypeError"),
    (_Sinh, {"perturb": 0.0, "identity_at_init": False}, r"\(6\) finite values and gradients at \|x\| = 1e4"),
    (_Linear, {"identity_at_init": True}, r"\(9\) identity at initialisation"),
    (_Linear, {"structure": "coupling", "identity_at_init": False, "perturb": 0.0},
     r"\(5\) coupling Jacobian structure: .*rows of the untouched features \[0\]"),
    (_Linear, {"structure": "autoregressive", "identity_at_init": False, "perturb": 0.0},
     r"\(5\) autoregressive Jacobian structure: d out\[0\] / d in\[1\] = 0.5"),
    (_Linear, {"structure": "elementwise", "identity_at_init": False, "perturb": 0.0},
     r"\(5\) elementwise Jacobian structure"),
    (_IgnoresContext, {}, r"\(8\) context changes the output"),
    (_BiasedEstimator, {"stochastic": True}, r"stochastic ladj estimator is unbiased"),
]


@pytest.mark.parametrize("make, options, message", BROKEN, ids=[m[:24] for _, _, m in BROKEN])
def test_harness_detects(make, options, message):
    case = Case("broken", make, **options)
    with pytest.raises(AssertionError, match=message):
        check_bijection(case)
    if make is not _BadInverse:  # 1e-6 is below the float32 tolerance
        with pytest.raises(AssertionError, match=message):
            check_bijection(case, dtype=torch.float32)


def test_harness_passes_a_correct_user_bijection():
    check_bijection(_Scale(4), structure="elementwise", identity_at_init=True)
    check_bijection(_Scale(4), dtype=torch.float32, structure="elementwise")
    with pytest.raises(ValueError, match="unknown structure 'unknown'"):
        check_bijection(_Scale(4), structure="unknown")


def test_harness_moves_to_the_requested_device():
    check_bijection(nf.Compose(_Scale(3), nf.AffineCoupling(3, hidden=(8,))), device="cpu")


def test_harness_leaves_global_rng_alone():
    state = torch.get_rng_state()
    check_bijection(_Scale(3))
    assert torch.equal(state, torch.get_rng_state())


class _Decreasing(Shift):
    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0] - x, torch.zeros_like(x)


class _WrongDerivative(Affine):
    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        y, ld = super().forward(x, params)
        return y, 1.01 * ld


class _NotIdentity(Shift):
    def identity_params(self) -> Tensor:
        return torch.ones(1)


@pytest.mark.parametrize("transformer, message", [
    (_Decreasing(), "strictly increasing"),
    (_WrongDerivative(), r"log-derivative vs autograd \(forward\)"),
    (_NotIdentity(), r"identity at identity_params\(\)"),
])
def test_check_transformer_detects(transformer, message):
    with pytest.raises(AssertionError, match=message):
        check_transformer(transformer)


def test_check_flow_accepts_core_flows():
    for dtype in (torch.float64, torch.float32):
        check_flow(nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,))), dtype=dtype)
        check_flow(nf.Flow(nf.MAF(3, context_dim=2, layers=2, hidden=(8,))), dtype=dtype)
        check_flow(nf.Flow(nf.IAF(2, layers=2, hidden=(8,)), base=nf.DiagonalNormal(2)), dtype=dtype)


class _InverseLadjSign(_Scale):
    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z / self.scale(z), self.ladj(z)


def test_check_flow_detects_inconsistent_sample_and_log_prob():
    b = _InverseLadjSign(2)
    with torch.no_grad():
        b.a.fill_(0.5)
    with pytest.raises(AssertionError, match="sample_and_log_prob agrees with log_prob"):
        check_flow(nf.Flow(b))
