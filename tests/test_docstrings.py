"""The docstring examples of every public torchnf module run as doctests.

Each example sees ``nf`` (torchnf) and ``torch`` already imported, starts from ``torch.manual_seed(0)``
and runs in a temporary working directory (so an example that writes a file leaves nothing behind).
Outputs are compared with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``.

A module whose examples are known to be wrong while its owner is still writing it goes in ``SKIP``
with a reason naming the module; finished modules get their docstrings fixed instead.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest
import torch

import torchnf

# module name -> why its examples are skipped (empty: every module's examples pass).
SKIP: dict[str, str] = {}

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_modules() -> list[str]:
    names = ["torchnf"]
    for info in pkgutil.walk_packages(torchnf.__path__, "torchnf."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


MODULES = _public_modules()


def _doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    # The finder only descends into objects defined in the module, not those it imports.
    return finder.find(module, name, extraglobs={"nf": torchnf, "torch": torch})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name in SKIP:
        pytest.skip(f"{name}: {SKIP[name]}")
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = io.StringIO()
    for test in _doctests(name):
        torch.manual_seed(0)
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}:\n{report.getvalue()}"


def test_the_doctests_are_found():
    """Guards the collection itself: the finder sees the examples of the core modules."""
    counts = {name: sum(len(t.examples) for t in _doctests(name)) for name in
              ("torchnf.core", "torchnf.flow", "torchnf.training", "torchnf.architectures.core")}
    assert all(n >= 2 for n in counts.values()), counts
    assert len(MODULES) > 30 and "torchnf.bijections.coupling" in MODULES


def test_a_wrong_example_fails(tmp_path):
    """The runner set-up (globals, option flags) reports a wrong expected output as a failure."""
    parser = doctest.DocTestParser()
    good = parser.get_doctest(">>> nf.Flow(nf.MAF(2, layers=1, hidden=(4,))).sample(3).shape\n"
                              "torch.Size([3, 2])\n", {"nf": torchnf, "torch": torch}, "good", None, 0)
    bad = parser.get_doctest(">>> torch.zeros(2).sum()\ntensor(1.)\n", {"torch": torch}, "bad", None, 0)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    assert runner.run(good, out=lambda s: None).failed == 0
    assert runner.run(bad, out=lambda s: None).failed == 1
