"""The models: two baselines, Lasso (scaled features) and XGBoost, and their safe artifacts.

Every model predicts the log return from t to t + H and is fitted on its squared error (the
loss it is judged by, ``rtml_core.training.gate.LOSS``). Artifacts are never pickles:
XGBoost's own UBJSON, Lasso as JSON of the scaler's mean/scale plus coefficients and
intercept, the baselines as a JSON document naming them.

The baselines are registered models too: ``baseline_zero`` (the random walk: return 0, every
market's first champion) and ``baseline_mean10`` (the mean of the last 10 closes as the price
at t + H; served from the ``close`` and ``sma_10`` features).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtml_core.errors import InputError

KINDS = ("baseline_zero", "baseline_mean10", "lasso", "xgboost")
BASELINE_KINDS = ("baseline_zero", "baseline_mean10")
MEAN10_FEATURES = ("close", "sma_10")
"""What ``baseline_mean10`` reads from a feature row: the close and the mean of the last 10 closes."""


def mean_last_10_return(frame: pd.DataFrame) -> np.ndarray:
    """Baseline: the mean of the last 10 closes is the predicted price at t + H."""
    return np.log(frame["baseline_price"].to_numpy(np.float64) / frame["price"].to_numpy(np.float64))


def zero_return(frame: pd.DataFrame) -> np.ndarray:
    """Baseline: the price does not move (predicted price = price at t)."""
    return np.zeros(len(frame))


def fit_lasso(X: np.ndarray, y: np.ndarray, *, alpha: float, max_iter: int = 10_000):
    """StandardScaler + Lasso pipeline fitted on (X, y).

    The Gram matrix is precomputed (rows >> features), so each coordinate-descent pass costs
    O(features^2) instead of O(rows * features): collinear indicator sets converge in time.
    """
    from sklearn.linear_model import Lasso
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Lasso(alpha=alpha, max_iter=max_iter, precompute=True))
    model.fit(X, y)
    return model


def fit_xgboost(X: np.ndarray, y: np.ndarray, *, params: Mapping, nthread: int = 2, seed: int = 0):
    """An XGBoost regressor (hist trees, squared error) fitted on (X, y)."""
    import xgboost as xgb

    model = xgb.XGBRegressor(
        objective="reg:squarederror", tree_method="hist", n_jobs=nthread, random_state=seed, **params
    )
    model.fit(X, y)
    return model


def lasso_to_json(pipeline, feature_names: Sequence[str]) -> bytes:
    """The fitted scaler + Lasso as plain JSON (floats round-trip exactly through repr)."""
    scaler, lasso = pipeline[0], pipeline[-1]
    document = {
        "format": "rtml-linear-v1",
        "feature_names": list(feature_names),
        "mean": [float(v) for v in scaler.mean_],
        "scale": [float(v) for v in scaler.scale_],
        "coef": [float(v) for v in np.ravel(lasso.coef_)],
        "intercept": float(np.ravel([lasso.intercept_])[0]),
        "alpha": float(lasso.alpha),
    }
    return json.dumps(document, sort_keys=True).encode()


def xgboost_to_ubj(model) -> bytes:
    """XGBoost's own UBJSON serialisation of the booster."""
    return bytes(model.get_booster().save_raw(raw_format="ubj"))


@dataclass(frozen=True)
class LinearPredictor:
    """Lasso loaded from JSON: ``((X - mean) / scale) @ coef + intercept``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def from_json(cls, raw: bytes) -> LinearPredictor:
        doc = json.loads(raw)
        if doc.get("format") != "rtml-linear-v1":
            raise InputError(f"linear model artifact has unknown format {doc.get('format')!r}")
        return cls(
            mean=np.asarray(doc["mean"], dtype=np.float64),
            scale=np.asarray(doc["scale"], dtype=np.float64),
            coef=np.asarray(doc["coef"], dtype=np.float64),
            intercept=float(doc["intercept"]),
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale) @ self.coef + self.intercept

    def importances(self) -> np.ndarray:
        return np.abs(self.coef)


class XGBoostPredictor:
    """An XGBoost booster loaded from UBJSON bytes; predicts with ``inplace_predict``."""

    def __init__(self, raw: bytes, nthread: int = 1):
        import xgboost as xgb

        self.booster = xgb.Booster(params={"nthread": nthread})
        self.booster.load_model(bytearray(raw))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(X), dtype=np.float64)


def xgboost_importances(model, n_features: int) -> np.ndarray:
    """Gain importances, one per feature (0 for features never split on)."""
    scores = model.get_booster().get_score(importance_type="gain")
    return np.array([scores.get(f"f{i}", 0.0) for i in range(n_features)], dtype=np.float64)


def baseline_artifact(kind: str) -> bytes:
    """The JSON document a baseline is registered with (no fitted parameters)."""
    if kind not in BASELINE_KINDS:
        raise InputError(f"{kind!r} is not a baseline; baselines: {', '.join(BASELINE_KINDS)}")
    return json.dumps({"format": "rtml-baseline-v1", "kind": kind}, sort_keys=True).encode()


def baseline_feature_names(kind: str) -> tuple[str, ...]:
    return () if kind == "baseline_zero" else MEAN10_FEATURES


class ZeroPredictor:
    """The random walk: predicts a log return of 0 for every row."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(np.atleast_2d(X)))


class Mean10Predictor:
    """``log(sma_10 / close)`` from rows ordered as ``MEAN10_FEATURES``."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        return np.log(X[:, 1] / X[:, 0])


def _baseline_from_artifact(kind: str, raw: bytes):
    doc = json.loads(raw)
    if doc.get("format") != "rtml-baseline-v1" or doc.get("kind") != kind:
        raise InputError(f"baseline artifact is not a {kind} document: {doc!r}")
    return ZeroPredictor() if kind == "baseline_zero" else Mean10Predictor()


def predictor_from_artifact(kind: str, raw: bytes):
    """The predictor for an artifact's bytes (checksum already verified by the caller)."""
    if kind in BASELINE_KINDS:
        return _baseline_from_artifact(kind, raw)
    if kind == "lasso":
        return LinearPredictor.from_json(raw)
    if kind == "xgboost":
        return XGBoostPredictor(raw)
    raise InputError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
