"""Registry of property-harness cases: every module here defines ``CASES: list[torchnf.testing.Case]``.

``all_cases()`` collects them; tests/test_harness.py runs every property over every case.
"""

from __future__ import annotations

import importlib
import pkgutil


def all_cases():
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        cases.extend(getattr(module, "CASES", []))
    return cases
