"""The docstring examples of every public torchnf module run as doctests; so do the user guide's.

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
import re
import textwrap
from pathlib import Path

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


# --------------------------------------------------------------------------------------------
# The user guide: every ```python block of docs/*.md runs, in order, one namespace per page.
# --------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"
# The pages whose snippets this file runs (docs/guide_directions.md has its own owner and tests).
PAGES = ["index.md", "families.md", "training.md", "testing.md", "cli.md"]


def _python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page, indentation inside list items removed."""
    blocks = []
    for indent, body in re.findall(r"^( *)```python\n(.*?)^\1```", page.read_text(), flags=re.S | re.M):
        blocks.append(textwrap.dedent("\n".join(line[len(indent):] for line in body.splitlines())))
    return blocks


@pytest.mark.parametrize("page", PAGES)
def test_docs_snippets_run(page, tmp_path, monkeypatch):
    path = DOCS / page
    if not path.exists():
        pytest.skip(f"docs/{page} not written yet")
    blocks = _python_blocks(path)
    assert blocks, f"docs/{page} has no python block"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    for i, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"docs/{page} (python block {i})", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/{page}, python block {i}: {type(e).__name__}: {e}\n{code}") from e


# Pages other engineers are still writing; a link to one is accepted only while it is missing.
PENDING = {"benchmarks/README.md"}


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p}" for p in PAGES)])
def test_relative_links_resolve(page):
    root = DOCS.parent
    path = root / page
    if not path.exists():
        pytest.skip(f"{page} not written yet")
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.exists() and str(resolved.relative_to(root)) not in PENDING:
            broken.append(target)
    assert not broken, f"{page} links to missing files: {broken}"
