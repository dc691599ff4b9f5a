"""The training assets materialized with Dagster on real BTC-USD 30m history in a real store."""

from __future__ import annotations

from decimal import Decimal

import dagster as dg
import pytest

from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training import (
    training_assets,
    training_checks,
    training_resources,
    training_schedules,
    training_sensors,
)
from rtml_core.errors import InputError
from rtml_core.registry import ModelRegistry
from rtml_core.schemas import Candle
from rtml_core.stores.offline import open_offline_store
from tests.training.data import btc_candles, trailing_features

VERSION = "trailing-test-v1"
MARKET = {"exchange": "gym", "symbol": "BTC-USD", "timeframe": "30m"}
FAST_TUNING = {"n_folds": 2, "xgb_trials": 2, "xgb_n_estimators": [30], "lasso_alphas": [1e-5, 1e-4], "nthread": 1}


def _fill_store(url: str, rows: int = 1500) -> None:
    candles = btc_candles(rows)
    store = open_offline_store(url)
    store.write_candles(
        Candle(exchange="gym", symbol="BTC-USD", timeframe="30m", start_ns=int(row.time.value),
               open=Decimal(str(row.open)), high=Decimal(str(row.high)), low=Decimal(str(row.low)),
               close=Decimal(str(row.close)), volume=Decimal(str(row.volume)), vwap=None, trade_count=0)
        for row in candles.itertuples()
    )
    features = trailing_features(candles)
    store.register_feature_set(VERSION, [c for c in features.columns if c != "time"], {"test": True})
    store.write_features(features, feature_set_version=VERSION, **MARKET)
    store.close()


def _run(url: str, artifacts, training: dict, promotion: dict | None = None):
    offline = OfflineStoreResource(url=url)
    ops = {
        "training_set": {"config": {"feature_set_version": VERSION, "horizon_s": 1800, "min_rows": 100, **training}},
        "lasso_model": {"config": FAST_TUNING},
        "xgboost_model": {"config": FAST_TUNING},
    }
    if promotion is not None:
        ops["candidate_model_check_candidate_beats_baseline"] = {"config": promotion}
    return dg.materialize(
        [*training_assets, *training_checks],
        resources={"offline_store": offline, **training_resources(offline, str(artifacts))},
        run_config={"ops": ops},
        raise_on_error=False,
    )


def _check(result):
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_pipeline_registers_models_gates_and_promotes(sqlite_url, tmp_path):
    _fill_store(sqlite_url)
    result = _run(sqlite_url, tmp_path / "artifacts", MARKET)
    by_asset = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()}
    meta = by_asset["training_set"]
    assert meta["rows"].value > 1000 and meta["feature_set_version"].value == VERSION
    assert len(meta["content_hash"].value) == 64
    for name in ("lasso_model", "xgboost_model"):
        model = by_asset[name]
        assert model["predicted_vs_realized"].value.startswith("![predicted vs realized](data:image/png;base64,")
        assert "skill_vs_mean10" in model and "skill_vs_zero" in model and "directional_accuracy" in model
    registry = ModelRegistry(sqlite_url, tmp_path / "artifacts")
    versions = registry.list()
    assert sorted(v.kind for v in versions) == ["lasso", "xgboost"]
    assert all(v.run_id == result.run_id and v.feature_set_version == VERSION for v in versions)
    assert all(v.training_set_hash == meta["content_hash"].value for v in versions)
    check = _check(result)
    print("first run check:", check.passed, check.metadata["why"].text)
    candidate = by_asset["candidate_model"]["model_version"].value
    if check.passed:
        assert "champion_model" in by_asset and registry.champion().version == candidate
        assert result.success
    else:  # honest either way: a failing candidate is never promoted
        assert "champion_model" not in by_asset and registry.champion() is None
    assert "why" in check.metadata

    # an impossible margin: the check fails, champion_model is skipped, the champion stays
    before = registry.champion()
    epoch = registry.champion_epoch()
    again = _run(sqlite_url, tmp_path / "artifacts", MARKET, promotion={"margin": 0.99})
    failed = _check(again)
    assert not failed.passed and "not above the margin 0.99" in failed.metadata["why"].text
    assert "champion_model" not in {e.materialization.asset_key.to_user_string()
                                    for e in again.get_asset_materialization_events()}
    assert registry.champion_epoch() == epoch
    assert (registry.champion() or None) == before
    assert len(registry.list()) == 4


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({**MARKET, "horizon_s": 60}, "shorter than the timeframe"),
        ({**MARKET, "feature_set_version": "nope-v9"}, "has no rows"),
        ({**MARKET, "start": "2017-10-05T00:00:00Z", "end": "2017-10-05T00:00:00Z"}, "holds no stored feature rows"),
        ({**MARKET, "start": "2017-10-05T00:00:00Z", "end": "2017-10-07T00:00:00Z"}, "at least 210 are needed"),
        ({"exchange": "nowhere"}, "has no rows for exchange=nowhere"),
    ],
)
def test_bad_config_fails_before_any_work_and_registers_nothing(sqlite_url, tmp_path, training, message):
    _fill_store(sqlite_url, rows=600)
    result = _run(sqlite_url, tmp_path / "artifacts", training)
    assert not result.success
    failure = result.failure_data_for_node("training_set")
    assert failure is not None
    error, messages = failure.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    assert any(message in text for text in messages), messages
    assert ModelRegistry(sqlite_url, tmp_path / "artifacts").list() == []
    assert not (tmp_path / "artifacts").exists() or list((tmp_path / "artifacts").iterdir()) == []


def test_definitions_load_with_schedule_and_automation(sqlite_url, tmp_path):
    offline = OfflineStoreResource(url=sqlite_url)
    defs = dg.Definitions(
        assets=training_assets, asset_checks=training_checks, schedules=training_schedules,
        sensors=training_sensors, resources={"offline_store": offline, **training_resources(offline, str(tmp_path))},
    )
    dg.Definitions.validate_loadable(defs)
    schedule = defs.get_schedule_def("retrain_hourly")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    graph = defs.resolve_asset_graph()
    for asset in training_assets:
        assert graph.get(asset.key).automation_condition is not None
    assert dg.AssetKey("indicator_table") in graph.get(dg.AssetKey("training_set")).parent_keys
    (check,) = [spec for checks in training_checks for spec in checks.check_specs]
    assert check.name == "check_candidate_beats_baseline" and check.blocking
    assert check.asset_key == dg.AssetKey("candidate_model")


def test_resolve_request_refuses_horizon_below_the_timeframe_without_reading():
    from rtml_assets.training.assets import resolve_request
    from rtml_assets.training.config import TrainingConfig

    with pytest.raises(InputError, match="shorter than the timeframe 30m"):
        resolve_request(None, TrainingConfig(timeframe="30m", horizon_s=60), "v1")


def test_new_feature_partition_triggers_retraining_through_automation(sqlite_url, tmp_path):
    """A new indicator_table partition requests the training set and every model downstream;
    the champion waits for the candidate's blocking check."""
    days = dg.DailyPartitionsDefinition(start_date="2017-10-01")
    partitions = dg.MultiPartitionsDefinition({"date": days, "market": dg.StaticPartitionsDefinition(["gym_BTC-USD_30m"])})
    upstream = [
        dg.AssetSpec("validated_candles", partitions_def=partitions),
        dg.AssetSpec("indicator_table", partitions_def=partitions, deps=["validated_candles"]),
    ]
    offline = OfflineStoreResource(url=sqlite_url)
    defs = dg.Definitions(assets=[*upstream, *training_assets], asset_checks=training_checks,
                          resources={"offline_store": offline, **training_resources(offline, str(tmp_path))})
    instance = dg.DagsterInstance.ephemeral()
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert quiet.total_requested == 0
    instance.report_runless_asset_event(
        dg.AssetMaterialization("indicator_table", partition="2017-10-05|gym_BTC-USD_30m")
    )
    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    requested = {r.key.to_user_string() for r in landed.results if r.true_subset.size}
    assert requested == {"training_set", "baseline_model", "lasso_model", "xgboost_model", "candidate_model"}
