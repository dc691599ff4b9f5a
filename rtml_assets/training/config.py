"""Run configuration of the training pipeline, shown and editable in the Dagster launchpad.

Defaults are what the schedule and the automation use: the partition's market, a horizon of one
candle, its whole stored range, a small, fast search, a 5% significance gate.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from rtml_core.training.pipeline import EvaluationPlan
from rtml_core.training.tuning import SearchSpace


class TrainingConfig(dg.Config):
    """Which range and horizon of the partition's market: the training set's definition."""

    horizon_s: int | None = Field(
        default=None, description="Prediction horizon H in seconds (>= the timeframe); empty: one candle.")
    start: str | None = Field(default=None, description="First sample time (ISO 8601, UTC); empty: first stored row.")
    end: str | None = Field(default=None, description="End of the range, exclusive (ISO 8601, UTC); empty: last row.")
    feature_set_version: str | None = Field(
        default=None, description="Feature set version; empty: rtml_core.features.DEFAULT_FEATURE_SET.version."
    )
    feature_groups: list[str] = Field(
        default=["indicators"],
        description="Feature groups: 'indicators' (the indicator table) and optionally 'microstructure' (the "
                    "sidecar's order-book and trade-flow values as of each candle's close; rows without them drop).")
    holdout_fraction: float = Field(default=0.2, description="Final share of rows kept for the holdout.")
    walk_forward_steps: int = Field(default=2, description="Refits across the holdout (walk-forward).")
    min_rows: int = Field(default=200, description="Fewest development and holdout rows accepted.")

    def plan(self) -> EvaluationPlan:
        return EvaluationPlan(
            holdout_fraction=self.holdout_fraction,
            walk_forward_steps=self.walk_forward_steps,
            min_rows=self.min_rows,
        )


class TuningConfig(dg.Config):
    """The hyper-parameter search space and budget (time-ordered folds, purged by H)."""

    n_folds: int = Field(default=3, description="Time-ordered validation folds (expanding window).")
    lasso_alphas: list[float] = Field(default=[1e-6, 1e-5, 1e-4, 1e-3], description="Lasso alpha grid.")
    xgb_trials: int = Field(default=6, description="Random-search budget: XGBoost parameter draws.")
    xgb_max_depth: list[int] = Field(default=[2, 3, 4, 6])
    xgb_learning_rate: list[float] = Field(default=[0.03, 0.1, 0.3])
    xgb_n_estimators: list[int] = Field(default=[50, 100, 200])
    xgb_subsample: list[float] = Field(default=[0.7, 1.0])
    xgb_min_child_weight: list[float] = Field(default=[1.0, 5.0, 20.0])
    nthread: int = Field(default=2, description="XGBoost threads.")
    seed: int = Field(default=0, description="Seed of the random search and of XGBoost.")

    def space(self) -> SearchSpace:
        return SearchSpace(
            n_folds=self.n_folds,
            lasso_alphas=tuple(self.lasso_alphas),
            xgb_trials=self.xgb_trials,
            xgb_max_depth=tuple(self.xgb_max_depth),
            xgb_learning_rate=tuple(self.xgb_learning_rate),
            xgb_n_estimators=tuple(self.xgb_n_estimators),
            xgb_subsample=tuple(self.xgb_subsample),
            xgb_min_child_weight=tuple(self.xgb_min_child_weight),
            nthread=self.nthread,
            seed=self.seed,
        )


class PromotionConfig(dg.Config):
    """When a candidate may replace its market's champion (the gate, rtml_core.training.gate)."""

    margin: float = Field(
        default=0.0,
        description="Required skill against the zero-return baseline and against the current champion on the "
        "holdout (1 - loss_candidate / loss_reference must exceed this; loss: squared error of the log return).",
    )
    p_value: float = Field(
        default=0.05,
        description="The one-sided Diebold-Mariano p-value (HAC variance) against each reference must be below this.",
    )
