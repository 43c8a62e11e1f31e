"""Core behaviour: Compose and Inverse semantics, shape and context checks, the configuration
registry behind save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import torchnf as nf
from conftest import randn
from torchnf.core import _REGISTRY, Bijection, all_finite, from_config, to_config
from torchnf.testing import perturb
from torchnf.transformers import Affine, Shift

H = (8, 8)
E = "AffineCoupling: expected"  # start of the shape and type errors of the layer under test


# -- Compose -------------------------------------------------------------------------------------


def test_compose_applies_in_order_and_sums_ladj():
    a = perturb(nf.Elementwise(Affine(), 3), seed=1).double()
    b = perturb(nf.AffineCoupling(3, hidden=H), seed=2).double()
    comp = nf.Compose(a, b)
    x = randn(5, 3)
    z, ladj = comp(x)
    za, la = a(x)
    zb, lb = b(za)
    torch.testing.assert_close(z, zb, rtol=0, atol=0)
    torch.testing.assert_close(ladj, la + lb, rtol=1e-15, atol=1e-15)
    xi, li = comp.inverse(z)
    torch.testing.assert_close(xi, a.inverse(b.inverse(z)[0])[0], rtol=0, atol=0)
    torch.testing.assert_close(li, -ladj, rtol=1e-12, atol=1e-12)
    assert len(comp) == 2 and comp[1] is b
    assert nf.Compose([a, b])[0] is a  # a list works too


def test_compose_shape_mismatch_names_both_elements():
    with pytest.raises(ValueError, match=r"Compose: element 0 \(Elementwise\) outputs events of shape \(3,\) "
                                         r"but element 1 \(AffineCoupling\) expects \(4,\)"):
        nf.Compose(nf.Elementwise(Affine(), 3), nf.AffineCoupling(4, hidden=H))


def test_compose_bad_arguments():
    with pytest.raises(ValueError, match="Compose needs at least one bijection"):
        nf.Compose()
    with pytest.raises(TypeError, match="Compose: element 1 is a Linear, not a Bijection"):
        nf.Compose(nf.Elementwise(Affine(), 3), nn.Linear(3, 3))
    parts = nf.AffineCoupling(3, context_dim=2, hidden=H), nf.AffineCoupling(3, context_dim=3, hidden=H)
    with pytest.raises(ValueError, match=r"Compose: conditional parts disagree on context_dim: \[2, 3\]"):
        nf.Compose(*parts)


def test_compose_passes_context_only_to_conditional_parts():
    free = perturb(nf.Elementwise(Affine(), 3), seed=1).double()
    cond = perturb(nf.AffineCoupling(3, context_dim=2, hidden=H), seed=2).double()
    comp = nf.Compose(free, cond, free)
    assert comp.context_dim == 2
    x, c = randn(4, 3), randn(4, 2, seed=1)
    z, ladj = comp(x, c)
    z1, l1 = free(x)
    z2, l2 = cond(z1, c)
    z3, l3 = free(z2)
    torch.testing.assert_close(z, z3, rtol=0, atol=0)
    torch.testing.assert_close(ladj, l1 + l2 + l3, rtol=1e-15, atol=1e-14)
    with pytest.raises(ValueError, match=r"Compose is conditional \(context_dim=2\)"):
        comp(x)


def test_compose_fast_direction():
    maf = nf.MaskedAutoregressive(Affine(), 3, hidden=H)
    assert maf.fast_direction == "forward"
    assert nf.Compose(maf, nf.Elementwise(Affine(), 3)).fast_direction == "forward"
    assert nf.Compose(nf.Inverse(maf), nf.Elementwise(Affine(), 3)).fast_direction == "inverse"
    assert nf.Compose(maf, nf.Inverse(maf)).fast_direction == "neither"
    assert nf.Compose(nf.Elementwise(Affine(), 3)).fast_direction == "both"


# -- Inverse -------------------------------------------------------------------------------------


def test_inverse_swaps_directions():
    maf = perturb(nf.MaskedAutoregressive(Affine(), 3, hidden=H)).double()
    inv = nf.Inverse(maf)
    x = randn(6, 3)
    for got, ref in zip(inv(x), maf.inverse(x)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for got, ref in zip(inv.inverse(x), maf(x)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert inv.fast_direction == "inverse"
    twice = nf.Inverse(inv)
    assert twice.fast_direction == "forward"
    for got, ref in zip(twice(x), maf(x)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match="Inverse: expected a Bijection, got Linear"):
        nf.Inverse(nn.Linear(2, 2))


def test_inverse_keeps_the_context():
    cond = perturb(nf.AffineCoupling(3, context_dim=2, hidden=H)).double()
    inv = nf.Inverse(cond)
    assert inv.context_dim == 2
    with pytest.raises(ValueError, match=r"Inverse is conditional \(context_dim=2\)"):
        inv(randn(3))


# -- shape and context checks --------------------------------------------------------------------


def test_shape_errors_name_the_class_and_shapes():
    b = nf.AffineCoupling(3, hidden=H)
    with pytest.raises(ValueError, match=E + r" input of shape \(\*batch, 3\), got \(5, 4\)"):
        b(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=E + r" input of shape \(\*batch, 3\), got \(\)"):
        b.inverse(torch.zeros(()))
    with pytest.raises(TypeError, match=E + " a floating-point input, got dtype torch.int64"):
        b(torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=E + " the input to be a torch.Tensor, got list"):
        b([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"AffineCoupling: context_dim must be an integer >= 0, got -1"):
        nf.AffineCoupling(3, context_dim=-1)
    with pytest.raises(ValueError, match=r"AffineCoupling: context_dim must be an integer >= 0, got 1.5"):
        nf.AffineCoupling(3, context_dim=1.5)  # used to be truncated to 1 silently


def test_context_checks_and_broadcasting():
    b = perturb(nf.AffineCoupling(3, context_dim=2, hidden=H)).double()
    x, c = randn(4, 3), randn(2, seed=1)
    z, ladj = b(x, c)  # one context for the whole batch
    torch.testing.assert_close(z, b(x, c.expand(4, 2))[0], rtol=0, atol=0)
    z2, ladj2 = b(x[0], randn(5, 2, seed=2))  # one event, many contexts
    assert z2.shape == (5, 3) and ladj2.shape == (5,)
    z3, _ = b(randn(6, 1, 3), randn(4, 2, seed=3))  # (6, 1) with (4,) -> (6, 4)
    assert z3.shape == (6, 4, 3)
    with pytest.raises(ValueError, match=E + r" context of shape \(\*batch, 2\), got \(4, 3\)"):
        b(x, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"AffineCoupling: context batch shape \(3,\) does not broadcast"):
        b(x, torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=E + " context to be a torch.Tensor, got list"):
        b(x, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"AffineCoupling is unconditional \(context_dim=0\)"):
        nf.AffineCoupling(3, hidden=H)(x.float(), torch.zeros(4, 2))


# -- configuration registry ----------------------------------------------------------------------


def test_config_round_trips_through_json():
    arch = nf.RealNVP(3, context_dim=2, layers=3, hidden=(16, 8), scale_bound=2.5)
    cfg = to_config(arch)
    rebuilt = from_config(json.loads(json.dumps(cfg)))
    assert type(rebuilt) is nf.RealNVP and to_config(rebuilt) == cfg
    assert [type(b) for b in rebuilt] == [type(b) for b in arch]
    rebuilt.load_state_dict(arch.state_dict())
    custom = nf.Compose(nf.Coupling(Shift(), torch.tensor([True, False, True]), hidden=H),
                        nf.MaskedAutoregressive(Affine(1.5), 3, order=[2, 0, 1], hidden=H))
    again = from_config(json.loads(json.dumps(to_config(custom))))
    assert torch.equal(again[0].mask, custom[0].mask) and torch.equal(again[1].order, custom[1].order)
    assert again[1].transformer.scale_bound == 1.5


def test_config_values():
    t = torch.tensor([1.5, 2.0], dtype=torch.float64)
    values = [(1, 2.5), {"a": t}, math.inf, torch.float16, None, "x"]
    back = from_config(json.loads(json.dumps(to_config(values))))
    assert back[0] == (1, 2.5) and back[2] == math.inf and back[3] is torch.float16
    assert back[4:] == [None, "x"]
    assert torch.equal(back[1]["a"], t) and back[1]["a"].dtype == torch.float64
    with pytest.raises(TypeError, match=r"cannot save a constructor argument of type type.*'relu'"):
        to_config(nn.ReLU)
    with pytest.raises(ValueError, match="malformed configuration entry"):
        from_config({"what": 1})


class UserShift(Bijection):
    """A bijection defined outside torchnf: registered under ``module:qualname``."""

    def __init__(self, dim: int, shift: float = 1.0) -> None:
        super().__init__((dim,))
        self.shift = shift

    def _forward(self, x, context):
        return x - self.shift, x.new_zeros(x.shape[:-1])

    def _inverse(self, z, context):
        return z + self.shift, z.new_zeros(z.shape[:-1])


def test_user_components_save_and_load(tmp_path):
    key = f"{__name__}:UserShift"
    assert _REGISTRY[key] is UserShift
    flow = nf.Flow(nf.Compose(UserShift(2, shift=0.5), nf.AffineCoupling(2, hidden=H)))
    flow.save(tmp_path / "f.pt")
    x = randn(3, 2, dtype=torch.float32)
    torch.testing.assert_close(nf.load(tmp_path / "f.pt").log_prob(x), flow.log_prob(x), rtol=0, atol=0)


def test_unknown_component_on_load_raises_key_error_naming_it(tmp_path, monkeypatch):
    flow = nf.Flow(nf.Compose(UserShift(2), nf.AffineCoupling(2, hidden=H)))
    flow.save(tmp_path / "f.pt")
    monkeypatch.delitem(_REGISTRY, f"{__name__}:UserShift")
    with pytest.raises(KeyError, match=rf"unknown component '{__name__}:UserShift'.*import the module"):
        nf.load(tmp_path / "f.pt")
    with pytest.raises(KeyError, match="unknown component 'NoSuchFlow'"):
        from_config({"__class__": "NoSuchFlow", "args": [], "kwargs": {}})


def test_name_collisions_raise():
    with pytest.raises(TypeError, match=r"two torchnf components are named 'Compose'"):

        class Compose(Bijection):
            __module__ = "torchnf.elsewhere"
            __qualname__ = "Compose"

    assert _REGISTRY["Compose"] is nf.Compose

    class UserShift(Bijection):  # same name in another (non-torchnf) scope is a different key
        pass

    assert _REGISTRY[f"{__name__}:test_name_collisions_raise.<locals>.UserShift"] is UserShift


@pytest.mark.parametrize("make", [
    lambda: nf.Sigmoid(0), lambda: nf.ElementwiseAffine((2, 0)), lambda: nf.MaskedAffineAutoregressive(0),
    lambda: nf.Elementwise(Affine(), 0),
])
def test_empty_event_shapes_raise(make):
    """A size-0 event used to build a layer that silently mapped nothing."""
    with pytest.raises(ValueError, match=r"every size of event_shape must be >= 1, got \("):
        make()


def test_dtype_mismatch_raises_a_clear_type_error():
    """A float64 input to a float32 bijection failed inside a matmul ('mat1 and mat2 must have the
    same dtype') or was silently promoted, depending on the layer."""
    x64 = torch.zeros(4, 3, dtype=torch.float64)
    for b in (nf.MAF(3, layers=1, hidden=H), nf.ElementwiseAffine(3),
              nf.AffineCoupling(3, context_dim=2, hidden=H)):
        ctx = torch.zeros(4, 2) if b.context_dim else None
        with pytest.raises(TypeError, match=rf"{type(b).__name__}: the input has dtype torch.float64 on "
                           "cpu but the parameters are torch.float32"):
            b(x64, ctx)
        b.double()  # .to() and friends refresh the reference
        assert b(x64, None if ctx is None else ctx.double())[0].dtype == torch.float64
        if ctx is not None:
            with pytest.raises(TypeError, match="the context has dtype torch.float32"):
                b.inverse(x64, ctx)
    assert nf.Sigmoid(3)(torch.zeros(2, 3, dtype=torch.float64))[0].dtype == torch.float64  # no parameters


def test_made_first_feature_in_the_order_depends_on_the_context():
    """Hidden units of degree 0 carry the context to the first feature (otherwise it ignores it)."""
    import torchnf as nf

    torch.manual_seed(0)
    layer = nf.MaskedAffineAutoregressive(3, context_dim=2, hidden=(16, 16), order=[2, 0, 1])
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3)
    z1, _ = layer(x, torch.zeros(2))
    z2, _ = layer(x, torch.ones(2))
    assert (z1[1] - z2[1]).abs() > 1e-4  # feature 1 is first in this order


def test_all_finite_agrees_with_isfinite_on_every_kind_of_tensor():
    g = torch.Generator().manual_seed(0)
    cases = [torch.zeros(0), torch.zeros(3, 0, dtype=torch.float64), torch.arange(5), torch.tensor([True])]
    for dtype in (torch.float32, torch.float64, torch.float16):
        big = torch.finfo(dtype).max
        for bad in (float("nan"), float("inf"), -float("inf"), big, -big, 0.0):
            t = torch.randn(37, 5, generator=g).to(dtype)
            t[11, 3] = bad
            cases += [t, t.t(), t[::2]]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t
