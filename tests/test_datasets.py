"""Toy densities (sampling, exact log-densities), tabular benchmark loaders, image loaders, table files."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch

from torchnf import datasets
from torchnf.datasets import tabular

KNOWN = [n for n in datasets.names() if datasets.get(n).has_log_prob]
HAS_PANDAS = importlib.util.find_spec("pandas") is not None
HAS_H5PY = importlib.util.find_spec("h5py") is not None


def _grid(lim: float, m: int) -> tuple[torch.Tensor, float]:
    edges = torch.linspace(-lim, lim, m + 1, dtype=torch.float64)
    c = (edges[1:] + edges[:-1]) / 2
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2), (2 * lim / m) ** 2


# -- toy densities -------------------------------------------------------------------------------
def test_registry_has_the_seven_densities_and_aliases():
    assert datasets.names() == sorted(
        ["moons", "circles", "checkerboard", "eight_gaussians", "pinwheel", "two_spirals", "rings"]
    )
    assert isinstance(datasets.get("8gaussians"), datasets.EightGaussians)
    assert isinstance(datasets.get("Two-Spirals"), datasets.TwoSpirals)
    assert set(KNOWN) == {"checkerboard", "eight_gaussians", "circles", "rings"}
    with pytest.raises(ValueError, match="unknown toy density 'spiral3'.*checkerboard"):
        datasets.get("spiral3")


@pytest.mark.parametrize("name", datasets.names())
def test_sample_shapes_dtypes_and_seeding(name):
    toy = datasets.get(name)
    a = toy.sample(500, seed=3)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert toy.sample(7, dtype=torch.float64).dtype == torch.float64
    assert toy.sample(0, seed=1).shape == (0, 2)
    assert torch.equal(a, toy.sample(500, seed=3))
    assert not torch.equal(a, toy.sample(500, seed=4))
    torch.manual_seed(11)
    b = toy.sample(50)
    torch.manual_seed(11)
    assert torch.equal(b, toy.sample(50))  # seed=None follows torch's global generator
    assert a.abs().max() < toy.lim + 2.0
    with pytest.raises(ValueError, match=type(toy).__name__):
        toy.sample(-1)


@pytest.mark.parametrize("name", KNOWN)
def test_log_prob_is_normalised_on_a_grid(name):
    toy = datasets.get(name)
    x, cell = _grid(toy.lim + 1.5, 900)
    total = (toy.log_prob(x).exp().sum() * cell).item()
    assert abs(total - 1.0) < 1e-2, total


@pytest.mark.parametrize("name", KNOWN)
def test_log_prob_agrees_with_the_sampler(name):
    """Bin probabilities from integrating exp(log_prob) match the sampler's bin frequencies."""
    toy = datasets.get(name)
    lim, m, bins = toy.lim + 1.0, 800, 8
    x, cell = _grid(lim, m)
    p = (toy.log_prob(x).exp() * cell).reshape(m, m)
    expected = p.reshape(bins, m // bins, bins, m // bins).sum((1, 3)).flatten()
    n = 100_000
    s = toy.sample(n, seed=0, dtype=torch.float64)
    idx = ((s + lim) / (2 * lim) * bins).floor().long().clamp(0, bins - 1)
    observed = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins * bins).double() / n
    tol = 5 * (expected * (1 - expected) / n).sqrt() + 2e-3
    assert ((observed - expected).abs() <= tol).all(), (observed - expected).abs().max()


@pytest.mark.parametrize("name", KNOWN)
def test_samples_lie_where_the_density_is_positive(name):
    toy = datasets.get(name)
    x = toy.sample(2000, seed=1, dtype=torch.float64)
    assert torch.isfinite(toy.log_prob(x)).all()
    lp32 = toy.log_prob(x.float().reshape(4, 500, 2))
    assert lp32.shape == (4, 500) and lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double().flatten(), toy.log_prob(x), rtol=1e-4, atol=1e-4)


def test_checkerboard_layout_and_true_log_likelihood():
    board = datasets.Checkerboard()
    x = board.sample(10_000, seed=0, dtype=torch.float64)
    assert board.true_log_likelihood == pytest.approx(-2.0794415, abs=1e-6)
    assert torch.all(board.log_prob(x) == -math.log(8))
    cells = torch.floor(x)
    assert torch.all(torch.remainder(cells.sum(-1), 2) == 0) and torch.all(x.abs() <= 2)
    outside = torch.tensor([[-0.5, -1.5], [0.5, -0.5], [2.5, 0.5], [-1.5, 3.0]])
    assert torch.all(board.log_prob(outside) == -math.inf)


def test_rings_density_matches_the_radial_formula():
    """p(x) = p_rho(|x|) / (2 pi |x|): check at one point against the folded normal mixture."""
    rings = datasets.Rings(radii=(1.0, 2.0), std=0.3, weights=(1.0, 3.0))
    r = 1.4
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0], dtype=torch.float64)

    def normal(v):
        return torch.exp(-0.5 * ((r - v) / 0.3) ** 2) / (0.3 * math.sqrt(2 * math.pi))

    p_rho = (w * (normal(radii) + normal(-radii))).sum()
    x = torch.tensor([r * math.cos(0.7), r * math.sin(0.7)], dtype=torch.float64)
    assert rings.log_prob(x).item() == pytest.approx(math.log(p_rho / (2 * math.pi * r)), rel=1e-12)
    with pytest.raises(ValueError, match="Rings"):
        datasets.Rings(radii=(1.0, -2.0))


def test_unknown_density_and_bad_input():
    with pytest.raises(NotImplementedError, match="Moons"):
        datasets.Moons().log_prob(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"EightGaussians.*\(\*batch, 2\).*\(3, 3\)"):
        datasets.EightGaussians().log_prob(torch.zeros(3, 3))


# -- tabular benchmarks --------------------------------------------------------------------------
def _check_standardised(split, n_train, n_val, n_test, dim):
    assert [tuple(t.shape) for t in split] == [(n_train, dim), (n_val, dim), (n_test, dim)]
    assert all(t.dtype == torch.float64 for t in split)
    mean, std = split.train.mean(0), split.train.std(0, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(dim, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(dim, dtype=torch.float64), atol=1e-4, rtol=0)


def test_power_layout_and_published_cleaning(tmp_path):
    rng = np.random.RandomState(1)
    n = 1000
    data = np.column_stack([
        rng.gamma(2.0, 1.0, n),            # active power (noise 0.001)
        np.full(n, 7.0),                   # reactive power: dropped
        rng.normal(240, 3, n),             # voltage (noise 0.01)
        np.full(n, 7.0),                   # intensity: dropped
        rng.randint(0, 3, (n, 3)),         # sub-meterings (integer; noise U(0, 1))
        rng.randint(0, 1440, n),           # minute of day (no noise)
    ]).astype(np.float64)
    os.makedirs(tmp_path / "power")
    np.save(tmp_path / "power" / "data.npy", data)
    split = datasets.load_power(str(tmp_path), dtype=torch.float64)
    _check_standardised(split, 810, 90, 100, 6)
    allx = torch.cat(list(split))
    # constant columns were dropped (else a zero-variance column would remain)
    assert torch.all(allx.std(0) > 0.5)
    # time received no noise: as many distinct values as minutes; sub-meterings were de-tied
    assert len(torch.unique(allx[:, 5])) == len(np.unique(data[:, 7]))
    assert len(torch.unique(allx[:, 2])) == n
    # deterministic for a seed, different for another
    assert torch.equal(split.test, datasets.load_power(str(tmp_path), dtype=torch.float64).test)
    assert not torch.equal(split.test, datasets.load_power(str(tmp_path), dtype=torch.float64, seed=0).test)


def test_power_rejects_the_wrong_layout(tmp_path):
    os.makedirs(tmp_path / "power")
    np.save(tmp_path / "power" / "data.npy", np.zeros((10, 5)))
    with pytest.raises(ValueError, match=r"POWER: expected an array of shape \(N, 8\), got \(10, 5\)"):
        datasets.load_power(str(tmp_path))


def test_miniboone_drops_placeholder_rows_and_repeated_features(tmp_path):
    rng = np.random.RandomState(2)
    data = rng.randn(1001, 5)
    data[:, 2] = np.maximum(data[:, 2], 0.0)  # its minimum repeats: dropped
    data[17, 0] = -999.0                     # placeholder row: dropped
    os.makedirs(tmp_path / "miniboone")
    np.save(tmp_path / "miniboone" / "data.npy", data)
    split = datasets.load_tabular("MiniBooNE", str(tmp_path), dtype=torch.float64)
    _check_standardised(split, 810, 90, 100, 4)
    # the test rows are the standardised originals (columns 0, 1, 3, 4) after the seeded shuffle
    kept = np.delete(np.delete(data, 17, axis=0), 2, axis=1)
    np.random.RandomState(42).shuffle(kept)
    train = kept[:810]
    expect = (kept[-100:] - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(split.test.numpy(), expect, rtol=1e-10, atol=1e-10)


def test_hepmass_positive_class_columns_by_name_and_repeated_features(tmp_path):
    root = datasets.write_synthetic("hepmass", str(tmp_path), n=1200, seed=3)
    train = np.loadtxt(os.path.join(root, "hepmass", "1000_train.csv"), delimiter=",", skiprows=1)
    test = np.loadtxt(os.path.join(root, "hepmass", "1000_test.csv"), delimiter=",", skiprows=1)
    n_pos, n_test = int((train[:, 0] == 1).sum()), int((test[:, 0] == 1).sum())
    split = datasets.load_hepmass(root, dtype=torch.float64)
    n_val = int(0.1 * n_pos)
    _check_standardised(split, n_pos - n_val, n_val, n_test, 22)  # 22 continuous of 24 features
    # test rows: positive class, label/discrete/mass/extra columns gone, training statistics
    pos = train[train[:, 0] == 1, 1:23]
    raw = test[test[:, 0] == 1, 1:23]
    shuffled = pos.copy()
    np.random.RandomState(42).shuffle(shuffled)
    tr = shuffled[: n_pos - n_val]
    np.testing.assert_allclose(split.test.numpy(), (raw - tr.mean(0)) / tr.std(0), rtol=1e-10, atol=1e-10)


def test_drop_correlated_and_drop_repeated():
    rng = np.random.RandomState(0)
    x = rng.randn(500, 4)
    x[:, 3] = 2 * x[:, 1] + 1e-3 * rng.randn(500)  # correlated with column 1: the first of them goes
    assert datasets.drop_correlated(x).tolist() == [0, 2, 3]
    y = rng.randn(500, 3)
    y[:, 0] = np.maximum(np.round(y[:, 0]), -1)  # a clipped discrete feature piles up on its minimum
    y[:6, 2] = y[:, 2].min() - 1  # 6 repeats of the minimum: more than 5
    assert datasets.drop_repeated(y).tolist() == [1]


@pytest.mark.skipif(not HAS_PANDAS, reason="pandas is not installed: the GAS pickle cannot be read")
def test_gas_loader_on_a_synthetic_pickle(tmp_path):
    root = datasets.write_synthetic("gas", str(tmp_path), n=1000)
    split = datasets.load_gas(root, dtype=torch.float64)
    _check_standardised(split, 810, 90, 100, 9)


@pytest.mark.skipif(not HAS_H5PY, reason="h5py is not installed: BSDS300.hdf5 cannot be read")
def test_bsds300_loader_on_a_synthetic_file(tmp_path):
    root = datasets.write_synthetic("bsds300", str(tmp_path), n=200)
    split = datasets.load_bsds300(root)
    assert [tuple(t.shape) for t in split] == [(200, 63), (20, 63), (20, 63)]


def _without(package: str):
    installed = importlib.util.find_spec(package) is not None
    return pytest.mark.skipif(installed, reason=f"{package} is installed (this checks the hint without it)")


@pytest.mark.parametrize("name, package, relpath, loader", [
    pytest.param("GAS", "pandas", "gas/ethylene_CO.pickle", datasets.load_gas, marks=_without("pandas")),
    pytest.param("BSDS300", "h5py", "BSDS300/BSDS300.hdf5", datasets.load_bsds300, marks=_without("h5py")),
])
def test_missing_optional_reader_says_what_to_install(tmp_path, name, package, relpath, loader):
    (tmp_path / relpath).parent.mkdir()
    (tmp_path / relpath).write_bytes(b"not read")
    with pytest.raises(ImportError, match=f"{name}.*needs {package}: pip install {package}"):
        loader(str(tmp_path))


@pytest.mark.parametrize("name", ["power", "miniboone", "hepmass"])
def test_synthetic_files_round_trip_through_the_loaders(tmp_path, name):
    split = datasets.load_tabular(name, datasets.write_synthetic(name, str(tmp_path), n=500))
    assert split.train.shape[1] == split.val.shape[1] == split.test.shape[1]
    assert all(t.dtype == torch.float32 for t in split)  # torch's default dtype
    assert all(torch.isfinite(t).all() for t in split)


def test_tabular_benchmark_runs_on_synthetic_files(tmp_path, capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "tabular.py")
    spec = importlib.util.spec_from_file_location("bench_tabular", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    argv = ["--synthetic", "--dataset", "power,miniboone", "--arch", "maf", "--epochs", "2", "--layers", "1",
            "--hidden", "8", "--n-synthetic", "300", "--no-progress", "--json", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "power" in text and "miniboone" in text and "test log-likelihood" in text and "+-" in text
    rows = json.loads(out.read_text())["results"]
    assert [r["dim"] for r in rows] == [6, 44] and all(math.isfinite(r["test_ll"]) for r in rows)
    assert all(r["test_ll_se"] > 0 for r in rows)
    assert bench.main(["--dataset", "power"]) == 2  # neither --data-dir nor --synthetic


def test_tabular_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tabular dataset 'cifar'.*power"):
        datasets.load_tabular("cifar", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"MINIBOONE.*miniboone.data\.npy"):
        datasets.load_miniboone(str(tmp_path))
    assert tabular.PUBLISHED_LL["power"] == 0.66


# -- images ----------------------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_mnist_npz_layout(tmp_path):
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 256, (5, 28, 28)).astype(np.uint8), np.arange(5, dtype=np.uint8)
    np.savez(tmp_path / "mnist_test.npz", x_test=x, y_test=y)
    images, labels = datasets.load_mnist_npz(str(tmp_path / "mnist_test.npz"))
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert np.array_equal(images[:, 0].numpy(), x) and labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="x_train"):
        datasets.load_mnist_npz(str(tmp_path / "mnist_test.npz"), split="train")


@pytest.mark.parametrize("compressed", [True, False])
def test_idx_layout(tmp_path, compressed):
    rng = np.random.RandomState(1)
    x, y = rng.randint(0, 256, (4, 6, 5)).astype(np.uint8), np.array([9, 0, 3, 3], dtype=np.uint8)
    for stem, arr in (("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", y)):
        raw = _idx(arr)
        if compressed:
            (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (tmp_path / stem).write_bytes(raw)
    images, labels = datasets.load_idx_images(str(tmp_path), split="test")
    assert images.shape == (4, 1, 6, 5) and np.array_equal(images[:, 0].numpy(), x)
    assert labels.tolist() == [9, 0, 3, 3]
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        datasets.load_idx_images(str(tmp_path), split="train")


def test_idx_rejects_malformed_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="idx header"):
        datasets.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(_idx(np.zeros((2, 3)))[:-1])
    with pytest.raises(ValueError, match=r"declares shape \(2, 3\)"):
        datasets.read_idx(str(tmp_path / "short"))


def test_uniform_dequantize_stays_in_each_pixels_bin():
    v = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = datasets.uniform_dequantize(v, seed=0, dtype=torch.float64)
    assert torch.all(x * 256 >= v.double()) and torch.all(x * 256 < v.double() + 1)
    assert torch.equal(x, datasets.uniform_dequantize(v, seed=0, dtype=torch.float64))


# -- user tables -----------------------------------------------------------------------------------
def test_read_table_formats(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.savetxt(tmp_path / "h.csv", x, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "n.csv", x, delimiter=",")
    np.savetxt(tmp_path / "w.txt", x)
    np.save(tmp_path / "v.npy", x[:, 0])
    for name in ("h.csv", "n.csv", "w.txt"):
        np.testing.assert_allclose(datasets.read_table(str(tmp_path / name)), x, rtol=1e-12)
    assert datasets.read_table(str(tmp_path / "v.npy")).shape == (4, 1)
    datasets.write_table(str(tmp_path / "o.tsv"), x)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "o.tsv"), x, rtol=1e-8)


def test_read_table_errors(tmp_path):
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n3,nan\n5,6\n7,\n")
    with pytest.raises(ValueError, match=r"2 row\(s\) hold NaN.*rows 1, 3 \(0-based"):
        datasets.read_table(str(tmp_path / "nan.csv"))
    (tmp_path / "ragged.csv").write_text("1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="cannot parse"):
        datasets.read_table(str(tmp_path / "ragged.csv"))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported table format '.parquet'"):
        datasets.read_table(str(tmp_path / "x.parquet"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        datasets.read_table(str(tmp_path / "missing.npy"))
    assert datasets.parse_columns("0, 3:5, -1", 7) == [0, 3, 4, 6]
    with pytest.raises(ValueError, match="bad column '9'"):
        datasets.parse_columns("9", 3)
