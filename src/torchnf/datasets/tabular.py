"""Loaders for the standard tabular density-estimation benchmarks (POWER, GAS, HEPMASS, MINIBOONE, BSDS300).

The files are the preprocessed releases of the MAF paper (Papamakarios et al., 2017), also used by
the NSF paper, laid out under one data folder::

    root/power/data.npy                      N x 8 float array
    root/gas/ethylene_CO.pickle              pandas DataFrame (needs pandas)
    root/hepmass/1000_train.csv, 1000_test.csv  header line, label in the first column
    root/miniboone/data.npy                  N x 43 float array
    root/BSDS300/BSDS300.hdf5                datasets 'train', 'validation', 'test' (needs h5py)

Protocol (shared by all but BSDS300): shuffle the rows with a fixed seed, take the last 10% as
test, the last 10% of the rest as validation, and standardise every split with the training
mean and standard deviation. Per-dataset cleaning (which columns are dropped) follows the
published preprocessing; see each loader. BSDS300 ships already split into patches in ``[0, 1]``
and is used as published (not standardised), so its log-likelihoods compare with the tables.

Published test log-likelihoods (nats; Durkan et al. 2019, RQ-NSF autoregressive): POWER 0.66,
GAS 13.09, HEPMASS -14.01, MINIBOONE -9.22, BSDS300 157.31 (:data:`PUBLISHED_LL`).

References:
    Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation", 2017.
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019.

Example:
    >>> from torchnf.datasets import load_tabular
    >>> train, val, test = load_tabular("miniboone", "/path/to/data")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Split",
    "TABULAR_LOADERS",
    "PUBLISHED_LL",
    "load_tabular",
    "load_power",
    "load_gas",
    "load_hepmass",
    "load_miniboone",
    "load_bsds300",
    "split_standardise",
    "drop_repeated",
    "drop_correlated",
    "write_synthetic",
]

PUBLISHED_LL = {"power": 0.66, "gas": 13.09, "hepmass": -14.01, "miniboone": -9.22, "bsds300": 157.31}


class Split(NamedTuple):
    """Train, validation and test tensors of shape ``(N_split, D)``."""

    train: Tensor
    val: Tensor
    test: Tensor


def _need(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{what}: expected the file {path!r} (see torchnf.datasets.tabular for the layout)"
        )
    return path


def _check_matrix(name: str, data: np.ndarray, columns: int | None = None) -> np.ndarray:
    if data.ndim != 2 or (columns is not None and data.shape[1] != columns):
        want = f"(N, {columns})" if columns is not None else "(N, D)"
        raise ValueError(f"{name}: expected an array of shape {want}, got {data.shape}")
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {data.dtype}")
    return data.astype(np.float64, copy=False)


def _tensors(parts: tuple[np.ndarray, ...], dtype: torch.dtype | None) -> Split:
    dtype = dtype or torch.get_default_dtype()
    return Split(*(torch.as_tensor(np.ascontiguousarray(p), dtype=dtype) for p in parts))


def _standardise(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    mu = train.mean(0)
    sd = train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return tuple((a - mu) / sd for a in (train, *others))


def split_standardise(
    data: np.ndarray, seed: int = 42, shuffle: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MAF protocol: shuffle, last 10% test, last 10% of the rest validation, standardise.

    Args:
        data: ``(N, D)`` array.
        seed: seed of the shuffle (ignored when ``rng`` is given).
        shuffle: shuffle the rows first.

    Returns:
        ``(train, val, test)``, standardised with the training mean and standard deviation.
    """
    data = np.array(data, dtype=np.float64)
    if shuffle:
        np.random.RandomState(seed).shuffle(data)
    n_test = int(0.1 * len(data))
    test, rest = data[len(data) - n_test :], data[: len(data) - n_test]
    n_val = int(0.1 * len(rest))
    val, train = rest[len(rest) - n_val :], rest[: len(rest) - n_val]
    if len(train) < 2:
        raise ValueError(f"split_standardise: {len(data)} rows leave fewer than 2 training rows")
    return _standardise(train, val, test)  # type: ignore[return-value]


def drop_repeated(data: np.ndarray, max_count: int = 5) -> np.ndarray:
    """Indices of the columns to keep: drop a column whose smallest value occurs more than
    ``max_count`` times.

    This is the published criterion for "features with too many repeated values" (HEPMASS,
    MINIBOONE): discrete or clipped features pile up on their minimum; continuous ones do not.
    """
    keep = [j for j in range(data.shape[1]) if np.count_nonzero(data[:, j] == data[:, j].min()) <= max_count]
    return np.asarray(keep, dtype=np.int64)


def drop_correlated(data: np.ndarray, threshold: float = 0.98) -> np.ndarray:
    """Indices of the columns to keep: repeatedly drop the first column whose Pearson correlation
    with another column exceeds ``threshold`` (the published GAS cleaning)."""
    keep = list(range(data.shape[1]))
    while len(keep) > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(data[:, keep], rowvar=False)
        counts = (np.nan_to_num(corr, nan=0.0) > threshold).sum(1)
        bad = np.flatnonzero(counts > 1)
        if len(bad) == 0:
            break
        del keep[int(bad[0])]
    return np.asarray(keep, dtype=np.int64)


def load_power(root: str, dtype: torch.dtype | None = None, seed: int = 42) -> Split:
    """POWER (household electric power consumption), D = 6.

    ``power/data.npy`` holds 8 columns: active power, reactive power, voltage, intensity, three
    sub-meterings, minute of day. Reactive power and intensity are dropped; ties are broken with
    uniform noise of width 0.001 (active power), 0.01 (voltage) and 1 (sub-meterings), none on
    the time. Shuffle and noise use ``numpy.random.RandomState(seed)`` in the published order.
    """
    data = _check_matrix("POWER", np.load(_need(os.path.join(root, "power", "data.npy"), "POWER")), 8)
    rng = np.random.RandomState(seed)
    data = np.array(data)
    rng.shuffle(data)
    data = np.delete(data, [1, 3], axis=1)
    n = len(data)
    voltage = 0.01 * rng.rand(n, 1)
    active = 0.001 * rng.rand(n, 1)
    meters = rng.rand(n, 3)
    data = data + np.hstack([active, voltage, meters, np.zeros((n, 1))])
    return _tensors(split_standardise(data, shuffle=False), dtype)


def _read_pickle(path: str) -> tuple[np.ndarray, list[str]]:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            f"GAS: reading {path!r} (a pandas DataFrame pickle) needs pandas: pip install pandas"
        ) from None
    frame = pd.read_pickle(path)
    return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns]


def load_gas(root: str, dtype: torch.dtype | None = None, seed: int = 42) -> Split:
    """GAS (ethylene and CO sensor array), D = 8. Needs pandas to read the pickle.

    Columns ``Meth``, ``Eth`` and ``Time`` are dropped, then (repeatedly) the first column whose
    correlation with another exceeds 0.98 (:func:`drop_correlated`).
    """
    path = _need(os.path.join(root, "gas", "ethylene_CO.pickle"), "GAS")
    values, columns = _read_pickle(path)
    kept = [j for j, c in enumerate(columns) if c not in ("Meth", "Eth", "Time")]
    data = _check_matrix("GAS", values[:, kept])
    data = data[:, drop_correlated(data)]
    return _tensors(split_standardise(data, seed), dtype)


def _read_csv(path: str) -> tuple[np.ndarray, list[str]]:
    with open(path) as f:
        header = [h.strip() for h in f.readline().rstrip("\n").split(",")]
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as e:
        raise ValueError(f"HEPMASS: cannot parse {path!r} as numeric CSV: {e}") from None
    return data, header[: data.shape[1]]


def load_hepmass(root: str, dtype: torch.dtype | None = None, seed: int = 42) -> Split:
    """HEPMASS (particle-physics signal events, mass 1000), D = 21.

    ``hepmass/1000_train.csv`` and ``1000_test.csv`` have a header line and the class label in
    their first column. Only the positive class (label 1) is kept and the label dropped; test
    columns are matched to the training ones by name, else by position (the published test file
    carries an extra trailing column). Features whose smallest training value repeats more than
    5 times are dropped (:func:`drop_repeated`). The test split is the test file; the last 10% of the shuffled
    training rows are validation; all standardised with the training statistics.
    """
    train, names = _read_csv(_need(os.path.join(root, "hepmass", "1000_train.csv"), "HEPMASS"))
    test, test_names = _read_csv(_need(os.path.join(root, "hepmass", "1000_test.csv"), "HEPMASS"))
    train = train[train[:, 0] == 1, 1:]
    test = test[test[:, 0] == 1, 1:]
    names, test_names = names[1:], test_names[1:]
    if all(c in test_names for c in names):
        test = test[:, [test_names.index(c) for c in names]]
    elif test.shape[1] >= train.shape[1]:
        test = test[:, : train.shape[1]]
    else:
        raise ValueError(
            f"HEPMASS: the test file has {test.shape[1]} features, the training file {train.shape[1]}"
        )
    keep = drop_repeated(train)
    train, test = _check_matrix("HEPMASS", train[:, keep]), test[:, keep]
    np.random.RandomState(seed).shuffle(train)
    n_val = int(0.1 * len(train))
    train, val = train[: len(train) - n_val], train[len(train) - n_val :]
    return _tensors(_standardise(train, val, test), dtype)


def load_miniboone(root: str, dtype: torch.dtype | None = None, seed: int = 42) -> Split:
    """MINIBOONE (particle identification), D = 43.

    ``miniboone/data.npy`` is the published cleaned array; the published cleaning (rows with
    the -999 placeholder in the first column removed, then :func:`drop_repeated`) is re-applied,
    which leaves that file unchanged and also accepts the raw 50-column data.
    """
    path = _need(os.path.join(root, "miniboone", "data.npy"), "MINIBOONE")
    data = _check_matrix("MINIBOONE", np.load(path))
    data = data[data[:, 0] >= -100]
    data = data[:, drop_repeated(data)]
    return _tensors(split_standardise(data, seed), dtype)


def load_bsds300(root: str, dtype: torch.dtype | None = None, seed: int = 42) -> Split:
    """BSDS300 (8 x 8 natural-image patches, last pixel dropped), D = 63. Needs h5py.

    ``BSDS300/BSDS300.hdf5`` holds the datasets ``train``, ``validation`` and ``test``; they are
    used as published (no shuffle, no standardisation; ``seed`` is unused). 64-column arrays
    get their last pixel dropped.
    """
    path = _need(os.path.join(root, "BSDS300", "BSDS300.hdf5"), "BSDS300")
    try:
        import h5py
    except ImportError:
        raise ImportError(f"BSDS300: reading {path!r} (HDF5) needs h5py: pip install h5py") from None
    with h5py.File(path, "r") as f:
        parts = tuple(_check_matrix("BSDS300", np.asarray(f[k])) for k in ("train", "validation", "test"))
    return _tensors(tuple(p[:, :63] for p in parts), dtype)


TABULAR_LOADERS: dict[str, Callable[..., Split]] = {
    "power": load_power,
    "gas": load_gas,
    "hepmass": load_hepmass,
    "miniboone": load_miniboone,
    "bsds300": load_bsds300,
}


def load_tabular(name: str, root: str, dtype: torch.dtype | None = None, seed: int = 42) -> Split:
    """Load a benchmark by name (case-insensitive) from the data folder ``root``."""
    key = str(name).lower()
    if key not in TABULAR_LOADERS:
        raise ValueError(f"unknown tabular dataset {name!r}; choose from {', '.join(TABULAR_LOADERS)}")
    return TABULAR_LOADERS[key](root, dtype=dtype, seed=seed)


def write_synthetic(name: str, root: str, n: int = 2000, seed: int = 0) -> str:
    """Write a small random file in the layout of ``name`` under ``root`` (smoke tests).

    The columns mimic what the cleaning expects (a discrete column to drop, near-duplicates, a
    label), so the loaders' cleaning runs for real. GAS needs pandas, BSDS300 h5py.

    Returns:
        the data folder ``root``.
    """
    rng = np.random.RandomState(seed)
    key = str(name).lower()
    if key == "power":
        x = rng.randn(n, 8)
        x[:, 7] = rng.randint(0, 1440, n)
        _save(np.save, os.path.join(root, "power", "data.npy"), x)
    elif key == "miniboone":
        x = rng.randn(n, 45)
        x[:, 44] = np.maximum(x[:, 44], 0.0)
        _save(np.save, os.path.join(root, "miniboone", "data.npy"), x)
    elif key == "hepmass":
        for split in ("train", "test"):
            label, discrete, mass = rng.randint(0, 2, n), rng.randint(0, 3, n), np.full(n, 1000.0)
            x = np.column_stack([label, rng.randn(n, 22), discrete, mass])
            header = ",".join(["# label"] + [f"f{i}" for i in range(23)] + ["mass"])
            if split == "test":
                x, header = np.column_stack([x, np.zeros(n)]), header + ",extra"
            _save(lambda p, a, h=header: np.savetxt(p, a, delimiter=",", header=h, comments=""),
                  os.path.join(root, "hepmass", f"1000_{split}.csv"), x)
    elif key == "gas":
        import pandas as pd

        x = rng.randn(n, 10)
        x[:, 9] = x[:, 8] + 1e-3 * rng.randn(n)
        cols = ["Time", "Meth", "Eth"] + [f"s{i}" for i in range(10)]
        frame = pd.DataFrame(np.column_stack([rng.rand(n, 3), x]), columns=cols)
        _save(lambda p, a: a.to_pickle(p), os.path.join(root, "gas", "ethylene_CO.pickle"), frame)
    elif key == "bsds300":
        import h5py

        path = os.path.join(root, "BSDS300", "BSDS300.hdf5")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with h5py.File(path, "w") as f:
            for split, m in (("train", n), ("validation", n // 10), ("test", n // 10)):
                f[split] = rng.rand(m, 63)
    else:
        raise ValueError(f"unknown tabular dataset {name!r}; choose from {', '.join(TABULAR_LOADERS)}")
    return root


def _save(writer: Callable, path: str, data: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer(path, data)
