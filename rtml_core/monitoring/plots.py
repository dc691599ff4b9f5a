"""PNG plots of the monitoring assets (matplotlib's object API on the Agg canvas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtml_core.monitoring.drift import PSI_MAJOR, PSI_MODERATE
from rtml_core.training.plots import _png


def live_performance_png(joined: pd.DataFrame, window: int = 50, max_points: int = 4000) -> bytes:
    """Top: realized price at t + H and each model version's predicted price. Bottom: rolling
    mean absolute error of the model against the mean-of-last-10 and zero-return baselines."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    frame = joined.sort_values("feature_time")
    due = pd.to_datetime(frame["feature_time"], utc=True) + pd.to_timedelta(frame["horizon_s"], unit="s")
    step = max(1, len(frame) // max_points)
    top.plot(due.iloc[::step], frame["target_price"].iloc[::step], color="black", linewidth=1, label="realized")
    predicted = frame["price"] * np.exp(frame["predicted_return"])
    for version, rows in frame.groupby("model_version", sort=True):
        index = rows.index
        top.scatter(due.loc[index].iloc[::step], predicted.loc[index].iloc[::step], s=5, alpha=0.6,
                    label=f"model {version}")
        error = (predicted.loc[index] - rows["target_price"]).abs().rolling(window, min_periods=1).mean()
        bottom.plot(due.loc[index], error, linewidth=1, label=f"model {version}")
    baseline = (frame["baseline_price"] - frame["target_price"]).abs().rolling(window, min_periods=1).mean()
    zero = (frame["price"] - frame["target_price"]).abs().rolling(window, min_periods=1).mean()
    bottom.plot(due, baseline, color="grey", linestyle="--", linewidth=1, label="mean of last 10")
    bottom.plot(due, zero, color="grey", linestyle=":", linewidth=1, label="zero return")
    top.set_ylabel("price at t + H")
    top.set_title("predicted against realized (live)")
    top.legend(loc="upper left", fontsize=7)
    bottom.set_ylabel(f"MAE, rolling {window}")
    bottom.legend(loc="upper left", fontsize=7)
    figure.autofmt_xdate()
    return _png(figure)


def drift_png(table: pd.DataFrame, over_time: pd.DataFrame | None = None) -> bytes:
    """PSI per feature (bars, thresholds marked) and, when given, PSI per day (max and median)."""
    from matplotlib.figure import Figure

    has_time = over_time is not None and len(over_time) > 0
    figure = Figure(figsize=(8, 0.22 * len(table) + (4.5 if has_time else 1.5)))
    axes = figure.subplots(2, 1, height_ratios=(max(len(table), 4) * 0.22, 2.5)) if has_time else [figure.subplots()]
    shown = table.fillna({"psi": 0.0}).sort_values("psi")
    colours = ["tab:red" if v >= PSI_MAJOR else "tab:orange" if v >= PSI_MODERATE else "tab:green"
               for v in shown["psi"]]
    axes[0].barh(shown["feature"], shown["psi"], color=colours)
    for x in (PSI_MODERATE, PSI_MAJOR):
        axes[0].axvline(x, color="grey", linestyle="--", linewidth=0.8)
    axes[0].set_title("PSI of each feature, last day against the champion's training set")
    axes[0].tick_params(axis="y", labelsize=7)
    if has_time:
        axes[1].plot(over_time["day"], over_time["max_psi"], marker="o", label="max over features")
        axes[1].plot(over_time["day"], over_time["median_psi"], marker="o", label="median")
        for y in (PSI_MODERATE, PSI_MAJOR):
            axes[1].axhline(y, color="grey", linestyle="--", linewidth=0.8)
        axes[1].set_ylabel("PSI per day")
        axes[1].set_title("drift over time (dashed: 0.1 moderate, 0.25 major)")
        axes[1].legend(fontsize=7)
        figure.autofmt_xdate()
    return _png(figure)
