"""The training assets (one partition per market) materialized with Dagster on real BTC-USD 30m
history in a real store: baselines registered, the gate judged, the champion per market."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training import build_training_assets, build_training_schedules, training_resources
from rtml_cli.main import cli
from rtml_core.errors import InputError
from rtml_core.registry import Market, ModelRegistry
from rtml_core.stores.offline import open_offline_store
from tests.training.data import btc_candles, store_candles, trailing_features

VERSION = "trailing-test-v1"
MARKET = {"exchange": "gym", "symbol": "BTC-USD", "timeframe": "30m"}
KEY = "gym_BTC-USD_30m"
TRAINING = build_training_assets([Market("gym", "BTC-USD", "30m", 1800), Market("gym", "ETH-USD", "30m", 1800)])
training_assets, training_checks = TRAINING.assets, TRAINING.checks
FAST_TUNING = {"n_folds": 2, "xgb_trials": 2, "xgb_n_estimators": [30], "lasso_alphas": [1e-5, 1e-4], "nthread": 1}


def _fill_store(url: str, rows: int = 1500) -> None:
    candles = btc_candles(rows)
    store = open_offline_store(url)
    store_candles(store, candles)
    features = trailing_features(candles)
    store.register_feature_set(VERSION, [c for c in features.columns if c != "time"], {"test": True})
    store.write_features(features, feature_set_version=VERSION, **MARKET)
    store.close()


def _run(url: str, artifacts, training: dict, promotion: dict | None = None, key: str = KEY,
         selection=None):
    offline = OfflineStoreResource(url=url)
    ops = {
        "training_set": {"config": {"feature_set_version": VERSION, "min_rows": 100, **training}},
        "baseline_model": {"config": FAST_TUNING},
        "lasso_model": {"config": FAST_TUNING},
        "xgboost_model": {"config": FAST_TUNING},
    }
    if promotion is not None:
        ops["candidate_model"] = {"config": promotion}
    if selection is not None:
        ops = {name: value for name, value in ops.items() if name in selection}
    return dg.materialize(
        [*training_assets, *training_checks],
        selection=selection,
        partition_key=key,
        resources={"offline_store": offline, **training_resources(offline, str(artifacts)),
                   "io_manager": dg.FilesystemIOManager(base_dir=str(artifacts.parent / "io"))},
        run_config={"ops": ops},
        raise_on_error=False,
    )


def _check(result):
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_pipeline_registers_baselines_models_and_judges_the_candidate(sqlite_url, tmp_path):
    _fill_store(sqlite_url)
    result = _run(sqlite_url, tmp_path / "artifacts", {})
    by_asset = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()}
    meta = by_asset["training_set"]
    assert meta["rows"].value > 1000 and meta["feature_set_version"].value == VERSION
    assert meta["horizon_s"].value == 1800  # the default horizon: one candle
    assert len(meta["content_hash"].value) == 64
    for name in ("lasso_model", "xgboost_model"):
        model = by_asset[name]
        assert model["predicted_vs_realized"].value.startswith("![predicted vs realized](data:image/png;base64,")
        assert model["reliability"].value.startswith("![reliability of prob_up](data:image/png;base64,")
        for key in ("loss", "rmse_return", "mae_return", "skill_vs_mean10", "skill_vs_zero", "brier",
                    "brier_base_rate", "log_loss", "log_loss_base_rate", "p_value_vs_zero"):
            assert key in model, key
        assert model["loss_name"].value == "squared_error_log_return"
        assert "refit on every row" in model["served_fit"].value
    registry = ModelRegistry(open_offline_store(sqlite_url), tmp_path / "artifacts", owns_store=True)
    versions = registry.list()
    assert [v.kind for v in versions] == ["baseline_zero", "baseline_mean10", "lasso", "xgboost"]
    assert all(v.market == Market("gym", "BTC-USD", "30m", 1800) for v in versions)
    assert all(v.run_id == result.run_id and v.feature_set_version == VERSION for v in versions)
    assert all(v.training_set_hash == meta["content_hash"].value for v in versions)
    assert all(v.calibration and v.calibration["method"] == "logistic" for v in versions)
    zero = versions[0]
    assert registry.promotions()[0].version == zero.version and registry.promotions()[0].action == "initial"

    candidate = by_asset["candidate_model"]
    check = _check(result)
    verdict = registry.verdict(candidate["model_version"].value)
    assert verdict["passed"] == check.passed and check.metadata["why"].text == verdict["reason"]
    assert "Diebold-Mariano" in candidate["test"].value and "p_value_vs_zero" in candidate
    assert verdict["comparisons"][0]["reference"] == "baseline_zero"
    other = next(v for v in versions[2:] if v.version != candidate["model_version"].value)
    assert registry.verdict(other.version)["reason"].startswith("not the candidate")
    print("verdict:", verdict["reason"])
    champion = registry.champion_of(Market("gym", "BTC-USD", "30m", 1800))
    if check.passed:
        assert by_asset["champion_model"]["promoted"].value and champion.version == candidate["model_version"].value
    else:  # honest either way: a failing candidate is never promoted; the zero baseline stays
        assert "champion_model" not in by_asset and champion.version == zero.version

    # an impossible margin: the gate fails, champion_model is skipped, the champion stays
    epoch = registry.champion_epoch()
    again = _run(sqlite_url, tmp_path / "artifacts", {}, promotion={"margin": 0.99})
    failed = _check(again)
    assert not failed.passed and "not above the margin 0.99" in failed.metadata["why"].text
    assert "champion_model" not in {e.materialization.asset_key.to_user_string()
                                    for e in again.get_asset_materialization_events()}
    assert registry.champion_epoch() == epoch
    assert registry.champion_of(Market("gym", "BTC-USD", "30m", 1800)) == champion
    assert len(registry.list()) == 6  # the baselines are registered once per market, horizon and feature set

    # materializing champion_model alone (the UI's Materialize button) promotes nothing that failed
    alone = _run(sqlite_url, tmp_path / "artifacts", {}, selection=["champion_model"])
    assert alone.success
    (event,) = alone.get_asset_materialization_events()
    assert event.materialization.metadata["promoted"].value is False
    assert "failed the promotion gate" in event.materialization.metadata["note"].value
    assert registry.champion_epoch() == epoch
    assert registry.audit()[-1]["action"] == "refused"

    # ... and so does the command line without --force
    failed_version = next(
        e.materialization.metadata["model_version"].value for e in again.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "candidate_model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTML_OFFLINE_URL", sqlite_url)
        patch.setenv("RTML_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
        refused = CliRunner().invoke(cli, ["models", "promote", str(failed_version)])
    assert refused.exit_code == 1 and "failed the promotion gate" in refused.output, refused.output
    assert registry.champion_epoch() == epoch


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"horizon_s": 60}, "shorter than the timeframe"),
        ({"feature_set_version": "nope-v9"}, "has no rows for gym BTC-USD 30m"),
        ({"start": "2017-10-05T00:00:00Z", "end": "2017-10-05T00:00:00Z"}, "holds no stored feature rows"),
        ({"start": "2017-10-05T00:00:00Z", "end": "2017-10-07T00:00:00Z"}, "at least 210 are needed"),
        ({"__key": "gym_ETH-USD_30m"}, "has no rows for gym ETH-USD 30m"),
    ],
)
def test_bad_config_fails_before_any_work_and_registers_nothing(sqlite_url, tmp_path, training, message):
    _fill_store(sqlite_url, rows=600)
    key = training.pop("__key", KEY)
    result = _run(sqlite_url, tmp_path / "artifacts", training, key=key)
    assert not result.success
    failure = result.failure_data_for_node("training_set")
    assert failure is not None
    error, messages = failure.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    assert any(message in text for text in messages), messages
    assert ModelRegistry(open_offline_store(sqlite_url), tmp_path / "artifacts", owns_store=True).list() == []
    assert not (tmp_path / "artifacts").exists() or list((tmp_path / "artifacts").iterdir()) == []


def test_definitions_load_with_schedule_and_automation(sqlite_url, tmp_path):
    offline = OfflineStoreResource(url=sqlite_url)
    jobs, schedules, sensors = build_training_schedules(TRAINING.partitions)
    defs = dg.Definitions(
        assets=training_assets, asset_checks=training_checks, schedules=schedules, jobs=jobs,
        sensors=sensors, resources={"offline_store": offline, **training_resources(offline, str(tmp_path))},
    )
    dg.Definitions.validate_loadable(defs)
    schedule = defs.get_schedule_def("retrain_hourly")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.get_sensor_def("training_automation").default_status == dg.DefaultSensorStatus.RUNNING
    instance = dg.DagsterInstance.local_temp(str(tmp_path))  # persistent: a schedule context needs its ref

    def tick(hour: int) -> list[str]:
        moment = pd.Timestamp(f"2026-01-01T{hour:02d}:00Z").to_pydatetime()
        with dg.build_schedule_context(scheduled_execution_time=moment, instance=instance,
                                       repository_def=defs.get_repository_def()) as ctx:
            result = schedule.evaluate_tick(ctx)
        assert result.run_requests or "no market has feature partitions newer" in result.skip_message
        return sorted(r.partition_key for r in result.run_requests or [])

    def land(asset: str, partition: str) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))

    assert tick(10) == []  # no features yet: nothing to train on
    land("indicator_table", "2026-01-01|gym_BTC-USD_30m")
    land("indicator_table", "2026-01-01|gym_ETH-USD_30m")
    assert tick(11) == ["gym_BTC-USD_30m", "gym_ETH-USD_30m"]  # never trained: one run per market
    land("training_set", "gym_BTC-USD_30m")
    land("training_set", "gym_ETH-USD_30m")
    assert tick(12) == []  # trained on everything: both skipped
    land("microstructure_table", "2026-01-02|gym_ETH-USD_30m")
    assert tick(13) == ["gym_ETH-USD_30m"]  # only the market with a new feature partition
    land("training_set", "gym_ETH-USD_30m")
    land("indicator_table", "2026-01-02|gym_BTC-USD_30m")
    assert tick(14) == ["gym_BTC-USD_30m"]
    graph = defs.resolve_asset_graph()
    for asset in training_assets:
        assert graph.get(asset.key).automation_condition is not None
        assert graph.get(asset.key).partitions_def == TRAINING.partitions
    assert dg.AssetKey("indicator_table") in graph.get(dg.AssetKey("training_set")).parent_keys
    (check,) = [spec for asset in training_assets for spec in asset.check_specs]
    assert check.name == "check_candidate_beats_baseline" and check.blocking
    assert check.asset_key == dg.AssetKey("candidate_model")


def test_resolve_request_refuses_horizon_below_the_timeframe_without_reading():
    from rtml_assets.training.assets import resolve_request
    from rtml_assets.training.config import TrainingConfig

    with pytest.raises(InputError, match="shorter than the timeframe 30m"):
        resolve_request(None, TrainingConfig(horizon_s=60), "v1", ("gym", "BTC-USD", "30m"))


def test_new_feature_partition_triggers_retraining_through_automation(sqlite_url, tmp_path):
    """A new indicator_table partition of one market requests that market's training set and every
    model downstream (not the other market's); the champion waits for the candidate's blocking check."""
    days = dg.DailyPartitionsDefinition(start_date="2017-10-01")
    partitions = dg.MultiPartitionsDefinition(
        {"date": days, "market": dg.StaticPartitionsDefinition(["gym_BTC-USD_30m", "gym_ETH-USD_30m"])})
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
    requested = {r.key.to_user_string(): r.true_subset for r in landed.results if r.true_subset.size}
    assert set(requested) == {"training_set", "baseline_model", "lasso_model", "xgboost_model", "candidate_model"}
    for subset in requested.values():
        assert subset.size == 1 and list(subset.expensively_compute_partition_keys()) == [KEY]
