"""The ``torchnf`` command: smoke tests on tiny budgets and every bad-input message."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import torchnf as nf
from torchnf.cli import main

TINY = ["--epochs", "2", "--layers", "2", "--hidden", "8,8", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A 3-column table: two data columns that depend on a context column, in .npy and .csv."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.RandomState(0)
    c = rng.randn(300, 1)
    x = np.hstack([c + 0.1 * rng.randn(300, 1), 100 * rng.randn(300, 1) + 5, c])
    np.save(d / "d.npy", x)
    np.savetxt(d / "d.csv", x, delimiter=",", header="a,b,c", comments="")
    return d


@pytest.fixture(scope="module")
def models(data_dir):
    """An unconditional and a conditional model fitted through the command line."""
    plain = data_dir / "m.pt"
    assert main(["fit", str(data_dir / "d.npy"), "--arch", "MAF", "--out", str(plain), *TINY]) == 0
    cond = data_dir / "c.pt"
    args = ["fit", str(data_dir / "d.csv"), "--arch", "realnvp", "--out", str(cond), "--context-columns", "2"]
    assert main([*args, *TINY]) == 0
    return plain, cond


def _fails(capsys, argv, *fragments):
    """Run ``argv``; it must exit with status 2 and one clear line naming every fragment, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    return err


# -- help --------------------------------------------------------------------------------------------
def test_console_script_help_in_a_subprocess():
    script = os.path.join(os.path.dirname(sys.executable), "torchnf")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "torchnf.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for word in ("demo", "fit", "sample", "log-prob"):
        assert word in out.stdout


@pytest.mark.parametrize("command", ["demo", "fit", "sample", "log-prob"])
def test_each_command_has_help(capsys, command):
    assert main([command, "--help"]) == 0
    assert f"usage: torchnf {command}" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["fly"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# -- fit / sample / log-prob -------------------------------------------------------------------------
def test_fit_then_log_prob_matches_the_saved_flow(models, data_dir, capsys):
    model, _ = models
    out = data_dir / "lp.npy"
    assert main(["log-prob", str(model), str(data_dir / "d.npy"), "--out", str(out), "--no-progress"]) == 0
    assert "mean log-likelihood" in capsys.readouterr().out
    flow = nf.load(model)
    x = torch.as_tensor(np.load(data_dir / "d.npy"), dtype=torch.float32)
    with torch.no_grad():
        expect = flow.log_prob(x).double().numpy()
    np.testing.assert_allclose(np.load(out), expect, rtol=1e-5, atol=1e-5)
    # batching does not change the values, and csv output holds the same numbers
    csv = data_dir / "lp.csv"
    argv = ["log-prob", str(model), str(data_dir / "d.csv"), "--out", str(csv), "--batch-size", "7"]
    assert main(argv) == 0
    np.testing.assert_allclose(np.loadtxt(csv), expect, rtol=1e-5, atol=1e-5)


def test_fit_standardises_raw_columns(models, data_dir):
    """ActNorm in front starts the flow at the standardised data (column b has scale 100)."""
    flow = nf.load(models[0])
    z = flow.transform(torch.as_tensor(np.load(data_dir / "d.npy"), dtype=torch.float32))
    assert z.std(0).max() < 5.0


def test_conditional_fit_sample_and_log_prob(models, data_dir, tmp_path, capsys):
    _, model = models
    flow = nf.load(model)
    assert flow.context_dim == 1 and flow.event_shape == (2,)
    # log-prob reuses the context column recorded by fit
    out = tmp_path / "lp.npy"
    assert main(["log-prob", str(model), str(data_dir / "d.csv"), "--out", str(out), "--no-progress"]) == 0
    data = torch.as_tensor(np.load(data_dir / "d.npy"), dtype=torch.float32)
    with torch.no_grad():
        expect = flow.log_prob(data[:, :2], context=data[:, 2:]).numpy()
    np.testing.assert_allclose(np.load(out), expect, rtol=1e-5, atol=1e-5)
    s = tmp_path / "s.csv"
    argv = ["sample", str(model), "-n", "25", "--context", "0.5", "--out", str(s), "--batch-size", "10"]
    assert main(argv) == 0
    samples = np.loadtxt(s, delimiter=",")
    assert samples.shape == (25, 2) and np.isfinite(samples).all()
    assert "wrote 25 samples" in capsys.readouterr().out


def test_sample_is_seeded(models, tmp_path):
    model, _ = models
    for name in ("a.npy", "b.npy"):
        assert main(["sample", str(model), "-n", "40", "--seed", "3", "--out", str(tmp_path / name)]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (40, 3) and np.array_equal(a, b)


# -- bad input ----------------------------------------------------------------------------------------
def test_missing_files(capsys, models, data_dir, tmp_path):
    _fails(capsys, ["fit", str(tmp_path / "nope.csv")], "no such file", "nope.csv")
    _fails(capsys, ["sample", str(tmp_path / "nope.pt")], "no such model file")
    _fails(capsys, ["log-prob", str(models[0]), str(tmp_path / "nope.npy")], "no such file")


def test_unreadable_formats(capsys, models, data_dir, tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"this is not numpy")
    _fails(capsys, ["fit", str(tmp_path / "junk.npy")], "cannot read", "junk.npy")
    (tmp_path / "d.xlsx").write_bytes(b"")
    _fails(capsys, ["fit", str(tmp_path / "d.xlsx")], "unsupported table format '.xlsx'", "use .npy or .csv")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    _fails(capsys, ["fit", str(tmp_path / "ragged.csv")], "cannot parse")
    table = str(data_dir / "d.csv")
    _fails(capsys, ["log-prob", table, table], "cannot load a torchnf model")
    model = str(models[0])
    _fails(capsys, ["sample", model, "--out", str(tmp_path / "s.parquet")], "unsupported table format")
    _fails(capsys, ["log-prob", model, str(data_dir / "d.npy"), "--out", str(tmp_path / "x.h5")],
           "unsupported table format")


def test_nan_rows_are_named(capsys, tmp_path, models):
    x = np.random.RandomState(1).randn(50, 3)
    x[4, 1], x[31, 0] = np.nan, np.inf
    np.save(tmp_path / "bad.npy", x)
    _fails(capsys, ["fit", str(tmp_path / "bad.npy")], "2 row(s)", "rows 4, 31")
    _fails(capsys, ["log-prob", str(models[0]), str(tmp_path / "bad.npy")], "rows 4, 31")
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n4,,6\n7,8,x\n")
    _fails(capsys, ["fit", str(tmp_path / "bad.csv")], "rows 1, 2 (0-based, header not counted)")


def test_wrong_number_of_columns(capsys, models, tmp_path):
    np.save(tmp_path / "four.npy", np.zeros((20, 4)))
    _fails(capsys, ["log-prob", str(models[0]), str(tmp_path / "four.npy")],
           "the model expects 3 columns (3 data)", "has 4")
    _fails(capsys, ["log-prob", str(models[1]), str(tmp_path / "four.npy")],
           "the model expects 3 columns (2 data + 1 context)")


def test_context_mistakes(capsys, models, data_dir):
    plain, cond = models
    _fails(capsys, ["sample", str(cond), "-n", "5"], "conditional (context_dim=1)", "--context")
    _fails(capsys, ["sample", str(cond), "--context", "1,2"], "--context has 2 values, the model expects 1")
    _fails(capsys, ["sample", str(cond), "--context", "a"], "comma-separated numbers")
    _fails(capsys, ["sample", str(plain), "--context", "1"], "unconditional: drop --context")
    _fails(capsys, ["log-prob", str(plain), str(data_dir / "d.npy"), "--context-columns", "0"],
           "unconditional: drop --context-columns")
    table = str(data_dir / "d.npy")
    _fails(capsys, ["fit", table, "--context-columns", "7"], "bad column '7'", "columns 0..2")
    _fails(capsys, ["fit", str(data_dir / "d.npy"), "--context-columns", "0:3"], "leaving no data columns")


def test_unknown_architecture_and_bad_options(capsys, data_dir):
    err = _fails(capsys, ["fit", str(data_dir / "d.npy"), "--arch", "glowy"], "unknown architecture 'glowy'")
    assert "MAF" in err and "RealNVP" in err
    table = str(data_dir / "d.npy")
    _fails(capsys, ["fit", table, "--hidden", "8,x"], "--hidden expects comma-separated integers")
    _fails(capsys, ["fit", str(data_dir / "d.npy"), "--arch-arg", "nonsense"], "KEY=VALUE")
    _fails(capsys, ["fit", str(data_dir / "d.npy"), "--arch-arg", "colour=3"], "cannot build MAF")
    _fails(capsys, ["demo", "--dataset", "spiral3"], "unknown toy density 'spiral3'")
    _fails(capsys, ["sample", "x.pt", "-n", "0"], "-n must be a positive integer")


# -- demo ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the demo needs matplotlib")
def test_demo_with_a_tiny_budget_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-train", "256", "--n-test", "200", "--resolution", "16",
            "--batch-size", "128", *TINY]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "checkerboard" in text and "true log-likelihood" in text and "-2.0794" in text and "gap" in text
    for name in ("data_vs_samples.png", "density.png", "losses.png", "index.html", "model.pt"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "index.html").read_text()
    for name in ("data_vs_samples.png", "density.png", "losses.png", "-2.0794"):
        assert name in page
    assert nf.load(out / "model.pt").log_prob(torch.zeros(3, 2)).shape == (3,)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the demo needs matplotlib")
def test_demo_on_a_density_without_closed_form_and_a_time_budget(tmp_path, capsys):
    out = tmp_path / "moons"
    argv = ["demo", "--dataset", "moons", "--arch", "maf", "--out", str(out), "--n-train", "256",
            "--n-test", "100", "--resolution", "16", "--time-limit", "1", "--layers", "2", "--hidden", "8,8",
            "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "MAF on moons" in text and "true log-likelihood" not in text
    assert (out / "density.png").exists() and (out / "index.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the demo needs matplotlib")
def test_demo_default_architecture_gets_close_to_the_true_checkerboard(tmp_path, capsys):
    """30 epochs on 5000 points (about 13 CPU-seconds) bring the KL gap below 0.3 nats."""
    argv = ["demo", "--out", str(tmp_path), "--epochs", "30", "--n-train", "5000", "--n-test", "5000",
            "--batch-size", "256", "--resolution", "20", "--no-progress"]
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("gap"))
    gap = float(line.split("estimate")[1].split()[0])
    assert 0 < gap < 0.3, line


def test_fit_sinf_runs_its_own_greedy_fit(tmp_path, capsys):
    """`--arch sinf` hands the data to SINF's gradient-free fit (no ActNorm wrapper, no epochs/lr)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "x.npy"
    np.save(data, rng.normal(size=(1500, 2)) * [1.0, 0.5])
    out = tmp_path / "sinf.pt"
    assert main(["fit", str(data), "--arch", "sinf", "--out", str(out), "--no-progress"]) == 0
    flow = nf.load(out)
    assert isinstance(flow.bijection, nf.SINF)
    x = torch.as_tensor(np.load(data), dtype=torch.float32)
    true = torch.distributions.Normal(0, torch.tensor([1.0, 0.5])).log_prob(x).sum(-1).mean()
    assert flow.log_prob(x).mean() > true - 0.1  # within 0.1 nats of the true log-likelihood
