"""Plots for flows: samples against data, learned 2-D density heat maps, training curves, image grids.

matplotlib is an optional dependency (``pip install torchnf[plot]``); it is imported on first use
and drawn with the Agg canvas directly (no pyplot, so a user's interactive backend is untouched).
Every function writes one image file (the format follows the file extension) and returns its path.

Example:
    >>> import torchnf as nf
    >>> from torchnf import datasets, plotting
    >>> flow = nf.Flow(nf.RealNVP(2, layers=2, hidden=(16, 16)))
    >>> data = datasets.get("moons").sample(500, seed=0)
    >>> plotting.plot_samples(data, flow.sample(500), "samples.png")  # doctest: +SKIP
    'samples.png'
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["plot_samples", "plot_density", "plot_losses", "image_grid", "density_grid", "html_report"]

_MISSING = "plotting needs matplotlib: pip install torchnf[plot]"


def _figure(ncols: int = 1, size: float = 4.0, height: float | None = None) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_MISSING) from None
    fig = Figure(figsize=(size * ncols, height or size), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Any, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"plotting: expected {what} of shape (N, 2), got {x.shape}")
    return x


def plot_samples(
    data: Tensor | np.ndarray,
    samples: Tensor | np.ndarray,
    path: str | os.PathLike,
    lim: float | None = None,
    titles: Sequence[str] = ("data", "flow samples"),
) -> str:
    """Scatter plots of data and flow samples side by side, on the same axes limits.

    Args:
        data: ``(N, 2)`` data points.
        samples: ``(M, 2)`` samples from the model.
        path: output image file.
        lim: half-width of the square shown; default: the 99.5% range of the data, padded.
    """
    a, b = _numpy(data, "data"), _numpy(samples, "samples")
    if lim is None:
        lim = float(np.quantile(np.abs(a), 0.995)) * 1.15 if len(a) else 1.0
    fig, axes = _figure(2)
    for ax, pts, title in zip(axes, (a, b), titles):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.4, linewidths=0, color="tab:blue")
        _square(ax, lim, title)
    return _save(fig, path)


def _square(ax: Any, lim: float, title: str) -> None:
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)


def density_grid(
    log_prob: Callable[[Tensor], Tensor],
    lim: float = 4.0,
    resolution: int = 200,
    dtype: torch.dtype = torch.float32,
    chunk: int = 20000,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate a 2-D log-density on the cell centres of a ``resolution x resolution`` grid.

    Returns:
        ``(centres, log_density)`` with ``centres`` of shape ``(resolution,)`` and
        ``log_density[i, j]`` the value at ``(x = centres[j], y = centres[i])``.
    """
    edges = torch.linspace(-lim, lim, resolution + 1, dtype=torch.float64)
    centres = (edges[1:] + edges[:-1]) / 2
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xx, yy], -1).reshape(-1, 2).to(dtype=dtype, device=device)
    with torch.no_grad():
        values = torch.cat([log_prob(p).to("cpu", torch.float64) for p in points.split(chunk)])
    return centres.numpy(), values.reshape(resolution, resolution).numpy()


def plot_density(
    flow: Any,
    path: str | os.PathLike,
    lim: float = 4.0,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    resolution: int = 200,
    context: Tensor | None = None,
) -> str:
    """Heat map of a 2-D flow's density, side by side with the true density when known.

    Args:
        flow: a 2-D :class:`~torchnf.Flow` (anything with ``log_prob``).
        path: output image file.
        lim: the square ``[-lim, lim]^2`` shown.
        true_log_prob: the true log-density (e.g. ``datasets.get("rings").log_prob``), drawn on
            the same colour scale.
        resolution: grid cells per side.
        context: one context vector ``(context_dim,)`` for a conditional flow.
    """
    ref = next(iter(flow.parameters()), None) if hasattr(flow, "parameters") else None
    dtype, device = (ref.dtype, ref.device) if ref is not None else (torch.float32, None)
    was_training = getattr(flow, "training", False)
    if hasattr(flow, "eval"):
        flow.eval()
    try:
        def model(x: Tensor) -> Tensor:
            return flow.log_prob(x) if context is None else flow.log_prob(x, context=context)

        learned = density_grid(model, lim, resolution, dtype, device=device)[1]
    finally:
        if was_training:
            flow.train()
    maps = [("flow density", np.exp(learned))]
    if true_log_prob is not None:
        maps.insert(0, ("true density", np.exp(density_grid(true_log_prob, lim, resolution)[1])))
    # Colour scale: the true density's peak when known, else a high quantile of the learned one
    # (a single spike of the model would otherwise wash the picture out).
    ref_map = maps[0][1]
    finite = ref_map[np.isfinite(ref_map)]
    vmax = 1.0
    if finite.size:
        vmax = float(finite.max() if true_log_prob is not None else np.quantile(finite, 0.999)) or 1.0
    fig, axes = _figure(len(maps))
    for ax, (title, m) in zip(axes, maps):
        ax.imshow(np.nan_to_num(m, nan=0.0, posinf=vmax), origin="lower", extent=(-lim, lim, -lim, lim),
                  cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        _square(ax, lim, title)
    return _save(fig, path)


def _curves(history: Any) -> dict[str, list[float]]:
    if isinstance(history, dict):
        items = history.items()
    elif hasattr(history, "train"):
        items = (("train", history.train), ("val", getattr(history, "val", None)))
    else:
        items = (("train", history),)
    return {k: [float(v) for v in vals] for k, vals in items if vals is not None and len(vals)}


def plot_losses(
    history: Any,
    path: str | os.PathLike,
    reference: float | None = None,
    ylabel: str = "negative log-likelihood (nats)",
) -> str:
    """Training curves: one line per entry of ``history`` against the epoch.

    Args:
        history: a training History (``.train`` and ``.val`` lists), a dict of lists, or a list.
        path: output image file.
        reference: a level drawn as a dashed line, e.g. the true NLL (the entropy of the data).
    """
    curves = _curves(history)
    if not curves:
        raise ValueError("plot_losses: the history holds no losses")
    fig, (ax,) = _figure(1, 5.0, 3.5)
    for name, vals in curves.items():
        ax.plot(range(1, len(vals) + 1), vals, label=name, marker="o" if len(vals) < 30 else None, ms=3)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=f"truth ({reference:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def image_grid(images: Tensor | np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> str:
    """Tile images into one picture.

    Args:
        images: ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, 3, H, W)``; floats in ``[0, 1]`` or
            ``uint8`` in ``[0, 255]`` (values outside are clipped).
        path: output image file.
        nrow: images per row; default ``ceil(sqrt(N))``.
    """
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"image_grid: expected images of shape (N, H, W) or (N, 1|3, H, W), got {x.shape}")
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    x = np.clip(np.nan_to_num(x), 0.0, 1.0)
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = 1 + r * (h + 1), 1 + q * (w + 1)
        canvas[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    fig, (ax,) = _figure(1, max(2.0, cols * w / 28 * 0.6), max(2.0, rows * h / 28 * 0.6))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    return _save(fig, path)


def html_report(
    path: str | os.PathLike,
    title: str,
    rows: Sequence[tuple[str, str]],
    images: dict[str, str],
) -> str:
    """Write a self-contained ``index.html``: a table of results and the images (linked relatively).

    Args:
        path: output HTML file.
        title: page title.
        rows: ``(label, value)`` pairs shown as a table.
        images: caption -> image path (made relative to the page's folder).
    """
    from html import escape

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    table = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    figures = "\n".join(
        f'<figure><img src="{escape(os.path.relpath(os.path.abspath(p), folder))}" alt="{escape(c)}">'
        f"<figcaption>{escape(c)}</figcaption></figure>"
        for c, p in images.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}th{{text-align:left;padding-right:1.5em}}
td,th{{padding:.2em .5em;border-bottom:1px solid #ddd}}figure{{display:inline-block;margin:1em}}
img{{max-width:100%}}</style></head>
<body><h1>{escape(title)}</h1>
<table>
{table}
</table>
{figures}
</body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
