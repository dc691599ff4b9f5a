"""Training assets: training set -> baseline, Lasso, XGBoost -> candidate -> champion.

Lineage: ``validated_candles`` -> ``indicator_table`` -> ``training_set`` -> models. Each model
asset tunes on the development rows, walks forward on the holdout, registers its artifact and
metrics in the registry and shows the holdout plots. ``candidate_model`` picks the model with
the best cross-validation score (never the holdout score); the blocking check
``check_candidate_beats_baseline`` gates ``champion_model``, which promotes it.
"""


from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd

from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training.config import TrainingConfig, TuningConfig
from rtml_assets.training.resources import ModelRegistryResource
from rtml_core.errors import InputError
from rtml_core.timeframes import NS, timeframe_seconds
from rtml_core.training.datasets import BASELINE_WINDOW, TrainingSet, build_training_set
from rtml_core.training.pipeline import EvaluationPlan, TrainedModel, evaluate_baseline, train_model
from rtml_core.training.plots import feature_importance_png, markdown_image, predicted_vs_realized_png
from rtml_core.training.tuning import params_summary

GROUP = "training"
MODELS_GROUP = "models"
"""Models, the candidate and the champion: their own group in the UI, after the training set."""
OWNERS = ["team:ml"]
INDICATOR_TABLE = dg.AssetKey("indicator_table")
VALIDATED_CANDLES = dg.AssetKey("validated_candles")

RETRAIN_ON_NEW_FEATURES = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
"""Eager, except that missing upstream day partitions (history never imported) do not block it."""


@dataclass(frozen=True)
class TrainingRequest:
    """A validated TrainingConfig: one market, one feature set version, one time range."""

    exchange: str
    symbol: str
    timeframe: str
    feature_set_version: str
    horizon_s: int
    start_ns: int
    end_ns: int
    plan: EvaluationPlan


@dataclass(frozen=True)
class RegisteredModel:
    """What a model asset hands downstream: the registered version and its scores."""

    version: int
    kind: str
    cv_rmse_return: float
    metrics: dict
    feature_set_version: str
    training_set_hash: str


def _parse_time(text: str | None, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        moment = pd.Timestamp(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO 8601 time") from None
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return int(moment.value)


def resolve_request(inventory: pd.DataFrame, config: TrainingConfig, default_version: str) -> TrainingRequest:
    """Check the config against the stored feature series before any work; pick defaults.

    ``inventory`` is ``store.markets()``: one row per stored series with first/last/rows.
    """
    version = config.feature_set_version or default_version
    horizon = int(config.horizon_s)
    if horizon <= 0:
        raise InputError(f"horizon_s must be positive, got {horizon}")
    if config.timeframe is not None and horizon < timeframe_seconds(config.timeframe):
        raise InputError(
            f"horizon {horizon}s is shorter than the timeframe {config.timeframe}: "
            "choose a horizon of at least one candle"
        )
    series = inventory[(inventory["kind"] == "features") & (inventory["feature_set_version"] == version)]
    for column in ("exchange", "symbol", "timeframe"):
        wanted = getattr(config, column)
        if wanted:
            series = series[series[column] == wanted]
    if config.timeframe is None:
        fits = series["timeframe"].map(timeframe_seconds) <= horizon
        if len(series) and not fits.any():
            raise InputError(
                f"every stored feature series of version {version!r} has a timeframe longer than "
                f"the horizon {horizon}s; set timeframe and a horizon of at least one candle"
            )
        series = series[fits]
    if series.empty:
        wanted = ", ".join(f"{c}={getattr(config, c)}" for c in ("exchange", "symbol", "timeframe") if getattr(config, c))
        raise InputError(
            f"feature set version {version!r} has no rows{' for ' + wanted if wanted else ''}: "
            "materialize indicator_table for it first"
        )
    row = series.sort_values("rows", ascending=False).iloc[0]
    tf_ns = timeframe_seconds(row["timeframe"]) * NS
    first_close = int(row["first"].value) + tf_ns
    last_close = int(row["last"].value) + tf_ns
    start = _parse_time(config.start, "start")
    end = _parse_time(config.end, "end")
    start = max(start, first_close) if start is not None else first_close
    end = min(end, last_close + 1) if end is not None else last_close + 1
    candles = (end - start) // tf_ns
    needed = 2 * config.min_rows + BASELINE_WINDOW
    if end <= start:
        raise InputError(
            f"the range {config.start or 'start'}..{config.end or 'end'} holds no stored feature rows of "
            f"{row['exchange']} {row['symbol']} {row['timeframe']} (stored {row['first']}..{row['last']})"
        )
    if candles < needed:
        raise InputError(
            f"the range holds at most {candles} candles of {row['timeframe']}; at least {needed} are "
            f"needed for {config.min_rows} development and {config.min_rows} holdout rows (widen the range "
            "or lower min_rows)"
        )
    return TrainingRequest(
        exchange=row["exchange"], symbol=row["symbol"], timeframe=row["timeframe"], feature_set_version=version,
        horizon_s=horizon, start_ns=start, end_ns=end, plan=config.plan(),
    )


def load_training_set(store, request: TrainingRequest) -> TrainingSet:
    """Read the features and candles the request needs and build its point-in-time set."""
    tf_ns = timeframe_seconds(request.timeframe) * NS
    features = store.read_features(
        request.exchange, request.symbol, request.timeframe, request.feature_set_version,
        request.start_ns - tf_ns, request.end_ns - tf_ns,
    )
    prices = store.read_candles(
        request.exchange, request.symbol, request.timeframe,
        request.start_ns - (BASELINE_WINDOW + 1) * tf_ns, request.end_ns + request.horizon_s * NS,
    )
    built = build_training_set(
        features, prices, timeframe=request.timeframe, horizon_s=request.horizon_s,
        feature_set_version=request.feature_set_version, exchange=request.exchange, symbol=request.symbol,
    )
    if built.row_count < 2 * request.plan.min_rows:
        raise InputError(
            f"only {built.row_count} usable rows in the range (after {built.dropped_for_gaps} dropped for "
            f"gaps and {built.dropped_for_warmup} for warm-up); {2 * request.plan.min_rows} are needed"
        )
    return built


def _default_feature_set_version() -> str:
    from rtml_core.features import DEFAULT_FEATURE_SET

    return DEFAULT_FEATURE_SET.version


def _md_table(rows: list[tuple]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def metrics_metadata(metrics: dict) -> dict:
    """The numbers every model shows in the UI (floats; NaN shown as text)."""
    keys = (
        "mae_price", "rmse_price", "directional_accuracy", "residual_std", "skill_vs_mean10",
        "skill_vs_zero", "baseline_mean10_mae_price", "baseline_zero_mae_price", "n_rows",
    )
    out = {}
    for key in keys:
        value = metrics.get(key)
        if value is None:
            continue
        out[key] = dg.MetadataValue.float(float(value)) if np.isfinite(value) else dg.MetadataValue.text(str(value))
    return out


def _training_set_metadata(training_set: TrainingSet, plan: EvaluationPlan) -> dict:
    summary = training_set.summary()
    return {
        "rows": dg.MetadataValue.int(training_set.row_count),
        "dropped_for_gaps": dg.MetadataValue.int(training_set.dropped_for_gaps),
        "dropped_for_warmup": dg.MetadataValue.int(training_set.dropped_for_warmup),
        "dropped_unlabelled": dg.MetadataValue.int(training_set.dropped_unlabelled),
        "feature_set_version": training_set.feature_set_version,
        "market": f"{training_set.exchange} {training_set.symbol} {training_set.timeframe}",
        "horizon_s": dg.MetadataValue.int(training_set.horizon_s),
        "start": summary["start"],
        "end": summary["end"],
        "content_hash": training_set.content_hash,
        "features": dg.MetadataValue.json(summary["feature_names"]),
        "holdout_fraction": dg.MetadataValue.float(plan.holdout_fraction),
        "preview": dg.MetadataValue.md(training_set.frame.tail(3).iloc[:, :6].to_markdown(index=False)),
    }


@dg.asset(
    group_name=GROUP,
    deps=[INDICATOR_TABLE, VALIDATED_CANDLES],
    kinds={"python", "pandas"},
    owners=OWNERS,
    automation_condition=RETRAIN_ON_NEW_FEATURES,
    description=(
        "Point-in-time training set: for each candle close t in the range, the features of the last "
        "candle closed at or before t and the log return of the close from t to t + H. Rows whose "
        "window crosses a gap are dropped and counted."
    ),
)
def training_set(
    context: dg.AssetExecutionContext, config: TrainingConfig, offline_store: OfflineStoreResource
) -> dg.Output[TrainingSet]:
    store = offline_store.get_store()
    version = config.feature_set_version or _default_feature_set_version()
    request = resolve_request(store.markets(), config, version)
    built = load_training_set(store, request)
    built.extra["plan"] = request.plan
    context.log.info(
        f"training set {request.exchange} {request.symbol} {request.timeframe} H={request.horizon_s}s: "
        f"{built.row_count} rows, {built.dropped_for_gaps} dropped for gaps"
    )
    return dg.Output(built, metadata=_training_set_metadata(built, request.plan))


def _plan(training_set: TrainingSet) -> EvaluationPlan:
    return training_set.extra.get("plan", EvaluationPlan())


def _register(context, registry, training_set: TrainingSet, model: TrainedModel):
    return registry.register(
        kind=model.kind, artifact=model.artifact, artifact_format=model.artifact_format,
        feature_names=training_set.feature_names, feature_set_version=training_set.feature_set_version,
        timeframe=training_set.timeframe, horizon_s=training_set.horizon_s,
        training_rows=training_set.row_count, training_set_hash=training_set.content_hash,
        metrics=model.metrics, residual_std=model.metrics["residual_std"], params=model.params,
        exchange=training_set.exchange, symbol=training_set.symbol,
        train_start_ns=int(training_set.start.value), train_end_ns=int(training_set.end.value),
        run_id=context.run.run_id,
    )


def _model_output(context, registry_resource, training_set: TrainingSet, model: TrainedModel) -> dg.Output:
    registry = registry_resource.get_registry()
    version = _register(context, registry, training_set, model)
    holdout = model.holdout
    scatter = predicted_vs_realized_png(
        holdout["target"].to_numpy(), holdout["predicted"].to_numpy(),
        f"{model.kind} v{version.version}: holdout, walk-forward",
    )
    importance = feature_importance_png(list(training_set.feature_names), model.importances, f"{model.kind} importances")
    trials = [("params", "cv rmse (return)")] + [(params_summary(t["params"]), t["rmse"]) for t in model.tuning.trials]
    metadata = {
        "model_version": dg.MetadataValue.int(version.version),
        "kind": model.kind,
        **metrics_metadata(model.metrics),
        "cv_rmse_return": dg.MetadataValue.float(model.tuning.best_score),
        "best_params": dg.MetadataValue.json(model.params),
        "tuning_trials": dg.MetadataValue.md(_md_table(trials)),
        "artifact": dg.MetadataValue.path(str(registry.artifacts_dir / version.artifact_file)),
        "artifact_sha256": version.artifact_sha256,
        "training_set_hash": training_set.content_hash,
        "predicted_vs_realized": dg.MetadataValue.md(markdown_image(scatter, "predicted vs realized")),
        "feature_importances": dg.MetadataValue.md(markdown_image(importance, "feature importances")),
    }
    value = RegisteredModel(
        version=version.version, kind=model.kind, cv_rmse_return=model.tuning.best_score, metrics=model.metrics,
        feature_set_version=training_set.feature_set_version, training_set_hash=training_set.content_hash,
    )
    return dg.Output(value, metadata=metadata)


@dg.asset(
    group_name=MODELS_GROUP,
    kinds={"python", "numpy"},
    owners=OWNERS,
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "The baselines on the holdout: the mean of the last 10 closes as the predicted price, and "
        "the zero-return prediction beside it. Every model's skill is measured against both."
    ),
)
def baseline_model(training_set: TrainingSet) -> dg.Output[dict]:
    evaluation = evaluate_baseline(training_set, _plan(training_set))
    metrics = evaluation["metrics"]
    holdout = evaluation["holdout"]
    scatter = predicted_vs_realized_png(holdout["target"].to_numpy(), holdout["predicted"].to_numpy(),
                                        "mean of last 10 closes: holdout")
    table = _md_table([
        ("baseline", "MAE price", "RMSE price", "directional accuracy"),
        ("mean of last 10", metrics["mae_price"], metrics["rmse_price"], metrics["directional_accuracy"]),
        ("zero return", metrics["baseline_zero_mae_price"], metrics["baseline_zero_rmse_price"],
         "0.5 (never calls a side)"),
    ])
    return dg.Output(
        metrics,
        metadata={
            **metrics_metadata(metrics),
            "baselines": dg.MetadataValue.md(table),
            "predicted_vs_realized": dg.MetadataValue.md(markdown_image(scatter, "predicted vs realized")),
        },
    )


@dg.asset(
    group_name=MODELS_GROUP,
    kinds={"python", "scikitlearn"},
    owners=OWNERS,
    automation_condition=dg.AutomationCondition.eager(),
    description="StandardScaler + Lasso, alpha tuned on purged time folds; registered as JSON.",
)
def lasso_model(
    context: dg.AssetExecutionContext, config: TuningConfig, training_set: TrainingSet,
    model_registry: ModelRegistryResource,
) -> dg.Output[RegisteredModel]:
    model = train_model(training_set, "lasso", config.space(), _plan(training_set))
    return _model_output(context, model_registry, training_set, model)


@dg.asset(
    group_name=MODELS_GROUP,
    kinds={"python", "xgboost"},
    owners=OWNERS,
    automation_condition=dg.AutomationCondition.eager(),
    description="XGBoost regressor, random search on purged time folds; registered as UBJSON.",
)
def xgboost_model(
    context: dg.AssetExecutionContext, config: TuningConfig, training_set: TrainingSet,
    model_registry: ModelRegistryResource,
) -> dg.Output[RegisteredModel]:
    model = train_model(training_set, "xgboost", config.space(), _plan(training_set))
    return _model_output(context, model_registry, training_set, model)


@dg.asset(
    group_name=MODELS_GROUP,
    kinds={"python"},
    owners=OWNERS,
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "The model that may become champion: of the models trained on the same training set, the "
        "one with the lowest cross-validation error (chosen without looking at the holdout)."
    ),
)
def candidate_model(lasso_model: RegisteredModel, xgboost_model: RegisteredModel) -> dg.Output[RegisteredModel]:
    models = [lasso_model, xgboost_model]
    if len({m.training_set_hash for m in models}) > 1:
        raise InputError(
            "lasso_model and xgboost_model were trained on different training sets; rematerialize both"
        )
    best = min(models, key=lambda m: m.cv_rmse_return)
    table = _md_table([("model", "version", "cv rmse (return)", "holdout skill vs mean10")]
                      + [(m.kind, m.version, m.cv_rmse_return, m.metrics["skill_vs_mean10"]) for m in models])
    return dg.Output(
        best,
        metadata={
            "model_version": dg.MetadataValue.int(best.version),
            "kind": best.kind,
            "compared": dg.MetadataValue.md(table),
            **metrics_metadata(best.metrics),
        },
    )


@dg.asset(
    group_name=MODELS_GROUP,
    kinds={"python"},
    owners=OWNERS,
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description=(
        "The served model. Materializes only when check_candidate_beats_baseline passed: then the "
        "candidate is promoted in the registry (the API hot-swaps to it)."
    ),
)
def champion_model(
    context: dg.AssetExecutionContext, candidate_model: RegisteredModel, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    registry = model_registry.get_registry()
    current = registry.champion()
    if current is not None and current.version == candidate_model.version:
        promotion = registry.promotions()[-1]
        note = f"model version {candidate_model.version} is already the champion"
    else:
        promotion = registry.promote(
            candidate_model.version,
            f"{candidate_model.kind} beat the baseline on the holdout (skill vs mean10 "
            f"{candidate_model.metrics['skill_vs_mean10']:.4f}, vs zero {candidate_model.metrics['skill_vs_zero']:.4f}); "
            f"run {context.run.run_id}",
            actor="dagster",
        )
        note = f"promoted model version {candidate_model.version} (previous: {promotion.previous_version})"
    context.log.info(note)
    return dg.MaterializeResult(
        metadata={
            "champion_version": dg.MetadataValue.int(candidate_model.version),
            "previous_version": dg.MetadataValue.int(promotion.previous_version or 0),
            "champion_epoch": dg.MetadataValue.int(promotion.epoch),
            "kind": candidate_model.kind,
            "note": note,
            "promoted_at": datetime.fromtimestamp(promotion.promoted_at_ns / 1e9, UTC).isoformat(),
            **metrics_metadata(candidate_model.metrics),
        }
    )


TRAINING_ASSETS = [training_set, baseline_model, lasso_model, xgboost_model, candidate_model, champion_model]
