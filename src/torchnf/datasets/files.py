"""Reading and writing user data tables (``.npy`` and comma- or whitespace-separated text).

These back the ``torchnf`` command line and are handy in scripts: :func:`read_table` returns a
finite ``(N, D)`` float64 array or raises a ``ValueError`` that names the offending rows.

Example:
    >>> from torchnf.datasets import parse_columns, read_table
    >>> x = read_table("data.csv")  # doctest: +SKIP
    >>> parse_columns("0,3:5", 6)
    [0, 3, 4]
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["read_table", "write_table", "check_table_path", "parse_columns"]

_TEXT = (".csv", ".txt", ".tsv")


def check_table_path(path: str) -> str:
    """Check that ``path`` has a supported table extension (``.npy``, ``.csv``, ``.txt``, ``.tsv``)."""
    ext = os.path.splitext(path)[1].lower()
    if ext != ".npy" and ext not in _TEXT:
        raise ValueError(f"unsupported table format {ext or '(no extension)'!r} for {path}: use .npy or .csv")
    return path


def read_table(path: str) -> np.ndarray:
    """Read ``.npy`` or ``.csv``/``.txt``/``.tsv`` (header line optional) into ``(N, D)`` float64.

    A 1-D array is read as one column. Text files are comma-separated when their first line holds
    a comma, else whitespace-separated; a first line that is not all numbers is a header.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported extension, unparsable or empty content, or rows holding NaN,
            inf or non-numeric cells (the message lists the first of them, 0-based, header not
            counted).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    ext = os.path.splitext(check_table_path(path))[1].lower()
    if ext == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"cannot read {path} as a .npy array: {e}") from None
    else:
        data = _read_text(path)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.size == 0 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            f"{path}: expected a non-empty numeric table (rows x columns), got {data.dtype} {data.shape}"
        )
    data = data.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(data).all(1))
    if len(bad):
        rows = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise ValueError(
            f"{path}: {len(bad)} row(s) hold NaN, inf or non-numeric values: rows {rows} "
            "(0-based, header not counted)"
        )
    return data


def _read_text(path: str) -> np.ndarray:
    try:
        with open(path) as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as text: {e}") from None
    delimiter = "," if "," in first else None
    try:
        [float(t) for t in (first.split(delimiter) if delimiter else first.split())]
        header = 0
    except ValueError:
        header = 1
    try:
        return np.genfromtxt(path, delimiter=delimiter, skip_header=header, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"cannot parse {path} as a numeric table: {detail}") from None


def write_table(path: str, data: np.ndarray) -> None:
    """Write an array to ``.npy`` or delimited text (``.csv``/``.txt`` comma, ``.tsv`` tab)."""
    check_table_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lower = path.lower()
    if lower.endswith(".npy"):
        np.save(path, data)
    else:
        np.savetxt(path, data, delimiter="\t" if lower.endswith(".tsv") else ",", fmt="%.9g")


def parse_columns(spec: str | None, ncols: int) -> list[int]:
    """Parse a column selection such as ``"3"``, ``"0,2"``, ``"4:6"`` or ``"-1"`` into sorted indices.

    Raises:
        ValueError: an unparsable or out-of-range entry, or a selection of every column.
    """
    if not spec:
        return []
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                a, b = part.split(":")
                out.update(range(ncols)[slice(int(a) if a else None, int(b) if b else None)])
            else:
                i = int(part)
                if not -ncols <= i < ncols:
                    raise IndexError
                out.add(i % ncols)
        except (ValueError, IndexError):
            msg = f"bad column {part!r} in {spec!r}: the data has columns 0..{ncols - 1}"
            raise ValueError(msg) from None
    if len(out) >= ncols:
        raise ValueError(f"the column selection {spec!r} takes all {ncols} columns, leaving no data columns")
    return sorted(out)
