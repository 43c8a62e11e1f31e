"""The examples in ``examples/`` run end to end on tiny budgets and report what they claim.

Each example exposes ``main(argv)``; the tests import the files and call it with small data sets and
a few optimiser steps, then check the returned numbers and the files written. Running each script
as a subprocess (``--help``) is the slow test that covers the ``__main__`` path.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MINE = ["density_estimation", "conditional", "dihedral_angles", "custom_bijection"]
TINY = ["--n-train", "400", "--n-test", "400", "--steps", "15", "--seed", "0"]
_loaded: dict[str, ModuleType] = {}


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` once, as module ``example_<name>``."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def _pictures_written(out: Path, expected: int) -> None:
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == expected, [p.name for p in pngs]
    page = (out / "index.html").read_text()
    assert all(p.name in page for p in pngs)


@pytest.mark.parametrize("name", MINE)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        example(name).main(["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_density_estimation(tmp_path):
    out = tmp_path / "out"
    archs = "nsf,realnvp,maf:layers=2"
    results = example("density_estimation").main(
        [*TINY, "--archs", archs, "--hidden", "16", "--resolution", "20", "--out", str(out)])
    assert list(results) == ["nsf", "realnvp", "maf:layers=2"]
    for r in results.values():
        assert r["steps"] == 15 and math.isfinite(r["test_ll"])
        # The gap estimates KL(p || q) >= 0: it may dip below zero only by sampling noise.
        assert r["gap"] > -4 * r["gap_stderr"]
    _pictures_written(out, 2 * 3 + 1)


def test_density_estimation_rejects_a_density_without_log_prob(tmp_path):
    with pytest.raises(SystemExit, match="no closed-form log-density"):
        example("density_estimation").main(["--dataset", "moons", "--out", str(tmp_path)])


def test_conditional_truth_is_normalised_and_matches_its_sampler():
    ex = example("conditional")
    c = torch.tensor([0.3])
    h = 0.02
    grid = torch.arange(-6.0, 6.0, h, dtype=torch.float64) + h / 2
    pts = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    mass = float(ex.true_log_prob(pts, c.double()).exp().sum() * h * h)
    assert abs(mass - 1) < 1e-3
    # Samples of x | c have the mean the formula implies: R(c pi / 2) (0, 0) (the banana's mean is 0).
    x = ex.sample_given(c.expand(200_000, 1), torch.Generator().manual_seed(0))
    assert x.mean(0).abs().max() < 0.02


def test_conditional(tmp_path):
    out = tmp_path / "out"
    r = example("conditional").main([*TINY, "--layers", "2", "--hidden", "16", "--resolution", "20",
                                     "--out", str(out)])
    assert math.isfinite(r["test_ll"]) and r["gap"] > -4 * r["gap_stderr"]
    _pictures_written(out, 2 * 3 + 1)


def test_dihedral_angles(tmp_path):
    out = tmp_path / "out"
    r = example("dihedral_angles").main([*TINY, "--layers", "2", "--hidden", "16", "--n-query", "2000",
                                         "--resolution", "20", "--out", str(out)])
    assert math.isfinite(r["test_ll"]) and r["true_ll"] > r["test_ll"] - 1.0
    assert 0 < r["p_helix_flow"] < 1 and 0 < r["p_helix_data"] < 1
    _pictures_written(out, 3)


def test_custom_bijection_passes_the_harness_and_fits():
    r = example("custom_bijection").main([*TINY, "--layers", "2", "--hidden", "16"])
    assert set(r) == {"true", "sinh-arcsinh + RealNVP", "RealNVP"}
    assert all(math.isfinite(v) for v in r.values())


def test_custom_transformer_is_caught_when_wrong():
    """The example's check really checks: a wrong log-derivative fails it."""
    from torchnf.testing import check_transformer

    class Wrong(example("custom_bijection").SinhArcsinh):
        def forward(self, x, params):
            y, logd = super().forward(x, params)
            return y, logd * 1.01

    with pytest.raises(AssertionError, match="log-derivative"):
        check_transformer(Wrong())


@pytest.mark.slow
@pytest.mark.parametrize("name", MINE)
def test_script_help_runs_standalone(name):
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
