"""One training run of one model kind: tune on development rows, walk forward on the holdout,
refit on every row, and return the artifact with its metrics. Pure: no I/O, no registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.timeframes import NS
from rtml_core.training.datasets import TrainingSet
from rtml_core.training.evaluation import evaluate, split_holdout, walk_forward_predict
from rtml_core.training.models import (
    fit_lasso,
    fit_xgboost,
    lasso_to_json,
    mean_last_10_return,
    xgboost_importances,
    xgboost_to_ubj,
)
from rtml_core.training.tuning import SearchSpace, TuningResult, tune_lasso, tune_xgboost

ARTIFACT_FORMATS = {"lasso": "json", "xgboost": "ubj"}


@dataclass(frozen=True)
class TrainedModel:
    kind: str
    artifact: bytes
    artifact_format: str
    params: dict
    tuning: TuningResult
    metrics: dict  # walk-forward holdout metrics, both baselines beside
    holdout: pd.DataFrame  # time, price, target_price, target, predicted
    importances: np.ndarray
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class EvaluationPlan:
    holdout_fraction: float = 0.2
    walk_forward_steps: int = 2
    min_rows: int = 50


def _arrays(training_set: TrainingSet):
    frame = training_set.frame
    if len(frame) == 0:
        raise InputError("the training set has no rows")
    X = frame.loc[:, list(training_set.feature_names)].to_numpy(np.float64)
    y = frame["target"].to_numpy(np.float64)
    times = frame["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return X, y, times, training_set.horizon_s * NS


def _holdout_frame(training_set: TrainingSet, rows: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    holdout = training_set.frame.iloc[rows][["time", "price", "baseline_price", "target_price", "target"]]
    holdout = holdout.reset_index(drop=True)
    holdout["predicted"] = predicted
    return holdout


def evaluate_baseline(training_set: TrainingSet, plan: EvaluationPlan = EvaluationPlan()) -> dict:
    """Holdout metrics of the mean-of-last-10 baseline (with the zero-return baseline beside)."""
    _, _, times, gap = _arrays(training_set)
    split = split_holdout(times, plan.holdout_fraction, gap, plan.min_rows)
    frame = training_set.frame.iloc[split.holdout].reset_index(drop=True)
    predicted = mean_last_10_return(frame)
    return {"metrics": evaluate(predicted, frame), "holdout": _holdout_frame(training_set, split.holdout, predicted)}


def train_model(
    training_set: TrainingSet, kind: str, space: SearchSpace = SearchSpace(), plan: EvaluationPlan = EvaluationPlan()
) -> TrainedModel:
    """Tune ``kind`` ('lasso' or 'xgboost') on development rows, evaluate walk-forward on the
    holdout with the tuned parameters, then refit on all rows for serving."""
    X, y, times, gap = _arrays(training_set)
    split = split_holdout(times, plan.holdout_fraction, gap, plan.min_rows)
    dev = split.development
    if kind == "lasso":
        tuning = tune_lasso(X[dev], y[dev], times[dev], gap, space)

        def fit(a, b):
            return fit_lasso(a, b, alpha=tuning.best_params["alpha"])
    elif kind == "xgboost":
        tuning = tune_xgboost(X[dev], y[dev], times[dev], gap, space)

        def fit(a, b):
            return fit_xgboost(a, b, params=tuning.best_params, nthread=space.nthread, seed=space.seed)
    else:
        raise InputError(f"unknown model kind {kind!r}; known: lasso, xgboost")

    predicted = walk_forward_predict(fit, X, y, times, split.holdout, gap, plan.walk_forward_steps)
    holdout = _holdout_frame(training_set, split.holdout, predicted)
    metrics = evaluate(predicted, training_set.frame.iloc[split.holdout].reset_index(drop=True))
    metrics["cv_rmse_return"] = tuning.best_score

    final = fit(X, y)
    if kind == "lasso":
        artifact = lasso_to_json(final, training_set.feature_names)
        importances = np.abs(np.ravel(final[-1].coef_))
    else:
        artifact = xgboost_to_ubj(final)
        importances = xgboost_importances(final, X.shape[1])
    return TrainedModel(
        kind=kind,
        artifact=artifact,
        artifact_format=ARTIFACT_FORMATS[kind],
        params=dict(tuning.best_params),
        tuning=tuning,
        metrics=metrics,
        holdout=holdout,
        importances=importances,
        feature_names=training_set.feature_names,
    )
