"""Training assets, one Dagster partition per market: training set -> baselines, Lasso, XGBoost
-> candidate (judged by the gate) -> champion.

Lineage: ``validated_candles`` -> ``indicator_table`` -> ``training_set`` -> models, each
training partition reading every day partition of its own market. ``baseline_model``
registers the market's zero-return and mean-of-last-10 baselines (the zero one becomes the
market's first champion). Each model asset tunes on the development rows, calibrates prob_up
on the validation folds, walks forward on the holdout, registers its artifact and metrics
and shows the holdout plots. ``candidate_model`` picks the model with the best
cross-validation score (never the holdout score) and records the gate's verdict on it in the
registry; the blocking check ``check_candidate_beats_baseline`` reports that verdict and
``champion_model`` asks the registry to promote the candidate, which re-checks the verdict.
"""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd

from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training.config import PromotionConfig, TrainingConfig, TuningConfig
from rtml_assets.training.resources import ModelRegistryResource
from rtml_core.errors import InputError
from rtml_core.registry import Market, ModelRegistry, PromotionRefused
from rtml_core.timeframes import timeframe_seconds
from rtml_core.training import requests
from rtml_core.training.datasets import TrainingSet
from rtml_core.training.gate import LOSS, GateConfig, diebold_mariano, judge, squared_error
from rtml_core.training.models import BASELINE_KINDS
from rtml_core.training.pipeline import (
    EvaluationPlan,
    TrainedModel,
    evaluate_baseline,
    recipe_holdout_predictions,
    train_model,
)
from rtml_core.training.plots import (
    feature_importance_png,
    markdown_image,
    predicted_vs_realized_png,
    reliability_png,
)
from rtml_core.training.requests import TrainingRequest, load_training_set
from rtml_core.training.tuning import SearchSpace, params_summary

GROUP = "training"
MODELS_GROUP = "models"
"""Models, the candidate and the champion: their own group in the UI, after the training set."""
OWNERS = ["team:ml"]
INDICATOR_TABLE = dg.AssetKey("indicator_table")
VALIDATED_CANDLES = dg.AssetKey("validated_candles")
with warnings.catch_warnings():  # beta in Dagster 1.13, the mapping this layout needs
    warnings.simplefilter("ignore", category=dg.BetaWarning)
    BY_MARKET = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="market")
"""A training partition (one market) reads every day partition of that market upstream."""

RETRAIN_ON_NEW_FEATURES = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
"""Eager, except that missing upstream day partitions (history never imported) do not block it."""


def market_key(exchange: str, symbol: str, timeframe: str) -> str:
    """A market's partition key, as ``MarketSource.key``: ``cme_ES-USD_1m``."""
    return f"{exchange}_{symbol}_{timeframe}"


def training_partitions(markets: Sequence) -> dg.StaticPartitionsDefinition:
    """One partition per configured market (objects with exchange, symbol and timeframe)."""
    return dg.StaticPartitionsDefinition([market_key(m.exchange, m.symbol, m.timeframe) for m in markets])


@dataclass(frozen=True)
class RegisteredModel:
    """What a model asset hands downstream: the registered version, its scores and holdout."""

    version: int
    kind: str
    cv_rmse_return: float
    metrics: dict
    feature_set_version: str
    training_set_hash: str
    holdout: pd.DataFrame | None = None  # time, target, predicted, prob_up
    verdict: dict = field(default_factory=dict)


def resolve_request(inventory: pd.DataFrame | None, config: TrainingConfig, default_version: str,
                    market: tuple[str, str, str]) -> TrainingRequest:
    """The run config of one market as a checked ``TrainingRequest`` (see ``rtml_core.training.requests``)."""
    return requests.resolve_request(
        inventory, market, feature_set_version=config.feature_set_version or default_version, plan=config.plan(),
        horizon_s=config.horizon_s, start=config.start, end=config.end, feature_groups=config.feature_groups,
    )


def default_feature_set_version() -> str:
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


METRIC_KEYS = (
    "loss", "rmse_return", "mae_return", "mae_price", "rmse_price", "directional_accuracy", "residual_std",
    "skill_vs_zero", "skill_vs_mean10", "baseline_zero_loss", "baseline_mean10_loss", "brier", "brier_base_rate",
    "log_loss", "log_loss_base_rate", "mean_prob_up", "realized_p_up", "realized_p_flat", "n_rows",
)


def metrics_metadata(metrics: dict) -> dict:
    """The numbers every model shows in the UI (floats; NaN shown as text)."""
    out = {}
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if value is None:
            continue
        out[key] = dg.MetadataValue.float(float(value)) if np.isfinite(value) else dg.MetadataValue.text(str(value))
    if "loss" in metrics:
        out["loss_name"] = LOSS
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
        "microstructure_version": training_set.microstructure_version or "(group not chosen)",
    }


def _plan(training_set: TrainingSet) -> EvaluationPlan:
    return training_set.plan or EvaluationPlan()


def _market(training_set: TrainingSet) -> Market:
    return Market(training_set.exchange, training_set.symbol, training_set.timeframe, training_set.horizon_s)


def register_trained(registry: ModelRegistry, training_set: TrainingSet, model: TrainedModel, run_id: str | None):
    """Register a trained model (or baseline) of ``training_set``'s market with its calibrator."""
    return registry.register(
        kind=model.kind, artifact=model.artifact, artifact_format=model.artifact_format,
        feature_names=model.feature_names, feature_set_version=training_set.feature_set_version,
        timeframe=training_set.timeframe, horizon_s=training_set.horizon_s,
        training_rows=training_set.row_count, training_set_hash=training_set.content_hash,
        metrics=model.metrics, residual_std=model.metrics["residual_std"], params=model.params,
        exchange=training_set.exchange, symbol=training_set.symbol,
        train_start_ns=int(training_set.start.value), train_end_ns=int(training_set.end.value),
        run_id=run_id, calibration=model.calibrator.to_dict(), served_fit=model.served_fit,
    )


def _plots(model: TrainedModel, title: str) -> dict:
    holdout = model.holdout
    scatter = predicted_vs_realized_png(holdout["target"].to_numpy(), holdout["predicted"].to_numpy(),
                                        f"{title}: holdout, walk-forward")
    reliability = reliability_png(holdout["prob_up"].to_numpy(), holdout["target"].to_numpy(),
                                  f"{title}: prob_up reliability (holdout)")
    return {
        "predicted_vs_realized": dg.MetadataValue.md(markdown_image(scatter, "predicted vs realized")),
        "reliability": dg.MetadataValue.md(markdown_image(reliability, "reliability of prob_up")),
    }


def horizon_steps(training_set: TrainingSet) -> int:
    """Candles per horizon: consecutive targets overlap by this many minus one."""
    return max(1, -(-training_set.horizon_s // timeframe_seconds(training_set.timeframe)))


def _against_zero(training_set: TrainingSet, model: TrainedModel) -> dict:
    """The DM test of this model against the zero-return baseline (shown for every model; only the
    candidate's verdict decides)."""
    realized = model.holdout["target"].to_numpy()
    test = diebold_mariano(squared_error(model.holdout["predicted"].to_numpy(), realized),
                           squared_error(np.zeros(len(realized)), realized), horizon_steps(training_set),
                           "baseline_zero")
    return {"dm_statistic_vs_zero": dg.MetadataValue.float(test.statistic),
            "p_value_vs_zero": dg.MetadataValue.float(test.p_value)}


def _holdout_columns(model: TrainedModel) -> pd.DataFrame:
    return model.holdout[["time", "target", "predicted", "prob_up"]].copy()


def _model_output(context, registry_resource, training_set: TrainingSet, model: TrainedModel) -> dg.Output:
    registry = registry_resource.get_registry()
    version = register_trained(registry, training_set, model, context.run.run_id)
    importance = feature_importance_png(list(training_set.feature_names), model.importances, f"{model.kind} importances")
    trials = [("params", "cv rmse (return)")] + [(params_summary(t["params"]), t["rmse"]) for t in model.tuning.trials]
    metadata = {
        "model_version": dg.MetadataValue.int(version.version),
        "kind": model.kind,
        "market": _market(training_set).label(),
        **metrics_metadata(model.metrics),
        **_against_zero(training_set, model),
        "cv_rmse_return": dg.MetadataValue.float(model.tuning.best_score),
        "best_params": dg.MetadataValue.json(model.params),
        "tuning_trials": dg.MetadataValue.md(_md_table(trials)),
        "calibration": dg.MetadataValue.json(model.calibrator.to_dict()),
        "served_fit": model.served_fit,
        "artifact": dg.MetadataValue.path(str(registry.artifacts_dir / version.artifact_file)),
        "artifact_sha256": version.artifact_sha256,
        "training_set_hash": training_set.content_hash,
        **_plots(model, f"{model.kind} v{version.version}"),
        "feature_importances": dg.MetadataValue.md(markdown_image(importance, "feature importances")),
    }
    value = RegisteredModel(
        version=version.version, kind=model.kind, cv_rmse_return=model.tuning.best_score, metrics=model.metrics,
        feature_set_version=training_set.feature_set_version, training_set_hash=training_set.content_hash,
        holdout=_holdout_columns(model),
    )
    return dg.Output(value, metadata=metadata)


def ensure_baselines(registry: ModelRegistry, training_set: TrainingSet, models: dict[str, TrainedModel],
                     run_id: str | None) -> dict[str, int]:
    """The market's registered baselines (registered on first sight of the market, horizon and
    feature set version); the zero-return one becomes the champion of a market without one."""
    market = _market(training_set)
    existing = {}
    for meta in registry.list(market.exchange, market.symbol, market.timeframe):
        if (meta.kind in BASELINE_KINDS and meta.horizon_s == market.horizon_s
                and meta.feature_set_version == training_set.feature_set_version):
            existing.setdefault(meta.kind, meta.version)
    versions = {kind: existing.get(kind) or register_trained(registry, training_set, model, run_id).version
                for kind, model in models.items()}
    if registry.champion_of(market) is None:
        registry.promote(versions["baseline_zero"], f"first champion of {market.label()}: the zero-return baseline "
                         "(the random walk) until a model beats it significantly", actor="dagster")
    return versions


def _champion_reference(registry: ModelRegistry, training_set: TrainingSet
                        ) -> tuple[int | None, str | None, np.ndarray | None, str]:
    """(version, label, predictions on this holdout, note) of the market's current champion."""
    champion = registry.champion_of(_market(training_set))
    if champion is None:
        return None, None, None, "no champion yet"
    label = f"champion v{champion.version} ({champion.kind})"
    if champion.kind == "baseline_zero":
        return champion.version, label, None, "the champion is the zero-return baseline"
    missing = [n for n in champion.feature_names if n not in training_set.frame.columns]
    if champion.kind not in BASELINE_KINDS and missing:
        raise InputError(f"the champion v{champion.version} needs features {missing[:5]} that this training set "
                         "lacks: it cannot be scored on the same holdout")
    predictions = recipe_holdout_predictions(training_set, champion.kind, champion.params, _plan(training_set),
                                             SearchSpace(), champion.feature_names or None)
    return champion.version, label, predictions, (
        f"{label} scored walk-forward on the same holdout with its recorded parameters")


def judge_candidate(registry: ModelRegistry, training_set: TrainingSet, candidate: RegisteredModel,
                    config: PromotionConfig) -> dict:
    """The gate's verdict on ``candidate`` against the zero baseline and the champion, recorded."""
    holdout = candidate.holdout
    realized = holdout["target"].to_numpy()
    champion_version, label, champion_predictions, note = _champion_reference(registry, training_set)
    references = {"baseline_zero": np.zeros(len(realized))}
    if champion_predictions is not None:
        references[label] = champion_predictions
    steps = horizon_steps(training_set)
    verdict = judge(holdout["predicted"].to_numpy(), realized, references, steps,
                    GateConfig(margin=config.margin, p_value=config.p_value), champion_version)
    document = {**verdict.to_dict(), "champion_note": note, "loss": LOSS, "horizon_steps": steps}
    registry.record_verdict(candidate.version, document)
    return document


@dataclass(frozen=True)
class TrainingAssets:
    assets: list
    checks: list
    partitions: dg.StaticPartitionsDefinition


def build_training_assets(markets: Sequence) -> TrainingAssets:
    """The training assets partitioned by ``markets`` (objects with exchange, symbol, timeframe)."""
    partitions = training_partitions(markets)
    by_key = {market_key(m.exchange, m.symbol, m.timeframe): (m.exchange, m.symbol, m.timeframe) for m in markets}

    @dg.asset(
        group_name=GROUP,
        partitions_def=partitions,
        deps=[dg.AssetDep(INDICATOR_TABLE, partition_mapping=BY_MARKET),
              dg.AssetDep(VALIDATED_CANDLES, partition_mapping=BY_MARKET)],
        kinds={"python", "pandas"},
        owners=OWNERS,
        automation_condition=RETRAIN_ON_NEW_FEATURES,
        description=(
            "Point-in-time training set of one market: for each candle close t in the range, the features of "
            "the last candle closed at or before t and the log return of the close from t to t + H. Rows whose "
            "window crosses a gap are dropped and counted."
        ),
    )
    def training_set(
        context: dg.AssetExecutionContext, config: TrainingConfig, offline_store: OfflineStoreResource
    ) -> dg.Output[TrainingSet]:
        store = offline_store.get_store()
        version = config.feature_set_version or default_feature_set_version()
        request = resolve_request(store.markets(), config, version, by_key[context.partition_key])
        built = load_training_set(store, request)
        context.log.info(
            f"training set {request.market.label()}: {built.row_count} rows, {built.dropped_for_gaps} dropped for gaps"
        )
        return dg.Output(built, metadata=_training_set_metadata(built, request.plan))

    @dg.asset(
        group_name=MODELS_GROUP,
        partitions_def=partitions,
        kinds={"python", "numpy"},
        owners=OWNERS,
        automation_condition=dg.AutomationCondition.eager(),
        description=(
            "The market's baselines, registered as models: baseline_zero (the random walk, the market's first "
            "champion) and baseline_mean10 (the mean of the last 10 closes as the predicted price), scored on "
            "the holdout with calibrated prob_up."
        ),
    )
    def baseline_model(context: dg.AssetExecutionContext, config: TuningConfig, training_set: TrainingSet,
                       model_registry: ModelRegistryResource) -> dg.Output[dict]:
        models = {kind: evaluate_baseline(training_set, kind, _plan(training_set), config.space())
                  for kind in BASELINE_KINDS}
        versions = ensure_baselines(model_registry.get_registry(), training_set, models, context.run.run_id)
        table = _md_table([("baseline", "version", "loss (MSE return)", "RMSE return", "MAE return", "Brier",
                            "Brier base rate")] + [
            (kind, versions[kind], m.metrics["loss"], m.metrics["rmse_return"], m.metrics["mae_return"],
             m.metrics["brier"], m.metrics["brier_base_rate"]) for kind, m in models.items()])
        zero, mean10 = models["baseline_zero"], models["baseline_mean10"]
        return dg.Output(
            {"versions": versions, "metrics": {kind: m.metrics for kind, m in models.items()}},
            metadata={
                "baseline_zero_version": dg.MetadataValue.int(versions["baseline_zero"]),
                "baseline_mean10_version": dg.MetadataValue.int(versions["baseline_mean10"]),
                "market": _market(training_set).label(),
                **metrics_metadata(mean10.metrics),
                **_against_zero(training_set, mean10),
                "baseline_zero_brier": dg.MetadataValue.float(zero.metrics["brier"]),
                "baseline_zero_rmse_return": dg.MetadataValue.float(zero.metrics["rmse_return"]),
                "baseline_zero_mae_return": dg.MetadataValue.float(zero.metrics["mae_return"]),
                "baseline_zero_skill_vs_mean10": dg.MetadataValue.float(zero.metrics["skill_vs_mean10"]),
                "baselines": dg.MetadataValue.md(table),
                **_plots(mean10, "mean of last 10 closes"),
            },
        )

    def model_asset(kind: str, library: str, description: str) -> dg.AssetsDefinition:
        @dg.asset(
            name=f"{kind}_model",
            group_name=MODELS_GROUP,
            partitions_def=partitions,
            kinds={"python", library},
            owners=OWNERS,
            automation_condition=dg.AutomationCondition.eager(),
            description=description,
        )
        def trained_model(
            context: dg.AssetExecutionContext, config: TuningConfig, training_set: TrainingSet,
            model_registry: ModelRegistryResource,
        ) -> dg.Output[RegisteredModel]:
            model = train_model(training_set, kind, config.space(), _plan(training_set))
            return _model_output(context, model_registry, training_set, model)

        return trained_model

    lasso_model = model_asset(
        "lasso", "scikitlearn", "StandardScaler + Lasso (squared error), alpha tuned on purged time folds; "
        "registered as JSON.")
    xgboost_model = model_asset(
        "xgboost", "xgboost", "XGBoost regressor (reg:squarederror), random search on purged time folds; "
        "registered as UBJSON.")

    @dg.asset(
        group_name=MODELS_GROUP,
        partitions_def=partitions,
        kinds={"python"},
        owners=OWNERS,
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[dg.AssetCheckSpec(
            "check_candidate_beats_baseline", asset="candidate_model", blocking=True,
            description="The gate: the candidate beats the zero-return baseline and the market's champion on the "
                        "holdout by the margin, significantly (one-sided Diebold-Mariano, HAC variance, p < p_value).",
        )],
        description=(
            "The model that may become the market's champion: of the models trained on the same training set, "
            "the one with the lowest cross-validation error (chosen without looking at the holdout), judged by "
            "the gate (Diebold-Mariano against the zero-return baseline and the current champion); the verdict "
            "is recorded in the registry."
        ),
    )
    def candidate_model(
        context: dg.AssetExecutionContext, config: PromotionConfig, training_set: TrainingSet,
        baseline_model: dict, lasso_model: RegisteredModel, xgboost_model: RegisteredModel,
        model_registry: ModelRegistryResource,
    ):
        models = [lasso_model, xgboost_model]
        if len({m.training_set_hash for m in models} | {training_set.content_hash}) > 1:
            raise InputError("lasso_model, xgboost_model and training_set differ; rematerialize them together")
        registry = model_registry.get_registry()
        best = min(models, key=lambda m: m.cv_rmse_return)
        verdict = judge_candidate(registry, training_set, best, config)
        for other in models:
            if other is not best:
                registry.record_verdict(other.version, {
                    "passed": False, "champion_version": verdict["champion_version"], "test": verdict["test"],
                    "reason": f"not the candidate: cross-validation chose {best.kind} v{best.version}",
                })
        table = _md_table(
            [("model", "version", "cv rmse (return)", "holdout loss", "skill vs zero", "skill vs mean10", "Brier")]
            + [(m.kind, m.version, m.cv_rmse_return, m.metrics["loss"], m.metrics["skill_vs_zero"],
                m.metrics["skill_vs_mean10"], m.metrics["brier"]) for m in models])
        tests = _md_table([("reference", "skill", "DM statistic", "p-value (one-sided)", "HAC lags", "rows")] + [
            (c["reference"], c["skill"], c["statistic"], c["p_value"], c["lags"], c["n"])
            for c in verdict["comparisons"]])
        chosen = RegisteredModel(
            version=best.version, kind=best.kind, cv_rmse_return=best.cv_rmse_return, metrics=best.metrics,
            feature_set_version=best.feature_set_version, training_set_hash=best.training_set_hash,
            holdout=best.holdout, verdict=verdict,
        )
        context.log.info(f"candidate {best.kind} v{best.version}: {'PASSED' if verdict['passed'] else 'failed'}: "
                         f"{verdict['reason']}")
        yield dg.Output(chosen, metadata={
            "model_version": dg.MetadataValue.int(best.version),
            "kind": best.kind,
            "market": _market(training_set).label(),
            "compared": dg.MetadataValue.md(table),
            "test": verdict["test"],
            "tests": dg.MetadataValue.md(tests),
            **_comparison_metadata(verdict),
            "verdict": "passed" if verdict["passed"] else "failed",
            "why": verdict["reason"],
            "judged_against_champion": dg.MetadataValue.int(verdict["champion_version"] or 0),
            **metrics_metadata(best.metrics),
        })
        yield gate_check_result(registry, chosen)

    @dg.asset(
        group_name=MODELS_GROUP,
        partitions_def=partitions,
        kinds={"python"},
        owners=OWNERS,
        automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
        description=(
            "The market's served model. Asks the registry to promote the candidate; the registry re-checks the "
            "candidate's recorded verdict, so a candidate that failed the gate is never promoted, even when "
            "this asset is materialized on its own (the API hot-swaps to a promoted one)."
        ),
    )
    def champion_model(
        context: dg.AssetExecutionContext, candidate_model: RegisteredModel, model_registry: ModelRegistryResource
    ) -> dg.MaterializeResult:
        registry = model_registry.get_registry()
        market = registry.get(candidate_model.version).market
        try:
            promotion = registry.promote(
                candidate_model.version,
                f"{candidate_model.kind} passed the gate on the holdout; run {context.run.run_id}", actor="dagster",
            )
            promoted, note = True, (f"promoted model version {candidate_model.version} "
                                    f"(previous: {promotion.previous_version})")
        except PromotionRefused as refused:
            promoted, note = False, f"unchanged: {refused}"
        champion = registry.champion_of(market)
        context.log.info(note)
        metadata = {
            "promoted": dg.MetadataValue.bool(promoted),
            "note": note,
            "market": market.label(),
            "champion_version": dg.MetadataValue.int(champion.version if champion else 0),
            "champion_kind": champion.kind if champion else "none",
            "champion_epoch": dg.MetadataValue.int(registry.champion_epoch()),
        }
        if promoted:
            metadata["promoted_at"] = datetime.fromtimestamp(promotion.promoted_at_ns / 1e9, UTC).isoformat()
            metadata["kind"] = candidate_model.kind
            metadata.update(metrics_metadata(candidate_model.metrics))
        return dg.MaterializeResult(metadata=metadata)

    return TrainingAssets(
        assets=[training_set, baseline_model, lasso_model, xgboost_model, candidate_model, champion_model],
        checks=[],
        partitions=partitions,
    )


def gate_check_result(registry: ModelRegistry, candidate: RegisteredModel) -> dg.AssetCheckResult:
    """``check_candidate_beats_baseline``: the verdict the registry recorded on the candidate."""
    verdict = registry.verdict(candidate.version) or {
        "passed": False, "reason": "never judged", "comparisons": [], "champion_version": None}
    return dg.AssetCheckResult(
        check_name="check_candidate_beats_baseline",
        passed=bool(verdict["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict["reason"],
        metadata={
            "why": verdict["reason"],
            "test": verdict.get("test", "-"),
            "candidate_version": dg.MetadataValue.int(candidate.version),
            "candidate_kind": candidate.kind,
            "margin": dg.MetadataValue.float(float(verdict.get("margin", 0.0))),
            "p_value_limit": dg.MetadataValue.float(float(verdict.get("p_value_limit", 0.05))),
            **_comparison_metadata(verdict),
            "current_champion": dg.MetadataValue.int(verdict.get("champion_version") or 0),
            **metrics_metadata(candidate.metrics),
        },
    )


def _comparison_metadata(verdict: dict) -> dict:
    out = {}
    for c in verdict.get("comparisons", []):
        prefix = "vs_zero" if c["reference"] == "baseline_zero" else "vs_champion"
        out[f"dm_statistic_{prefix}"] = dg.MetadataValue.float(float(c["statistic"]))
        out[f"p_value_{prefix}"] = dg.MetadataValue.float(float(c["p_value"]))
        out[f"skill_{prefix}_loss"] = dg.MetadataValue.float(float(c["skill"]))
    return out
