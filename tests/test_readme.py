"""The README's Python examples run verbatim, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = _blocks()
    assert len(blocks) >= 3, "the README lost its API examples"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), ns)
    # The simple job produced what it says.
    assert ns["log_p"].shape == (5,) and torch.isfinite(ns["log_p"]).all()
    assert ns["samples"].shape == (50, 2)
    assert torch.allclose(ns["x_back"], ns["x"][:5], atol=1e-4)
    assert torch.allclose(ns["same"].log_prob(ns["x"][:5]), ns["flow"].log_prob(ns["x"][:5]))
    assert ns["history"].val[-1] < ns["history"].val[0]
