"""Logged predictions against what the market then did.

A prediction served on the features of the candle that closed at ``t`` (its
``feature_time``) predicts the price at ``t + horizon_s``. The same conventions as the
training sets (``rtml_core.training.datasets``) make the live scores comparable to the holdout:

- the realized price at T is the close of the last candle closed at or before T;
- a prediction whose target candle is missing (a gap in the candles) is dropped and counted;
- one whose ``t + H`` is after the last closed candle is pending (its horizon has not passed);
- the mean-of-last-10 baseline at t is the mean of the last 10 closes at or before t, and the
  zero-return baseline is the logged price itself.

Metrics come from ``rtml_core.training.evaluation.evaluate``, as on the holdout: MAE/RMSE of the
predicted price, directional accuracy, and skill = 1 - loss_model / loss_baseline against each
baseline, the loss being the one every model is judged by (squared error of the log return).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtml_core.timeframes import NS, timeframe_seconds
from rtml_core.training.datasets import BASELINE_WINDOW
from rtml_core.training.evaluation import evaluate

PREDICTION_COLUMNS = ("feature_time", "model_version", "horizon_s", "price", "predicted_return")
METRIC_COLUMNS = (
    "model_version", "n", "mae_price", "rmse_price", "directional_accuracy", "baseline_zero_mae_price",
    "baseline_mean10_mae_price", "skill_vs_zero", "skill_vs_mean10", "first", "last",
)


@dataclass(frozen=True)
class RealizedJoin:
    """``frame``: the matured predictions with ``target_price``, ``target`` (realized log return),
    ``baseline_price``; ``pending``: horizon not passed yet; ``gaps``: target candle missing."""

    frame: pd.DataFrame
    pending: int
    gaps: int


def _ns(column: pd.Series) -> np.ndarray:
    return pd.to_datetime(column, utc=True).astype("datetime64[ns, UTC]").to_numpy("datetime64[ns]").astype(np.int64)


def join_realized(predictions: pd.DataFrame, candles: pd.DataFrame, timeframe: str) -> RealizedJoin:
    """Join one market's predictions (``PREDICTION_COLUMNS``) with its candles (``time`` = start, ``close``)."""
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns: {', '.join(missing)}")
    step = timeframe_seconds(timeframe) * NS
    empty = predictions.iloc[0:0].assign(target_price=[], target=[], baseline_price=[])
    if len(predictions) == 0:
        return RealizedJoin(empty, 0, 0)
    if len(candles) == 0:
        return RealizedJoin(empty, len(predictions), 0)
    candles = candles.sort_values("time")
    close_ns = _ns(candles["time"]) + step  # a candle is known at its close
    closes = candles["close"].to_numpy(np.float64)
    t = _ns(predictions["feature_time"])
    due = t + predictions["horizon_s"].to_numpy(np.int64) * NS
    matured = due <= close_ns[-1]
    # index of the last candle closed at or before T (-1: none)
    at_due = np.searchsorted(close_ns, due, side="right") - 1
    at_t = np.searchsorted(close_ns, t, side="right") - 1
    found = (at_due >= 0) & (close_ns[np.maximum(at_due, 0)] > due - step)  # the candle closing in (T - tf, T]
    gap = matured & ~found
    keep = matured & found & (at_t >= 0)
    cumulative = np.concatenate([[0.0], np.cumsum(closes)])
    start = np.maximum(at_t + 1 - BASELINE_WINDOW, 0)
    mean10 = (cumulative[at_t + 1] - cumulative[start]) / np.maximum(at_t + 1 - start, 1)
    frame = predictions.loc[keep].copy()
    frame["target_price"] = closes[at_due[keep]]
    frame["target"] = np.log(frame["target_price"].to_numpy(np.float64) / frame["price"].to_numpy(np.float64))
    frame["baseline_price"] = mean10[keep]
    return RealizedJoin(frame.reset_index(drop=True), int((~matured).sum()), int(gap.sum()))


def live_metrics(joined: pd.DataFrame) -> pd.DataFrame:
    """One row per model version (``METRIC_COLUMNS``), ordered by version, from ``join_realized``'s frame."""
    rows = []
    for version, group in joined.groupby("model_version", sort=True):
        scores = evaluate(group["predicted_return"].to_numpy(np.float64), group)
        times = pd.to_datetime(group["feature_time"], utc=True)
        rows.append({
            "model_version": str(version), "n": len(group), "mae_price": scores["mae_price"],
            "rmse_price": scores["rmse_price"], "directional_accuracy": scores["directional_accuracy"],
            "baseline_zero_mae_price": scores["baseline_zero_mae_price"],
            "baseline_mean10_mae_price": scores["baseline_mean10_mae_price"],
            "skill_vs_zero": scores["skill_vs_zero"], "skill_vs_mean10": scores["skill_vs_mean10"],
            "first": times.min(), "last": times.max(),
        })
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
