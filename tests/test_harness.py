"""Every registered bijection and architecture through the property harness (``torchnf.testing``).

Cases live in ``tests/cases/<family>.py``; each case runs in float64 (tight tolerances) and float32,
with a context when its bijection is conditional. The ``torch.compile`` test is slow and opt-in.
"""

from __future__ import annotations

import pytest
import torch

from cases import all_cases
from torchnf.testing import check_bijection, check_compiled

CASES = all_cases()


def _param(case):
    """A known failure of library code (``case.extra["xfail"]``: the reason) is a strict xfail, so
    the suite stays green and flags the fix."""
    reason = case.extra.get("xfail")
    marks = [pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError)] if reason else []
    return pytest.param(case, marks=marks, id=case.name)


DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def test_case_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bijection_properties(case, dtype):
    check_bijection(case, dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.compile], ids=lambda c: c.name)
def test_compiled_matches_eager(case):
    check_compiled(case, dtype=torch.float32)
