"""PNG plots for the Dagster UI (matplotlib's object API with the Agg canvas: no global state)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def predicted_vs_realized_png(
    realized_return: np.ndarray, predicted_return: np.ndarray, title: str, max_points: int = 5000
) -> bytes:
    """Scatter of predicted against realized return (bps) with the y = x line."""
    from matplotlib.figure import Figure

    step = max(1, len(realized_return) // max_points)
    x = np.asarray(realized_return)[::step] * 1e4
    y = np.asarray(predicted_return)[::step] * 1e4
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.scatter(x, y, s=4, alpha=0.4)
    if len(x):
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=1, label="y = x")
        axes.legend(loc="upper left")
    axes.set_xlabel("realized return (bps)")
    axes.set_ylabel("predicted return (bps)")
    axes.set_title(title)
    return _png(figure)


def feature_importance_png(names: Sequence[str], importances: np.ndarray, title: str, top: int = 20) -> bytes:
    """Horizontal bars of the ``top`` largest importances."""
    from matplotlib.figure import Figure

    order = np.argsort(importances)[::-1][:top][::-1]
    figure = Figure(figsize=(5, 0.25 * len(order) + 1.2))
    axes = figure.add_subplot()
    axes.barh([names[i] for i in order], np.asarray(importances)[order])
    axes.set_title(title)
    return _png(figure)


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown embedding a PNG as a base64 data URI (renders in Dagster's metadata panel)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def reliability_png(prob_up: np.ndarray, realized_return: np.ndarray, title: str, bins: int = 10) -> bytes:
    """Reliability diagram: mean prob_up against the realized share of up moves per bin."""
    from matplotlib.figure import Figure

    from rtml_core.training.calibration import reliability_table

    table = reliability_table(prob_up, realized_return, bins)
    figure = Figure(figsize=(4.5, 4))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linewidth=1, label="perfectly calibrated")
    if table:
        predicted, realized, _ = zip(*table)
        axes.plot(predicted, realized, marker="o", label="holdout bins (equal rows)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean prob_up")
    axes.set_ylabel("realized share up (flat = not up)")
    axes.legend(loc="upper left")
    axes.set_title(title)
    return _png(figure)
