"""The code location loads; dagster.yaml and workspace.yaml are what deployments need."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy.engine import make_url

from rtml_assets import definitions as code_location
from rtml_assets.market_history.markets import load_markets
from rtml_core.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_with_groups_checks_and_partitions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.delenv("RTML_OFFLINE_URL", raising=False)
    monkeypatch.delenv("RTML_MARKETS_FILE", raising=False)
    defs = code_location.defs()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {"raw_trades": "market_history", "validated_candles": "market_history",
                      "indicator_table": "features", "microstructure_table": "features", "training_set": "training",
                      "baseline_model": "models", "lasso_model": "models",
                      "xgboost_model": "models", "candidate_model": "models",
                      "champion_model": "models", "online_features": "online",
                      "live_model_performance": "monitoring", "feature_drift": "monitoring"}
    checks = {key.name: key.asset_key.to_user_string() for key in graph.asset_check_keys}
    assert checks == {
        "check_validated_candles_no_duplicate_keys": "validated_candles",
        "check_validated_candles_monotonic_time": "validated_candles",
        "check_validated_candles_ohlc_invariants": "validated_candles",
        "check_validated_candles_gaps": "validated_candles",
        "check_validated_candles_outlier_returns": "validated_candles",
        "check_indicator_table_no_nan_after_warmup": "indicator_table",
        "check_indicator_table_ranges": "indicator_table",
        "check_indicator_table_row_count": "indicator_table",
        "check_candidate_beats_baseline": "candidate_model",
        "check_validated_candles_fresh": "validated_candles",
        "check_online_features_fresh": "online_features",
        "check_live_model_performance_skill": "live_model_performance",
        "check_feature_drift_psi": "feature_drift",
    }
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        assert spec.blocking == (key.name not in {"check_validated_candles_gaps",
                                                  "check_validated_candles_fresh",
                                                  "check_online_features_fresh",
                                                  "check_live_model_performance_skill",
                                                  "check_feature_drift_psi",
                                                  "check_validated_candles_outlier_returns"}), key.name
    partitions = defs.get_assets_def("validated_candles").partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    assert partitions.get_partitions_def_for_dimension("market").get_partition_keys() == [
        "cme_ES-USD_1m", "kraken_BTC-USDT_1m", "unknown_BTC-USD_30m"]
    assert defs.get_assets_def("indicator_table").partitions_def == partitions
    assert graph.get(dg.AssetKey("indicator_table")).parent_keys == {dg.AssetKey("validated_candles")}
    assert defs.resolve_job_def("market_history_job").partitions_def == partitions
    assert defs.resolve_job_def("features_job") is not None
    store = defs.resources["offline_store"]
    assert store.url == f"sqlite:///{(tmp_path / 'offline.sqlite').resolve()}"


def test_offline_url_comes_from_the_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.setenv("RTML_OFFLINE_URL", url)
    resource = code_location.defs().resources["offline_store"]
    assert isinstance(resource.url, dg.EnvVar)  # shown as an env var in the UI, resolved at run time
    assert resource.url.env_var_name == "RTML_OFFLINE_URL"
    with dg.build_resources({"offline_store": resource}) as resources:
        assert resources.offline_store.url == url
        resources.offline_store.get_store()  # opening migrates the schema into that file
    assert (tmp_path / "elsewhere.sqlite").exists()
    assert not (tmp_path / "offline.sqlite").exists()


def test_markets_file_replaces_the_bundled_catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    shutil.copy(ROOT / "data" / "kraken_xbtusdt_trades_rest.json", tmp_path / "trades.json")
    (tmp_path / "markets.yaml").write_text(
        "markets:\n"
        "  - exchange: kraken\n    symbol: XBT/USDT\n    timeframe: 5m\n    source: trades.json\n"
        "    format: kraken-rest\n    first_day: 2025-11-10\n    last_day: 2025-11-11\n"
    )
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.setenv("RTML_MARKETS_FILE", str(tmp_path / "markets.yaml"))
    (market,) = load_markets(tmp_path / "markets.yaml")
    assert market.key == "kraken_BTC-USDT_5m"
    assert market.source == (tmp_path / "trades.json").resolve()
    partitions = code_location.defs().get_assets_def("raw_trades").partitions_def
    assert partitions.get_partitions_def_for_dimension("market").get_partition_keys() == ["kraken_BTC-USDT_5m"]
    assert partitions.get_partitions_def_for_dimension("date").get_first_partition_key() == "2025-11-10"


@pytest.mark.parametrize(("text", "problem"), [
    ("markets: [\n  {exchange: kraken\n", "not valid YAML"),
    ("markets: []\n", "at least one market"),
    ("markets:\n  - {exchange: kraken, symbol: BTC-USD, timeframe: 1m, source: x, format: csv-ish,"
     " first_day: 2025-01-01, last_day: 2025-01-02}\n", "unknown format 'csv-ish'"),
    ("markets:\n  - {exchange: kraken, symbol: BTC-USD, timeframe: 7m, source: x, format: kraken-rest,"
     " first_day: 2025-01-01, last_day: 2025-01-02}\n", "must divide a day"),
    ("markets:\n  - {exchange: kraken, symbol: BTC/USD!, timeframe: 1m, source: x, format: kraken-rest,"
     " first_day: 2025-01-01, last_day: 2025-01-02}\n", "characters other than letters"),
    ("markets:\n" + "  - {exchange: kraken, symbol: BTC-USD, timeframe: 1m, source: x, format: kraken-rest,"
     " first_day: 2025-01-01, last_day: 2025-01-02}\n" * 2, "listed twice"),
])
def test_a_bad_markets_file_names_the_file_and_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "markets.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_markets(path)
    assert str(path) in str(error.value)
    assert problem in str(error.value)


def test_dagster_yaml_keeps_runs_events_and_schedules_in_postgres(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 fresh_postgres_url: str):
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["storage"] == {"postgres": {"postgres_url": {"env": "RTML_DAGSTER_PG_URL"}}}
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    # dagster-postgres speaks psycopg2 (SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3)
    monkeypatch.setenv("RTML_DAGSTER_PG_URL", make_url(fresh_postgres_url).set(drivername="postgresql+psycopg2")
                       .render_as_string(hide_password=False))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.get_runs() == []
        result = dg.materialize([_probe], instance=instance)
        assert result.success
        assert [run.run_id for run in instance.get_runs()] == [result.run_id]
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None


@dg.asset
def _probe() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 1})


_probe = _probe.with_attributes(asset_key_replacements={dg.AssetKey("_probe"): dg.AssetKey("probe")})


def test_workspace_yaml_loads_the_code_location():
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "rtml_assets.definitions"
    assert callable(code_location.defs)
