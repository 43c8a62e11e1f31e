"""Outlier detection with a flow and conformal p-values.

Fits a RealNVP to a 2-D toy density ("moons"), calibrates an ``OutlierDetector`` on held-out clean
data, and reports the false-alarm rate on fresh clean data (which matches alpha whatever the flow's
quality) and the detection rate on data shifted by increasing amounts (which a better flow raises).

    OMP_NUM_THREADS=1 python examples/outliers.py
"""

from __future__ import annotations

import math
import os
import tempfile

import torch

import torchnf as nf
from torchnf import datasets


def main() -> None:
    torch.manual_seed(0)
    density = datasets.get("moons")
    train, calib, test = (density.sample(n, seed=s) for n, s in ((5000, 0), (2000, 1), (20_000, 2)))
    flow = nf.Flow(nf.RealNVP(2, layers=6, hidden=(64, 64)))
    flow.fit(train, epochs=60, progress=False)

    detector = nf.OutlierDetector(flow).calibrate(calib)
    for alpha in (0.01, 0.05):
        fa = detector.predict(test, alpha=alpha).double().mean().item()
        sd = math.sqrt(alpha * (1 - alpha) * (1 / calib.shape[0] + 1 / test.shape[0]))
        rates = [detector.predict(test + torch.tensor([0.0, d]), alpha=alpha).double().mean().item()
                 for d in (0.25, 0.5, 1.0)]
        print(f"alpha {alpha:.2f}: false alarms {fa:.4f} (expected {alpha} +- {sd:.4f}); detection of "
              f"data shifted up by 0.25 / 0.5 / 1.0: {rates[0]:.3f} / {rates[1]:.3f} / {rates[2]:.3f}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "moons_detector.pt")
        detector.save(path)  # the flow and its calibration in one file
        again = nf.OutlierDetector.load(path)
    print("reloaded detector gives the same p-values:",
          bool(torch.equal(again.pvalues(test[:100]), detector.pvalues(test[:100]))))


if __name__ == "__main__":
    main()
