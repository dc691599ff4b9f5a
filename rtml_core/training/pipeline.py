"""One training run of one model kind: tune on development rows, calibrate prob_up on the
validation folds, walk forward on the holdout, refit on every row, and return the artifact
with its metrics; the baselines evaluated the same way. Pure: no I/O, no registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.timeframes import NS
from rtml_core.training.calibration import (
    Calibrator,
    activity_feature,
    fit_calibrator,
    probability_metrics,
)
from rtml_core.training.datasets import TrainingSet
from rtml_core.training.evaluation import evaluate, split_holdout, walk_forward_predict
from rtml_core.training.models import (
    BASELINE_KINDS,
    baseline_artifact,
    baseline_feature_names,
    fit_lasso,
    fit_xgboost,
    lasso_to_json,
    mean_last_10_return,
    xgboost_importances,
    xgboost_to_ubj,
    zero_return,
)
from rtml_core.training.tuning import (
    SearchSpace,
    TuningResult,
    tune_lasso,
    tune_xgboost,
    validation_predictions,
)

ARTIFACT_FORMATS = {"lasso": "json", "xgboost": "ubj", "baseline_zero": "json", "baseline_mean10": "json"}


SERVED_FIT = {
    "refit": "refit on every row of the training set; the metrics are the walk-forward holdout estimate of "
             "this recipe (tuned parameters refitted before each holdout chunk on the rows known by then)",
    "baseline": "a baseline without fitted parameters: the served predictor is the evaluated one",
}
"""What the registry says about each served artifact against its metrics."""


@dataclass(frozen=True)
class TrainedModel:
    kind: str
    artifact: bytes
    artifact_format: str
    params: dict
    tuning: TuningResult | None  # None for the baselines
    metrics: dict  # walk-forward holdout metrics, both baselines beside, the probability scores
    holdout: pd.DataFrame  # time, price, baseline_price, target_price, target, predicted, prob_up
    importances: np.ndarray | None
    feature_names: tuple[str, ...]
    calibrator: Calibrator
    served_fit: str


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


def holdout_split(training_set: TrainingSet, plan: EvaluationPlan = EvaluationPlan()):
    _, _, times, gap = _arrays(training_set)
    return split_holdout(times, plan.holdout_fraction, gap, plan.min_rows)


def _activity(training_set: TrainingSet, rows: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The calibrator's activity input on ``rows`` (see ``calibration.ACTIVITY_FEATURES``)."""
    name = activity_feature(training_set.frame.columns)
    return (None, None) if name is None else (training_set.frame[name].to_numpy(np.float64)[rows], name)


def calibrate(training_set: TrainingSet, rows: np.ndarray, predicted: np.ndarray) -> Calibrator:
    """The prob_up calibrator from out-of-fold predictions of validation ``rows`` (training-set rows)."""
    activity, name = _activity(training_set, rows)
    return fit_calibrator(predicted, training_set.frame["target"].to_numpy(np.float64)[rows], activity, name)


def _holdout_frame(training_set: TrainingSet, rows: np.ndarray, predicted: np.ndarray,
                   calibrator: Calibrator) -> pd.DataFrame:
    holdout = training_set.frame.iloc[rows][["time", "price", "baseline_price", "target_price", "target"]]
    holdout = holdout.reset_index(drop=True)
    holdout["predicted"] = predicted
    activity, _ = _activity(training_set, rows)
    holdout["prob_up"] = calibrator.prob_up(predicted, activity)
    return holdout


def _finish_metrics(metrics: dict, holdout: pd.DataFrame, calibrator: Calibrator) -> dict:
    metrics.update(probability_metrics(holdout["prob_up"].to_numpy(), holdout["target"].to_numpy(),
                                       calibrator.base_rate))
    return metrics


def fit_function(kind: str, params: dict, space: SearchSpace = SearchSpace()):
    """``fit(X, y)`` of a tuned recipe (lasso or xgboost, squared error)."""
    if kind == "lasso":
        return lambda a, b: fit_lasso(a, b, alpha=params["alpha"])
    if kind == "xgboost":
        return lambda a, b: fit_xgboost(a, b, params=params, nthread=space.nthread, seed=space.seed)
    raise InputError(f"unknown model kind {kind!r}; known: lasso, xgboost")


def baseline_predictions(kind: str, frame: pd.DataFrame) -> np.ndarray:
    if kind == "baseline_zero":
        return zero_return(frame)
    if kind == "baseline_mean10":
        return mean_last_10_return(frame)
    raise InputError(f"{kind!r} is not a baseline")


def evaluate_baseline(training_set: TrainingSet, kind: str = "baseline_mean10",
                      plan: EvaluationPlan = EvaluationPlan(), space: SearchSpace = SearchSpace()) -> TrainedModel:
    """A baseline on the holdout, calibrated on the same validation folds the models tune on."""
    _, _, times, gap = _arrays(training_set)
    split = split_holdout(times, plan.holdout_fraction, gap, plan.min_rows)
    frame = training_set.frame
    dev = frame.iloc[split.development].reset_index(drop=True)
    rows, oof = validation_predictions(lambda r: baseline_predictions(kind, dev.iloc[r]), times[split.development],
                                       space.n_folds, gap)
    calibrator = calibrate(training_set, split.development[rows], oof)
    held = frame.iloc[split.holdout].reset_index(drop=True)
    predicted = baseline_predictions(kind, held)
    holdout = _holdout_frame(training_set, split.holdout, predicted, calibrator)
    metrics = _finish_metrics(evaluate(predicted, held), holdout, calibrator)
    return TrainedModel(
        kind=kind, artifact=baseline_artifact(kind), artifact_format="json", params={}, tuning=None,
        metrics=metrics, holdout=holdout, importances=None, feature_names=baseline_feature_names(kind),
        calibrator=calibrator, served_fit=SERVED_FIT["baseline"],
    )


def recipe_holdout_predictions(training_set: TrainingSet, kind: str, params: dict,
                               plan: EvaluationPlan = EvaluationPlan(), space: SearchSpace = SearchSpace(),
                               feature_names: tuple[str, ...] | None = None) -> np.ndarray:
    """Walk-forward predictions of a recorded recipe (kind + parameters) on this training set's
    holdout: how the current champion is scored on the candidate's rows, never with its own
    artifact (which may have seen them)."""
    X, y, times, gap = _arrays(training_set)
    split = split_holdout(times, plan.holdout_fraction, gap, plan.min_rows)
    if kind in BASELINE_KINDS:
        return baseline_predictions(kind, training_set.frame.iloc[split.holdout].reset_index(drop=True))
    if feature_names is not None and tuple(feature_names) != training_set.feature_names:
        X = training_set.frame.loc[:, list(feature_names)].to_numpy(np.float64)
    return walk_forward_predict(fit_function(kind, params, space), X, y, times, split.holdout, gap,
                                plan.walk_forward_steps)


def train_model(
    training_set: TrainingSet, kind: str, space: SearchSpace = SearchSpace(), plan: EvaluationPlan = EvaluationPlan()
) -> TrainedModel:
    """Tune ``kind`` ('lasso' or 'xgboost') on development rows, calibrate prob_up on the
    validation folds' out-of-fold predictions, evaluate walk-forward on the holdout with the
    tuned parameters, then refit on all rows for serving (the registry says so)."""
    X, y, times, gap = _arrays(training_set)
    split = split_holdout(times, plan.holdout_fraction, gap, plan.min_rows)
    dev = split.development
    if kind == "lasso":
        tuning = tune_lasso(X[dev], y[dev], times[dev], gap, space)
    elif kind == "xgboost":
        tuning = tune_xgboost(X[dev], y[dev], times[dev], gap, space)
    else:
        raise InputError(f"unknown model kind {kind!r}; known: lasso, xgboost")
    fit = fit_function(kind, tuning.best_params, space)
    calibrator = calibrate(training_set, dev[tuning.oof_rows], tuning.oof_predicted)

    predicted = walk_forward_predict(fit, X, y, times, split.holdout, gap, plan.walk_forward_steps)
    holdout = _holdout_frame(training_set, split.holdout, predicted, calibrator)
    metrics = evaluate(predicted, training_set.frame.iloc[split.holdout].reset_index(drop=True))
    metrics["cv_rmse_return"] = tuning.best_score
    _finish_metrics(metrics, holdout, calibrator)

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
        calibrator=calibrator,
        served_fit=SERVED_FIT["refit"],
    )
