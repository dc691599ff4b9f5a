"""Hyper-parameter search over time-ordered folds with a purge gap of H (never shuffled).

Fold k validates on the (k+1)-th of ``n_folds + 1`` contiguous blocks and trains on every
earlier row whose target is known before validation starts (``t + gap <= first validation t``),
so no training label overlaps the validation period.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtml_core.errors import InputError
from rtml_core.training.models import fit_lasso, fit_xgboost


@dataclass(frozen=True)
class SearchSpace:
    """What tuning may try, and how much (the budget)."""

    n_folds: int = 3
    lasso_alphas: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3)
    xgb_trials: int = 6
    xgb_max_depth: Sequence[int] = (2, 3, 4, 6)
    xgb_learning_rate: Sequence[float] = (0.03, 0.1, 0.3)
    xgb_n_estimators: Sequence[int] = (50, 100, 200)
    xgb_subsample: Sequence[float] = (0.7, 1.0)
    xgb_min_child_weight: Sequence[float] = (1.0, 5.0, 20.0)
    nthread: int = 2
    seed: int = 0

    def xgb_grid(self) -> dict[str, list]:
        return {
            "max_depth": list(self.xgb_max_depth),
            "learning_rate": list(self.xgb_learning_rate),
            "n_estimators": list(self.xgb_n_estimators),
            "subsample": list(self.xgb_subsample),
            "min_child_weight": list(self.xgb_min_child_weight),
        }


@dataclass(frozen=True)
class TuningResult:
    best_params: dict
    best_score: float  # mean validation RMSE of the return over the folds
    trials: list[dict] = field(default_factory=list)
    oof_rows: np.ndarray = field(default_factory=lambda: np.arange(0))
    """Rows (of the arrays tuned on) of the validation folds, in fold order."""
    oof_predicted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """The best parameters' out-of-fold predictions of ``oof_rows``: what the calibrator is fitted on."""


def purged_time_folds(
    times_ns: np.ndarray, n_folds: int, gap_ns: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs, expanding window, purged by ``gap_ns`` before validation."""
    if n_folds < 1:
        raise InputError(f"n_folds must be at least 1, got {n_folds}")
    n = len(times_ns)
    bounds = np.linspace(0, n, n_folds + 2).astype(int)
    folds = []
    for k in range(1, n_folds + 1):
        val = np.arange(bounds[k], bounds[k + 1])
        if len(val) == 0:
            continue
        train = np.flatnonzero(times_ns[: bounds[k]] + gap_ns <= times_ns[val[0]])
        if len(train) == 0:
            continue
        folds.append((train, val))
    if not folds:
        raise InputError(f"{n} rows are too few for {n_folds} time-ordered folds with a gap of {gap_ns} ns")
    return folds


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _cv_score(fit: Callable, X: np.ndarray, y: np.ndarray, folds) -> tuple[float, np.ndarray]:
    """Mean validation RMSE over the folds and the out-of-fold predictions (fold order)."""
    scores, predictions = [], []
    for train, val in folds:
        model = fit(X[train], y[train])
        predicted = np.asarray(model.predict(X[val]), dtype=np.float64)
        predictions.append(predicted)
        scores.append(_rmse(predicted, y[val]))
    return float(np.mean(scores)), np.concatenate(predictions)


def _best(trials: list[dict], folds) -> TuningResult:
    best = min(trials, key=lambda trial: trial["rmse"])
    rows = np.concatenate([val for _, val in folds])
    public = [{"params": t["params"], "rmse": t["rmse"]} for t in trials]
    return TuningResult(best_params=best["params"], best_score=best["rmse"], trials=public,
                        oof_rows=rows, oof_predicted=best["oof"])


def validation_predictions(predict: Callable[[np.ndarray], np.ndarray], times_ns: np.ndarray,
                           n_folds: int, gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, predictions) of a model without parameters (a baseline) on the same validation folds
    the tuned models are calibrated on; ``predict(rows)`` predicts rows of the tuned arrays."""
    folds = purged_time_folds(times_ns, n_folds, gap_ns)
    rows = np.concatenate([val for _, val in folds])
    return rows, np.asarray(predict(rows), dtype=np.float64)


def tune_lasso(
    X: np.ndarray, y: np.ndarray, times_ns: np.ndarray, gap_ns: int, space: SearchSpace
) -> TuningResult:
    """Grid over ``space.lasso_alphas``."""
    folds = purged_time_folds(times_ns, space.n_folds, gap_ns)
    trials = []
    for alpha in space.lasso_alphas:
        score, oof = _cv_score(lambda a, b, alpha=alpha: fit_lasso(a, b, alpha=alpha), X, y, folds)
        trials.append({"params": {"alpha": float(alpha)}, "rmse": score, "oof": oof})
    return _best(trials, folds)


def tune_xgboost(
    X: np.ndarray, y: np.ndarray, times_ns: np.ndarray, gap_ns: int, space: SearchSpace
) -> TuningResult:
    """Random search: ``space.xgb_trials`` draws from the grid, seeded."""
    from sklearn.model_selection import ParameterSampler

    folds = purged_time_folds(times_ns, space.n_folds, gap_ns)
    draws = ParameterSampler(space.xgb_grid(), n_iter=space.xgb_trials, random_state=space.seed)
    trials = []
    for params in draws:
        params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
        score, oof = _cv_score(
            lambda a, b, p=params: fit_xgboost(a, b, params=p, nthread=space.nthread, seed=space.seed),
            X, y, folds,
        )
        trials.append({"params": params, "rmse": score, "oof": oof})
    return _best(trials, folds)


def params_summary(params: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
