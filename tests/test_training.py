"""Tests of torchnf.fit: convergence, early stopping, recovery, checkpoints, weights, bad input."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch

import torchnf as nf
from torchnf.training import History, fit

LOG_2PI = math.log(2 * math.pi)


def small_flow(dim: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0) -> nf.Flow:
    torch.manual_seed(seed)
    return nf.Flow(nf.RealNVP(dim, layers=2, hidden=(8, 8))).to(dtype)


def gaussian(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (z @ torch.tensor([[1.2, 0.0], [0.6, 0.5]], dtype=torch.float64) + torch.tensor([1.0, -2.0],
            dtype=torch.float64)).to(dtype)


def val_nll(flow: nf.Flow, x: torch.Tensor, context: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        return float(-flow.log_prob(x, context).double().mean())


def state(flow: nf.Flow) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in flow.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------


def test_fit_lowers_validation_nll_on_a_2d_gaussian():
    # x = A z + b with A = [[1.2, 0], [0.6, 0.5]]: true NLL = log(2 pi) + 1 + log|det A| = 2.2342 nats.
    x, xv = gaussian(2000, seed=0), gaussian(1000, seed=1)
    cov = torch.tensor([[1.44, 0.72], [0.72, 0.61]], dtype=torch.float64)
    truth = torch.distributions.MultivariateNormal(torch.tensor([1.0, -2.0], dtype=torch.float64), cov)
    true_nll = float(-truth.log_prob(xv.double()).mean())
    flow = small_flow()
    before = val_nll(flow, xv)  # about 4.6 nats: the identity flow ignores the offset
    history = flow.fit(x, val=xv, epochs=15, batch_size=200, lr=1e-2, progress=False, seed=0)
    after = val_nll(flow, xv)
    assert before - after > 2.0
    assert after - true_nll < 0.05, (after, true_nll)
    assert history.val[-1] < history.val[0]
    assert after == pytest.approx(history.best_val, abs=1e-5)


def test_conditional_fit_within_0p05_nats_of_the_truth():
    # x | c ~ N(c, 0.1^2), c ~ U(-1, 1); the true conditional log-density has mean ~0.88 nats.
    def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.rand(n, 1, generator=g) * 2 - 1
        return c + 0.1 * torch.randn(n, 1, generator=g), c

    g = torch.Generator().manual_seed(1)
    (x, c), (xt, ct) = draw(2000, g), draw(2000, g)
    torch.manual_seed(0)
    flow = nf.Flow(nf.MAF(1, context_dim=1, layers=1, hidden=(32, 32)))
    flow.fit(x, c, epochs=20, batch_size=128, lr=1e-2, progress=False, seed=0)
    true = -math.log(0.1) - 0.5 * LOG_2PI - 0.5 * ((xt - ct) / 0.1).square().squeeze(-1)
    with torch.no_grad():
        gap = float((true - flow.log_prob(xt, ct)).mean())
    assert abs(gap) < 0.05, gap


def test_numpy_float64_data_trains_a_float32_flow():
    x = gaussian(300, seed=2, dtype=torch.float64).numpy()
    flow = small_flow()
    history = flow.fit(x, epochs=2, batch_size=100, progress=False, seed=0)
    assert history.epochs == 2 and all(math.isfinite(v) for v in history.train + history.val)
    assert next(flow.parameters()).dtype == torch.float32


def test_same_seed_same_history_and_steps():
    x = gaussian(300, seed=3)
    h1 = small_flow().fit(x, epochs=3, batch_size=64, progress=False, seed=7)
    h2 = small_flow().fit(x, epochs=3, batch_size=64, progress=False, seed=7)
    assert h1.train == h2.train and h1.val == h2.val
    # 300 rows, 30 held out, 270 left: ceil(270 / 64) = 5 near-equal batches per epoch
    assert h1.steps == 15


# --------------------------------------------------------------------------------------------
# Early stopping, best weights, stopping conditions
# --------------------------------------------------------------------------------------------


def test_early_stopping_restores_the_best_weights():
    # 24 training rows, a roomy flow and a constant large lr: validation NLL turns up quickly.
    x, xv = gaussian(24, seed=4, dtype=torch.float64), gaussian(500, seed=5, dtype=torch.float64)
    torch.manual_seed(0)
    flow = nf.Flow(nf.RealNVP(2, layers=4, hidden=(64, 64))).double()
    h = flow.fit(x, val=xv, epochs=400, batch_size=24, lr=2e-2, schedule=None, patience=5,
                 progress=False, seed=0)
    assert h.stopped == "early_stopping"
    assert h.epochs == len(h.val) == h.best_epoch + 1 + 5 < 400
    assert h.best_epoch == int(np.argmin(h.val)) and h.best_val == min(h.val)
    assert h.val[-1] > h.best_val + 1e-3  # the last epoch is worse, so restoring matters
    assert val_nll(flow, xv) == pytest.approx(h.best_val, rel=1e-12)
    assert not flow.training


def test_without_validation_best_weights_follow_the_training_loss():
    h = small_flow().fit(gaussian(200, seed=6), val_fraction=0, epochs=4, batch_size=50, progress=False,
                         seed=0)
    assert h.val == [] and h.best_val == min(h.train) and h.train[h.best_epoch] == h.best_val


def test_time_limit_stops_cleanly():
    flow = small_flow()
    h = flow.fit(gaussian(500, seed=7), epochs=10**6, batch_size=50, time_limit=0.5, progress=False,
                 seed=0)
    assert h.stopped == "time_limit"
    assert 0.5 <= h.seconds < 10.0  # generous bound: the machine is shared
    assert h.epochs >= 1 and val_nll(flow, gaussian(100, seed=8)) < 10


def test_max_steps_counts_the_partial_epoch():
    h = small_flow().fit(gaussian(300, seed=9), val_fraction=0, epochs=50, batch_size=100, max_steps=7,
                         progress=False, seed=0)
    assert (h.stopped, h.steps, h.epochs) == ("max_steps", 7, 3)


def test_callback_sees_each_epoch_and_can_stop():
    seen = []

    def callback(epoch: int, history: History) -> bool:
        seen.append((epoch, len(history["train"])))
        return epoch == 2

    h = small_flow().fit(gaussian(200, seed=10), epochs=10, batch_size=100, callback=callback,
                         progress=False, seed=0)
    assert seen == [(0, 1), (1, 2), (2, 3)] and h.stopped == "callback"


def test_keyboard_interrupt_keeps_the_best_weights():
    def interrupt(epoch: int, history: History) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    flow = small_flow()
    h = flow.fit(gaussian(200, seed=11), epochs=10, batch_size=100, callback=interrupt, progress=False,
                 seed=0)
    assert h.stopped == "interrupted" and h.epochs == 2


def test_progress_bar_shows_epoch_train_and_val(capsys):
    small_flow().fit(gaussian(100, seed=12), epochs=2, batch_size=50, progress=True, seed=0)
    err = capsys.readouterr().err
    assert "2/2" in err and "train=" in err and "val=" in err


def test_history_dict_access():
    h = History(train=[1.0], val=[2.0], best_epoch=0, best_val=2.0, stopped="epochs", epochs=1)
    assert h["val"] == [2.0] and h.to_dict()["stopped"] == "epochs" and "lr" in h.keys()
    with pytest.raises(KeyError, match="no entry 'nope'"):
        h["nope"]


# --------------------------------------------------------------------------------------------
# Non-finite recovery
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["loss", "gradient", "validation"])
def test_a_non_finite_step_rolls_back_halves_lr_and_recovers(where):
    x = gaussian(300, seed=13)
    flow = small_flow()
    calls = {"n": 0}
    what = "training loss or gradient norm"
    if where == "validation":
        what = "validation NLL"
        original = flow.log_prob

        def log_prob(x, context=None):
            lp = original(x, context)
            if not flow.training:
                calls["n"] += 1
                return lp * float("nan") if calls["n"] == 2 else lp  # the 2nd epoch's evaluation
            return lp

        flow.log_prob = log_prob
    elif where == "loss":
        original = flow.forward

        def forward(x, context=None):
            calls["n"] += 1
            lp = original(x, context)
            return lp * float("nan") if calls["n"] == 5 else lp  # step 5 is in epoch 2

        flow.forward = forward
    else:
        param = next(flow.parameters())

        def hook(grad):
            calls["n"] += 1
            return grad * float("inf") if calls["n"] == 5 else grad

        param.register_hook(hook)
    with pytest.warns(RuntimeWarning, match=rf"non-finite {what} in epoch 2; .*"
                      r"halved the learning rate to 0\.005 \(attempt 1 of 3\)"):
        h = flow.fit(x, epochs=4, batch_size=100, lr=1e-2, schedule=None, progress=False, seed=0)
    assert h.epochs == 4 and h.stopped == "epochs"
    assert h.lr == [0.01, 0.005, 0.005, 0.005]
    assert all(math.isfinite(v) for v in h.train + h.val)
    assert all(bool(torch.isfinite(p).all()) for p in flow.parameters())
    assert h.val[-1] < h.val[0]


def test_persistent_non_finite_raises_after_three_attempts():
    flow = small_flow()
    original = flow.forward
    flow.forward = lambda x, context=None: original(x, context) * float("nan")
    with pytest.warns(RuntimeWarning) as record:
        with pytest.raises(RuntimeError, match="non-finite in 3 consecutive attempts at epoch 1"):
            flow.fit(gaussian(100, seed=14), epochs=3, batch_size=50, lr=1e-3, progress=False, seed=0)
    assert [str(w.message).split("halved ")[-1] for w in record] == [
        "the learning rate to 0.0005 (attempt 1 of 3)", "the learning rate to 0.00025 (attempt 2 of 3)"]
    assert all(bool(torch.isfinite(p).all()) for p in flow.parameters())


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def test_checkpoint_resume_reproduces_an_uninterrupted_run(tmp_path):
    x = gaussian(400, seed=15)
    opts = dict(epochs=6, batch_size=100, lr=1e-2, progress=False, seed=0)
    full = small_flow()
    h_full = full.fit(x, checkpoint=tmp_path / "full.pt", **opts)

    def crash(epoch: int, history: History) -> None:
        if epoch == 2:
            raise RuntimeError("simulated crash")

    part = small_flow()
    with pytest.raises(RuntimeError, match="simulated crash"):
        part.fit(x, checkpoint=tmp_path / "part.pt", callback=crash, **opts)
    saved = torch.load(tmp_path / "part.pt", weights_only=True)
    assert saved["training"]["epoch"] == 3 and len(saved["training"]["history"]["train"]) == 3

    resumed = small_flow(seed=1)  # different initial weights: the checkpoint must override them
    h_res = resumed.fit(x, checkpoint=tmp_path / "part.pt", resume=True, **opts)
    assert h_res.train == h_full.train and h_res.val == h_full.val and h_res.lr == h_full.lr
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    loaded = nf.load(tmp_path / "full.pt")  # plain nf.load: config + best weights
    xv = gaussian(50, seed=16)
    assert torch.allclose(loaded.log_prob(xv), full.log_prob(xv))
    # resuming a finished run does no more work
    again = small_flow()
    h_again = again.fit(x, checkpoint=tmp_path / "full.pt", resume=True, **opts)
    assert h_again.train == h_full.train and h_again.stopped == "epochs"
    assert torch.allclose(again.log_prob(xv), full.log_prob(xv))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    x = gaussian(200, seed=17)
    small_flow().fit(x, epochs=2, batch_size=100, checkpoint=path, progress=False, seed=0)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        small_flow().fit(x, epochs=4, batch_size=100, checkpoint=path, resume=True, progress=False, seed=0)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.pt"]
    assert nf.load(path) is not None


def test_resume_without_a_file_starts_afresh_and_rejects_another_flow(tmp_path):
    path = tmp_path / "new.pt"
    h = small_flow().fit(gaussian(100, seed=18), epochs=1, batch_size=50, checkpoint=path, resume=True,
                         progress=False, seed=0)
    assert h.epochs == 1 and path.exists()
    other = nf.Flow(nf.RealNVP(2, layers=3, hidden=(8, 8)))
    with pytest.raises(ValueError, match="written for a different flow"):
        other.fit(gaussian(100, seed=18), epochs=2, checkpoint=path, resume=True, progress=False)
    torch.save({"not": "a checkpoint"}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a torchnf training checkpoint"):
        small_flow().fit(gaussian(100, seed=18), checkpoint=tmp_path / "junk.pt", resume=True, progress=False)


# --------------------------------------------------------------------------------------------
# Weights and compile
# --------------------------------------------------------------------------------------------


def test_weight_two_equals_a_duplicated_row():
    x = gaussian(40, seed=19, dtype=torch.float64)
    w = torch.ones(40, dtype=torch.float64)
    w[[3, 17]] = 2.0
    dup = torch.cat([x, x[[3, 17]]])
    opts = dict(val_fraction=0, epochs=5, batch_size=64, lr=1e-2, progress=False, seed=0)
    a, b = small_flow(dtype=torch.float64), small_flow(dtype=torch.float64)
    ha = a.fit(x, weights=w, **opts)
    hb = b.fit(dup, **opts)
    assert ha.train == pytest.approx(hb.train, rel=1e-10)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], rtol=1e-8, atol=1e-10), k


def test_validation_weights_give_the_weighted_mean_nll():
    x, xv = gaussian(200, seed=20), gaussian(100, seed=21)
    wv = torch.rand(100, generator=torch.Generator().manual_seed(0))
    flow = small_flow()
    h = flow.fit(x, val=xv, val_weights=wv, epochs=1, batch_size=100, progress=False, seed=0)
    with torch.no_grad():
        expected = float(-(wv.double() * flow.log_prob(xv).double()).sum() / wv.double().sum())
    assert h.val[0] == pytest.approx(expected, rel=1e-6)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no compiler here"):
        h = small_flow().fit(gaussian(200, seed=22), epochs=2, batch_size=100, compile=True,
                             progress=False, seed=0)
    assert h.epochs == 2 and all(math.isfinite(v) for v in h.train)


def test_compile_auto_stays_eager_on_cpu(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("compile='auto' must not compile on CPU")

    monkeypatch.setattr(torch, "compile", forbidden)
    h = small_flow().fit(gaussian(100, seed=22), epochs=1, batch_size=50, compile="auto", device="cpu",
                         progress=False, seed=0)
    assert h.epochs == 1


@pytest.mark.slow
def test_compiled_fit_matches_eager():
    x = gaussian(200, seed=23)
    eager = small_flow().fit(x, epochs=2, batch_size=100, progress=False, seed=0)
    compiled = small_flow().fit(x, epochs=2, batch_size=100, progress=False, seed=0, compile=True)
    assert compiled.train == pytest.approx(eager.train, rel=1e-4)
    assert compiled.val == pytest.approx(eager.val, rel=1e-4)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

X = gaussian(20, seed=24)
NAN_X = X.clone()
NAN_X[3, 0] = float("nan")
NAN_X[7, 1] = float("inf")
NEG_W = torch.ones(20)
NEG_W[[2, 9]] = -1.0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=torch.randn(20, 3)), ValueError,
         "events of shape (2,), so x must have shape (N, 2); got (20, 3)"),
        (dict(x=torch.randn(20)), ValueError, "x must have shape (N, 2); got (20,)"),
        (dict(x=torch.randn(0, 2)), ValueError, "x is empty (0 rows)"),
        (dict(x=NAN_X), ValueError,
         "x has 2 row(s) containing NaN or inf (in the flow's dtype torch.float32); first bad rows: [3, 7]"),
        (dict(x=np.array([["a", "b"]])), TypeError, "x must be a tensor or numeric array, got dtype <U1"),
        (dict(context=torch.zeros(20, 1)), ValueError, "unconditional (context_dim=0) but context was given"),
        (dict(weights=torch.ones(19)), ValueError,
         "weights must have shape (20,), one per row of x; got (19,)"),
        (dict(weights=NEG_W), ValueError, "weights must be >= 0; negative at rows [2, 9]"),
        (dict(weights=torch.zeros(20)), ValueError, "weights are all zero"),
        (dict(weights=torch.full((20,), float("nan"))), ValueError, "weights has 20 row(s) containing NaN"),
        (dict(val=torch.randn(5, 3)), ValueError, "val must have shape (N, 2); got (5, 3)"),
        (dict(val_weights=torch.ones(5)), ValueError, "val_weights was given without val"),
        (dict(val=torch.randn(5, 2), val_weights=-torch.ones(5)), ValueError, "val_weights must be >= 0"),
        (dict(epochs=0), ValueError, "epochs must be an integer >= 1, got 0"),
        (dict(batch_size=2.5), ValueError, "batch_size must be an integer >= 1, got 2.5"),
        (dict(lr=-1.0), ValueError, "lr must be a positive number, got -1.0"),
        (dict(weight_decay=-1), ValueError, "weight_decay must be a number >= 0"),
        (dict(val_fraction=1.0), ValueError, "val_fraction must be a number in [0, 1), got 1.0"),
        (dict(patience=0), ValueError, "patience must be None or an integer >= 1, got 0"),
        (dict(max_steps=-3), ValueError, "max_steps must be None or an integer >= 1"),
        (dict(time_limit=0), ValueError, "time_limit must be None or a positive number"),
        (dict(optimizer="sgd"), ValueError, "optimizer must be 'adamw' or 'adam', got 'sgd'"),
        (dict(schedule="linear"), ValueError, "schedule must be 'cosine', 'constant' or None"),
        (dict(compile="yes"), ValueError, "compile must be True, False or 'auto'"),
        (dict(callback=3), ValueError, "callback must be None or a callable"),
        (dict(resume=True), ValueError, "resume=True needs checkpoint="),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, error, message):
    kwargs = {"x": X, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        fit(small_flow(), progress=False, **kwargs)


def test_weight_split_with_zero_validation_weight_is_rejected():
    w = torch.zeros(20)
    w[0] = 1.0
    with pytest.raises(ValueError, match="split has zero total weight"):
        fit(small_flow(), X, weights=w, progress=False, seed=0)


@pytest.mark.parametrize(
    "context, val, val_context, message",
    [
        (None, None, None, "conditional (context_dim=1): pass context of shape (20, 1)"),
        (torch.zeros(19, 1), None, None, "expected shape (20, 1), got (19, 1)"),
        (torch.zeros(20), None, None, "expected shape (20, 1), got (20,)"),
        (torch.full((20, 1), float("nan")), None, None, "context has 20 row(s) containing NaN"),
        (torch.zeros(20, 1), torch.zeros(5, 1), None, "pass val_context of shape (5, 1)"),
        (torch.zeros(20, 1), torch.zeros(5, 1), torch.zeros(4, 1), "val_context must have one row"),
    ],
)
def test_bad_context_is_rejected(context, val, val_context, message):
    flow = nf.Flow(nf.MAF(1, context_dim=1, layers=1, hidden=(4,)))
    with pytest.raises(ValueError, match=re.escape(message)):
        fit(flow, torch.zeros(20, 1), context, val, val_context=val_context, progress=False)


def test_not_a_flow_is_rejected():
    with pytest.raises(TypeError, match="expected a torchnf.Flow, got RealNVP"):
        fit(nf.RealNVP(2), X)


def test_docstring_examples_run():
    import doctest

    import torchnf.training

    failed, attempted = doctest.testmod(torchnf.training, extraglobs={"torch": torch, "nf": nf})
    assert attempted >= 6 and failed == 0


def test_fit_adds_the_rnode_penalty_of_continuous_layers():
    """FFJORD's kinetic / Jacobian-norm penalties enter the training loss (and only it)."""
    import torchnf as nf

    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    losses = {}
    for k in (0.0, 1.0):
        torch.manual_seed(0)
        flow = nf.Flow(nf.FFJORD(2, hidden=(8, 8), kinetic=k, jacobian_norm=k))
        for p in flow.parameters():  # leave the identity so the dynamics (and penalty) are non-zero
            p.data.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        h = flow.fit(x, epochs=1, batch_size=128, val_fraction=0, lr=1e-12, progress=False, seed=0)
        losses[k] = h.train[0]
    assert losses[1.0] > losses[0.0] + 1e-3
