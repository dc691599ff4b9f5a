"""prob_up: a calibrated P(realized log return over H > 0), flat counted as not-up.

Many targets are exactly zero (40% of ES 1m returns): a Normal around the predicted return
ignores that mass. Instead a logistic calibrator maps the predicted return to P(up), fitted
only on the out-of-fold predictions of the validation folds (never the holdout), and the
holdout reports its Brier score and log loss against the constant base rate. How likely a
flat move is depends on how active the market is, so the calibrator also takes the market's
current activity, ``log1p(natr_14 / its median)`` (``realized_vol_20`` when the feature set
has no ``natr_14``; none when it has neither): quiet markets get a lower P(up). Pure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-6
DEFINITION = "P(log return over H > 0); a flat move (return exactly 0) counts as not-up"


ACTIVITY_FEATURES = ("natr_14", "realized_vol_20")
"""The activity input, first one the feature set has: volatility level, which predicts flat moves."""


def activity_feature(columns) -> str | None:
    return next((name for name in ACTIVITY_FEATURES if name in columns), None)


@dataclass(frozen=True)
class Calibrator:
    """``P(up) = 1 / (1 + exp(-(a + b * predicted / scale + c * log1p(activity / activity_median))))``."""

    a: float
    b: float
    scale: float
    fitted_rows: int
    base_rate: float  # share of up moves in the rows it was fitted on
    c: float = 0.0
    activity: str | None = None  # the feature read at serving time (None: no activity term)
    activity_median: float = 1.0

    def activity_term(self, values) -> np.ndarray | float:
        """``log1p(activity / median)``; a missing or non-finite activity counts as the median."""
        x = np.asarray(values if values is not None else np.nan, np.float64)
        x = np.where(np.isfinite(x) & (x >= 0), x, self.activity_median)
        return np.log1p(x / self.activity_median)

    def prob_up(self, predicted: np.ndarray | float, activity=None) -> np.ndarray | float:
        if isinstance(predicted, float) and (activity is None or isinstance(activity, float)):
            return self._prob_up_one(predicted, activity)  # the API's path: plain floats, no numpy
        z = self.a + self.b * np.asarray(predicted, np.float64) / self.scale
        if self.activity is not None and self.c != 0.0:
            z = z + self.c * self.activity_term(activity)
        out = np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + exp(-z)) without overflow
        return float(out) if np.ndim(out) == 0 else out

    def _prob_up_one(self, predicted: float, activity: float | None) -> float:
        z = self.a + self.b * predicted / self.scale
        if self.activity is not None and self.c != 0.0:
            x = activity if activity is not None and math.isfinite(activity) and activity >= 0 else self.activity_median
            z += self.c * math.log1p(x / self.activity_median)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict:
        return {"method": "logistic", "definition": DEFINITION, "a": self.a, "b": self.b, "scale": self.scale,
                "c": self.c, "activity": self.activity, "activity_median": self.activity_median,
                "fitted_rows": self.fitted_rows, "base_rate": self.base_rate,
                "fitted_on": "out-of-fold predictions of the validation folds"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, doc: dict) -> Calibrator:
        if doc.get("method") != "logistic":
            raise ValueError(f"unknown calibrator method {doc.get('method')!r}")
        return cls(float(doc["a"]), float(doc["b"]), float(doc["scale"]), int(doc["fitted_rows"]),
                   float(doc["base_rate"]), float(doc.get("c", 0.0)), doc.get("activity"),
                   float(doc.get("activity_median", 1.0)))


def up(realized: np.ndarray) -> np.ndarray:
    """1 where the realized return is strictly positive (flat and down are 0)."""
    return (np.asarray(realized, np.float64) > 0).astype(np.float64)


def fit_calibrator(predicted: np.ndarray, realized: np.ndarray, activity: np.ndarray | None = None,
                   activity_name: str | None = None) -> Calibrator:
    """Logistic regression of up/not-up on the (scaled) predicted return and, when given, the
    activity term; constant predictions (the zero baseline) fit on the activity alone."""
    predicted = np.asarray(predicted, np.float64)
    y = up(realized)
    n = len(y)
    if n == 0:
        raise ValueError("a calibrator needs at least one validation row")
    base = float(y.mean())
    scale = float(np.std(predicted))
    use_return = scale > 0 and np.isfinite(scale)
    median = 1.0
    if activity is not None and activity_name is not None:
        values = np.asarray(activity, np.float64)
        finite = values[np.isfinite(values) & (values >= 0)]
        median = float(np.median(finite)) if len(finite) else 0.0
        if not median > 0:
            activity_name = None
    else:
        activity_name = None
    if base in (0.0, 1.0) or (not use_return and activity_name is None):
        rate = (y.sum() + 0.5) / (n + 1.0)  # one class or nothing to condition on: the base rate, smoothed
        return Calibrator(math.log(rate / (1 - rate)), 0.0, 1.0, n, base)
    from sklearn.linear_model import LogisticRegression

    shell = Calibrator(0.0, 0.0, scale if use_return else 1.0, n, base, 0.0, activity_name, median)
    columns = []
    if use_return:
        columns.append(predicted / scale)
    if activity_name is not None:
        columns.append(shell.activity_term(activity))
    model = LogisticRegression(C=1.0, max_iter=1000)
    model.fit(np.column_stack(columns), y.astype(int))
    coef = list(np.ravel(model.coef_))
    b = coef.pop(0) if use_return else 0.0
    c = coef.pop(0) if activity_name is not None else 0.0
    return Calibrator(float(model.intercept_[0]), float(b), shell.scale, n, base, float(c), activity_name, median)


def probability_metrics(prob: np.ndarray, realized: np.ndarray, base_rate: float) -> dict[str, float]:
    """Brier score and log loss of ``prob`` and of the constant ``base_rate`` on the same rows."""
    y = up(realized)
    p = np.clip(np.asarray(prob, np.float64), EPS, 1 - EPS)
    b = min(max(float(base_rate), EPS), 1 - EPS)
    brier = float(np.mean((p - y) ** 2))
    brier_base = float(np.mean((b - y) ** 2))
    log_loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    log_loss_base = float(-np.mean(y * math.log(b) + (1 - y) * math.log(1 - b)))
    return {
        "brier": brier, "brier_base_rate": brier_base, "log_loss": log_loss, "log_loss_base_rate": log_loss_base,
        "mean_prob_up": float(np.mean(p)), "realized_p_up": float(y.mean()),
        "realized_p_flat": float(np.mean(np.asarray(realized) == 0)), "calibration_base_rate": float(base_rate),
    }


def reliability_table(prob: np.ndarray, realized: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, realized share up, rows) per equally-populated bin of ``prob``."""
    prob = np.asarray(prob, np.float64)
    y = up(realized)
    order = np.argsort(prob, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, max(len(order), 1))):
        if len(chunk):
            out.append((float(prob[chunk].mean()), float(y[chunk].mean()), len(chunk)))
    return out
