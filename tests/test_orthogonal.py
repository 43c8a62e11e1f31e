"""Direct tests of Householder, QRLinear and OrthogonalExp beyond the property harness:
orthogonality in float64, log-dets against slogdet for larger D, eval-time cache invalidation and
constructor errors."""

from __future__ import annotations

import pytest
import torch

import torchnf as nf
from torchnf.bijections.orthogonal import householder_matrix

D64 = torch.float64


def _perturbed(b: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    b = b.to(D64)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return b


def _eye(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=D64)


@pytest.mark.parametrize("make", [
    lambda: nf.Householder(9), lambda: nf.Householder(8, reflections=3), lambda: nf.OrthogonalExp(9),
    lambda: nf.QRLinear(7).q,
], ids=["householder-odd", "householder-few", "exp", "qr-q"])
def test_orthogonal_to_1e12_in_float64(make):
    torch.manual_seed(0)
    b = _perturbed(make(), scale=3.0)
    q = b.matrix()
    d = q.shape[0]
    assert torch.allclose(q.mT @ q, _eye(d), rtol=0, atol=1e-12)
    assert torch.allclose(q @ q.mT, _eye(d), rtol=0, atol=1e-12)
    # Every parameterisation here is a rotation (determinant +1), so it can start at the identity.
    assert abs(torch.linalg.det(q).item() - 1.0) < 1e-12


def test_householder_matrix_reflects():
    v = torch.tensor([[3.0, 4.0]], dtype=D64)
    h = householder_matrix(v)
    assert torch.allclose(h @ v[0], -v[0], atol=1e-15)  # v is flipped
    assert torch.allclose(h @ torch.tensor([4.0, -3.0], dtype=D64), torch.tensor([4.0, -3.0], dtype=D64))
    assert torch.allclose(householder_matrix(torch.zeros(1, 3, dtype=D64)), _eye(3))  # zero vector: identity


@pytest.mark.parametrize("reflections", [1, 2, 5, 6])
def test_householder_identity_at_init_any_count(reflections):
    torch.manual_seed(1)
    b = nf.Householder(5, reflections=reflections).to(D64)
    assert torch.allclose(b.matrix(), _eye(5), rtol=0, atol=1e-14)
    assert b.vectors.shape == (reflections, 5)


@pytest.mark.parametrize("make", [lambda: nf.QRLinear(32), lambda: nf.Householder(32),
                                  lambda: nf.OrthogonalExp(32)], ids=["qr", "householder", "exp"])
def test_logdet_matches_slogdet_d32(make):
    torch.manual_seed(2)
    b = _perturbed(make(), scale=0.5)
    w = b.matrix()
    sign, logdet = torch.linalg.slogdet(w)
    assert sign.item() == 1.0
    x = torch.randn(5, 32, dtype=D64)
    z, ladj = b(x)
    assert torch.allclose(ladj, logdet.expand(5), rtol=0, atol=1e-10)
    # the autograd Jacobian at one point agrees too
    jac = torch.autograd.functional.jacobian(lambda v: b(v)[0], x[0])
    assert torch.allclose(torch.linalg.slogdet(jac)[1], logdet, atol=1e-10)
    x2, ladj2 = b.inverse(z)
    assert torch.allclose(x2, x, rtol=1e-10, atol=1e-10)
    assert torch.allclose(ladj + ladj2, torch.zeros(5, dtype=D64), atol=1e-10)


def test_qr_diagonal_positive_for_extreme_raw_parameters():
    b = nf.QRLinear(4).to(D64)
    with torch.no_grad():
        b.diag.copy_(torch.tensor([-1e4, -50.0, 0.0, 1e4], dtype=D64))
        b.upper.normal_()
    r = b.triangular()
    diag = torch.diagonal(r)
    assert bool((diag > 0).all()) and bool(torch.isfinite(diag).all())
    assert torch.equal(r, r.triu())
    x = torch.randn(3, 4, dtype=D64)
    z, ladj = b(x)
    assert bool(torch.isfinite(ladj).all())
    assert torch.allclose(ladj, torch.linalg.slogdet(b.matrix())[1].expand(3), rtol=1e-12)


def test_qr_is_q_times_r():
    torch.manual_seed(3)
    b = _perturbed(nf.QRLinear(5), scale=0.7)
    assert torch.allclose(b.matrix(), b.q.matrix() @ b.triangular(), atol=1e-14)
    x = torch.randn(4, 5, dtype=D64)
    assert torch.allclose(b(x)[0], x @ b.matrix().mT + b.bias, atol=1e-13)


# -- eval-time cache ---------------------------------------------------------------------------

SMALL = [lambda: nf.Householder(4), lambda: nf.QRLinear(4), lambda: nf.OrthogonalExp(4)]


@pytest.mark.parametrize("make", SMALL, ids=["householder", "qr", "exp"])
def test_cache_used_only_in_eval_without_grad(make):
    torch.manual_seed(4)
    b = make()
    assert b.matrix() is not b.matrix()  # training mode: rebuilt every call
    b.eval()
    assert b.matrix() is not b.matrix()  # gradients enabled: rebuilt
    with torch.no_grad():
        assert b.matrix() is b.matrix()  # eval and no grad: cached


@pytest.mark.parametrize("make", SMALL, ids=["householder", "qr", "exp"])
def test_cache_invalidated_when_parameters_change(make):
    torch.manual_seed(5)
    b = make()
    x = torch.randn(6, 4)

    def outputs():
        b.eval()
        with torch.no_grad():
            return b(x)[0].clone()

    def fresh_outputs():
        b.clear_cache()
        return outputs()

    before = outputs()
    # a gradient step, in place as SGD does it (p.add_(grad, alpha=-lr))
    b.train()
    (b(x)[0] * torch.randn(6, 4)).sum().backward()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(p.grad, alpha=-0.1)
    after = outputs()
    assert not torch.allclose(after, before)
    assert torch.equal(after, fresh_outputs())
    # in-place edit under no_grad
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3)
    assert torch.equal(outputs(), fresh_outputs())
    # load_state_dict
    state = {k: v + 0.1 if v.is_floating_point() else v for k, v in b.state_dict().items()}
    b.load_state_dict(state)
    assert torch.equal(outputs(), fresh_outputs())
    # dtype change
    b.to(D64)
    x = x.to(D64)
    out = outputs()
    assert out.dtype == D64 and torch.equal(out, fresh_outputs())


def test_clear_cache_after_data_write():
    b = nf.OrthogonalExp(3).eval()
    x = torch.randn(2, 3)
    with torch.no_grad():
        b(x)
        b.weight.data.normal_()  # bypasses the version counter
        b.clear_cache()
        assert torch.allclose(b(x)[0], x @ torch.linalg.matrix_exp(
            b.weight.triu(1) - b.weight.triu(1).mT).mT, atol=1e-6)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("call, needle", [
    (lambda: nf.Householder(0), "Householder"),
    (lambda: nf.Householder(3, reflections=0), "Householder"),
    (lambda: nf.QRLinear(2.5), "QRLinear"),
    (lambda: nf.QRLinear(3, reflections=-1), "Householder"),
    (lambda: nf.OrthogonalExp(0), "OrthogonalExp"),
])
def test_bad_arguments_raise_value_error(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


def test_fast_directions():
    assert nf.Householder(2).fast_direction == "both"
    assert nf.QRLinear(2).fast_direction == "both"
    assert nf.OrthogonalExp(2).fast_direction == "both"


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(6)
    flow = nf.Flow(nf.Compose(nf.QRLinear(3), nf.Householder(3), nf.OrthogonalExp(3)))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    flow.save(tmp_path / "f.pt")
    loaded = nf.load(tmp_path / "f.pt")
    x = torch.randn(5, 3)
    assert torch.allclose(loaded.log_prob(x), flow.log_prob(x), atol=1e-6)
