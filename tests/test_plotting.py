"""Plotting: every function writes a readable image of the expected layout; clear error without matplotlib."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

import torchnf as nf
from torchnf import datasets, plotting

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
needs_mpl = pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed (pip install torchnf[plot])")


def _read(path) -> np.ndarray:
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


@pytest.fixture
def flow():
    torch.manual_seed(0)
    return nf.Flow(nf.RealNVP(2, layers=2, hidden=(8, 8)))


@needs_mpl
def test_plot_samples(tmp_path, flow):
    data = datasets.get("moons").sample(300, seed=0)
    path = plotting.plot_samples(data, flow.sample(300), tmp_path / "sub" / "s.png")
    img = _read(path)
    assert img.shape[1] > 1.8 * img.shape[0]  # two panels side by side
    assert img[..., :3].std() > 0.01  # not blank
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plotting.plot_samples(torch.zeros(5, 3), data, tmp_path / "x.png")


@needs_mpl
def test_plot_density_with_and_without_truth(tmp_path, flow):
    flow.train()
    one = _read(plotting.plot_density(flow, tmp_path / "d1.png", lim=3.0, resolution=30))
    board = datasets.Checkerboard()
    two = _read(plotting.plot_density(flow, tmp_path / "d2.png", lim=board.lim, true_log_prob=board.log_prob,
                                      resolution=30))
    assert two.shape[1] > 1.8 * one.shape[1] and two.shape[0] == one.shape[0]
    assert flow.training  # the caller's mode is restored


def test_density_grid_orientation_and_normalisation():
    """Row index follows y, column index follows x; a normalised density sums to 1 over the grid."""
    g = datasets.EightGaussians()
    centres, lp = plotting.density_grid(g.log_prob, lim=5.0, resolution=200, dtype=torch.float64)
    cell = (centres[1] - centres[0]) ** 2
    assert abs(np.exp(lp).sum() * cell - 1) < 1e-3
    _, ramp = plotting.density_grid(lambda x: x[:, 0] + 10 * x[:, 1], lim=1.0, resolution=4)
    assert np.all(np.diff(ramp, axis=1) > 0)
    assert np.all(np.diff(ramp, axis=0) > 5 * np.diff(ramp, axis=1).max())


@needs_mpl
def test_plot_losses_accepts_history_dict_and_list(tmp_path):
    from types import SimpleNamespace

    h = SimpleNamespace(train=[3.0, 2.5, 2.2], val=[2.9, 2.6, 2.4])
    _read(plotting.plot_losses(h, tmp_path / "a.png", reference=2.079))
    _read(plotting.plot_losses({"train": [1.0, 0.5]}, tmp_path / "b.png"))
    _read(plotting.plot_losses([1.0, 0.9, 0.8], tmp_path / "c.png"))
    with pytest.raises(ValueError, match="no losses"):
        plotting.plot_losses({"train": []}, tmp_path / "d.png")


@needs_mpl
def test_image_grid_layouts(tmp_path):
    rng = np.random.RandomState(0)
    gray = _read(plotting.image_grid(torch.from_numpy(rng.randint(0, 256, (10, 1, 28, 28)).astype(np.uint8)),
                                     tmp_path / "g.png"))
    assert gray.ndim == 3 and gray[..., :3].std() > 0.01
    _read(plotting.image_grid(rng.rand(4, 3, 8, 8), tmp_path / "rgb.png", nrow=2))
    _read(plotting.image_grid(rng.rand(3, 8, 8), tmp_path / "hw.png"))
    with pytest.raises(ValueError, match=r"image_grid: expected images.*\(2, 2, 8, 8\)"):
        plotting.image_grid(rng.rand(2, 2, 8, 8), tmp_path / "bad.png")


@needs_mpl
def test_html_report_links_images_relatively(tmp_path):
    img = plotting.plot_losses([1.0, 0.5], tmp_path / "losses.png")
    page = plotting.html_report(tmp_path / "index.html", "t <&>", [("gap", "0.05 nats")], {"curves": img})
    text = open(page).read()
    assert 'src="losses.png"' in text and "0.05 nats" in text and "t &lt;&amp;&gt;" in text


def test_missing_matplotlib_gives_the_install_hint(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    with pytest.raises(ImportError, match=r"plotting needs matplotlib: pip install torchnf\[plot\]"):
        plotting.plot_losses([1.0], tmp_path / "x.png")
