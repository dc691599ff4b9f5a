"""Holdout split, walk-forward prediction and the metrics every model is judged by.

The holdout is the last ``holdout_fraction`` of the rows in time; tuning only ever sees the
rows before it whose target is known before the holdout starts (a purge gap of H). The
holdout is then predicted walk-forward: split into ``steps`` chunks, each predicted by a model
refitted on every row whose target is known before that chunk starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.training.gate import LOSS
from rtml_core.training.models import mean_last_10_return, zero_return


@dataclass(frozen=True)
class Split:
    development: np.ndarray  # row indices tuning and fitting may use
    holdout: np.ndarray  # row indices only evaluation sees


def split_holdout(times_ns: np.ndarray, holdout_fraction: float, gap_ns: int, min_rows: int = 50) -> Split:
    """Last ``holdout_fraction`` of the rows, with development rows purged by ``gap_ns``."""
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    n = len(times_ns)
    first = int(np.floor(n * (1.0 - holdout_fraction)))
    holdout = np.arange(first, n)
    development = np.flatnonzero(times_ns[:first] + gap_ns <= times_ns[first]) if first < n else np.arange(0)
    if len(holdout) < min_rows or len(development) < min_rows:
        raise InputError(
            f"training set of {n} rows gives {len(development)} development and {len(holdout)} holdout "
            f"rows; at least {min_rows} of each are needed (widen the time range)"
        )
    return Split(development=development, holdout=holdout)


def walk_forward_predict(
    fit: Callable[[np.ndarray, np.ndarray], object],
    X: np.ndarray,
    y: np.ndarray,
    times_ns: np.ndarray,
    holdout: np.ndarray,
    gap_ns: int,
    steps: int = 2,
) -> np.ndarray:
    """Predictions for ``holdout`` rows, each chunk from a model fitted on the rows before it."""
    predictions = np.empty(len(holdout))
    for chunk in np.array_split(np.arange(len(holdout)), max(1, steps)):
        if len(chunk) == 0:
            continue
        rows = holdout[chunk]
        train = np.flatnonzero(times_ns + gap_ns <= times_ns[rows[0]])
        model = fit(X[train], y[train])
        predictions[chunk] = model.predict(X[rows])
    return predictions


def _direction_hits(predicted: np.ndarray, realized: np.ndarray) -> float:
    """Share of moves called right; a flat prediction counts as half a hit, flat moves are skipped."""
    moved = realized != 0
    if not moved.any():
        return float("nan")
    hits = np.where(predicted[moved] == 0, 0.5, (np.sign(predicted[moved]) == np.sign(realized[moved])))
    return float(np.mean(hits))


def price_metrics(predicted_return: np.ndarray, frame: pd.DataFrame) -> dict[str, float]:
    """Errors of the return (the judged loss: squared error) and of the price, directional
    accuracy, residual std of the return."""
    price = frame["price"].to_numpy(np.float64)
    realized_price = frame["target_price"].to_numpy(np.float64)
    realized = frame["target"].to_numpy(np.float64)
    predicted_price = price * np.exp(predicted_return)
    error = predicted_price - realized_price
    mse = float(np.mean((predicted_return - realized) ** 2))
    return {
        "loss": mse,
        "mse_return": mse,
        "rmse_return": float(np.sqrt(mse)),
        "mae_return": float(np.mean(np.abs(predicted_return - realized))),
        "mae_price": float(np.mean(np.abs(error))),
        "rmse_price": float(np.sqrt(np.mean(error**2))),
        "directional_accuracy": _direction_hits(predicted_return, realized),
        "residual_std": float(np.std(realized - predicted_return, ddof=1)) if len(realized) > 1 else float("nan"),
    }


def evaluate(predicted_return: np.ndarray, frame: pd.DataFrame) -> dict[str, float]:
    """Model metrics on ``frame`` (the holdout) plus both baselines' and the skill against each.

    ``loss`` is the judged loss, the mean squared error of the log return (what every model is
    fitted on). Skill = 1 - loss_model / loss_baseline (> 0: better than the baseline). MAE and
    RMSE of the return and of the price are reported beside.
    """
    model = price_metrics(predicted_return, frame)
    mean10 = price_metrics(mean_last_10_return(frame), frame)
    zero = price_metrics(zero_return(frame), frame)
    out = dict(model)
    out["loss_name"] = LOSS
    out["n_rows"] = float(len(frame))
    for name, values in (("baseline_mean10", mean10), ("baseline_zero", zero)):
        for key in ("loss", "rmse_return", "mae_return", "mae_price", "rmse_price"):
            out[f"{name}_{key}"] = values[key]
    out["baseline_mean10_directional_accuracy"] = mean10["directional_accuracy"]
    out["skill_vs_mean10"] = _skill(model["loss"], mean10["loss"])
    out["skill_vs_zero"] = _skill(model["loss"], zero["loss"])
    return out


def _skill(model_loss: float, baseline_loss: float) -> float:
    if baseline_loss == 0:
        return 0.0 if model_loss == 0 else float("-inf")
    return 1.0 - model_loss / baseline_loss
