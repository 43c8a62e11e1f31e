r"""Outlier scoring with a flow: negative log-density scores and conformal p-values."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from torchnf.inference._common import check_count, chunks, mode

__all__ = ["OutlierDetector"]

_KEY = "outlier_calibration_scores"


class OutlierDetector:
    r"""Flags points that are unlikely under a fitted flow, with a guaranteed false-alarm rate.

    The score of ``x`` is its negative log-density under the flow, :math:`s(x) = -\log q(x)`.
    :meth:`calibrate` stores the scores :math:`s_1..s_n` of held-out clean data (not used to fit
    the flow); the conformal p-value of a new point is

    .. math:: p(x) = \frac{1 + \#\{i: s_i \ge s(x)\}}{n + 1},

    and :meth:`predict` flags ``p(x) <= alpha``. If the new point and the calibration points are
    exchangeable (clean data from the same distribution), ``P(p(x) <= alpha) <= alpha`` exactly, and
    ``>= alpha - 1/(n+1)`` when scores have no ties: the false-alarm rate is ``alpha`` whatever the
    quality of the flow. A better flow only raises the detection rate.

    Scoring evaluates densities (the flow's forward direction): MAF and coupling flows are cheap,
    IAF needs ``dim`` passes. Points outside the flow's support get score ``+inf`` (p-value
    ``1/(n+1)``); NaN densities raise.

    Args:
        flow: a fitted :class:`~torchnf.Flow`.
        batch: points per evaluation batch.

    Example:
        >>> import torchnf as nf
        >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(8,)))
        >>> det = nf.OutlierDetector(flow).calibrate(torch.randn(999, 2))
        >>> det.predict(torch.tensor([[0.0, 0.0], [6.0, 6.0]]), alpha=0.01).tolist()
        [False, True]

    References:
        Vovk, Gammerman, Shafer, "Algorithmic Learning in a Random World", 2005 (conformal
        p-values). Laxhammar, Falkman, "Conformal prediction for distribution-independent anomaly
        detection in streaming vessel data", 2010.
    """

    def __init__(self, flow: Any, batch: int = 8192) -> None:
        self.flow = flow
        self.batch = check_count("OutlierDetector", "batch", batch)
        self._scores: Tensor | None = None

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Negative log-density ``-log q(x)`` of ``x`` ``(N, *event)`` -> ``(N,)`` (float64, CPU).

        A conditional flow takes ``context`` of shape ``(N, context_dim)`` or ``(context_dim,)``.
        """
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise ValueError(f"OutlierDetector: expected x of shape (N, *event), got {type(x).__name__}")
        out, start = [], 0
        with torch.no_grad(), mode(self.flow, False):
            for m in chunks(x.shape[0], self.batch):
                c = context if context is None or context.dim() < 2 else context[start : start + m]
                out.append(-self.flow.log_prob(x[start : start + m], context=c).double().cpu())
                start += m
        s = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
        if bool(torch.isnan(s).any()):
            rows = s.isnan().nonzero().flatten()[:5].tolist()
            raise ValueError(f"OutlierDetector: the flow returned NaN densities (first rows: {rows})")
        return s

    def calibrate(self, x_clean: Tensor, context: Tensor | None = None) -> OutlierDetector:
        """Store the scores of clean held-out data (at least 20 points; ``1/alpha`` or more for a
        level ``alpha`` to be attainable). Returns ``self``."""
        s = self.score(x_clean, context)
        if s.numel() < 20:
            raise ValueError(f"OutlierDetector.calibrate: needs at least 20 clean points, got {s.numel()}")
        self._scores = torch.sort(s).values
        return self

    @property
    def calibration_scores(self) -> Tensor:
        """Sorted calibration scores ``(n,)``."""
        if self._scores is None:
            raise RuntimeError("OutlierDetector: call calibrate(x_clean) first")
        return self._scores

    def pvalues_of_scores(self, s: Tensor) -> Tensor:
        """Conformal p-values of precomputed scores."""
        cal = self.calibration_scores
        n = cal.numel()
        greater_equal = n - torch.searchsorted(cal, s.to(cal), right=False)
        return (1.0 + greater_equal.to(torch.float64)) / (n + 1.0)

    def pvalues(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Conformal p-values ``(1 + #{calibration scores >= s(x)}) / (n + 1)``, ``(N,)`` float64."""
        return self.pvalues_of_scores(self.score(x, context))

    def predict(self, x: Tensor, alpha: float = 0.01, context: Tensor | None = None) -> Tensor:
        """``True`` for points flagged as outliers (``p-value <= alpha``), ``(N,)`` bool."""
        if not 0 < alpha < 1:
            raise ValueError(f"OutlierDetector.predict: alpha must be in (0, 1), got {alpha}")
        n = self.calibration_scores.numel()
        if alpha < 1.0 / (n + 1):
            raise ValueError(
                f"OutlierDetector.predict: alpha={alpha} is below 1/(n+1) = {1 / (n + 1):.3g}: with {n} "
                "calibration points nothing could ever be flagged; calibrate on more data"
            )
        return self.pvalues(x, context) <= alpha

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The calibration (not the flow's weights): ``{"scores": (n,)}``."""
        return {"scores": self.calibration_scores.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> OutlierDetector:
        scores = state.get("scores") if isinstance(state, dict) else None
        if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.numel() < 20:
            raise ValueError("OutlierDetector.load_state_dict: expected {'scores': 1-D tensor, >= 20 scores}")
        self._scores = torch.sort(scores.double().cpu()).values
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the flow (config and weights, as :meth:`Flow.save`) and the calibration to one file."""
        self.flow.save(path, **{_KEY: self.calibration_scores.clone()})

    @classmethod
    def load(cls, path: str | os.PathLike, batch: int = 8192) -> OutlierDetector:
        """Rebuild a detector written by :meth:`save` (no user code needed)."""
        from torchnf.flow import load

        flow = load(path)
        extra = torch.load(path, map_location="cpu", weights_only=True).get("extra", {})
        if _KEY not in extra:
            raise ValueError(f"{os.fspath(path)!r} holds a flow but no outlier calibration")
        return cls(flow, batch).load_state_dict({"scores": extra[_KEY]})

    def __repr__(self) -> str:
        n = 0 if self._scores is None else self._scores.numel()
        return f"OutlierDetector(flow={type(self.flow.bijection).__name__}, calibrated on {n} points)"
