"""`rtml demo` end to end on a fresh RTML_HOME with the bundled real history."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.features import DEFAULT_FEATURE_SET
from rtml_core.stores.offline import open_offline_store


def test_demo_imports_validates_and_computes_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("RTML_OFFLINE_URL", "RTML_MARKETS_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RTML_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "[1] market history" in out and "[2] features" in out
    # history of the real ES ticks up to 2013-09-02; the stream replays 2013-09-03's ticks
    assert "66,321 trades -> 1,433 candles" in out
    assert "[3] training" in out and "cme_ES-USD_1m H=60s:" in out and "unknown_BTC-USD_30m H=1800s:" in out
    assert "kraken_BTC-USDT_1m: not trained: too little history" in out  # 411 candles: too few to judge
    assert out.count("test: Diebold-Mariano") == 2 and out.count("  champion: ") == 2
    assert "replayed 433,679 real ticks of 2013-09-03 -> 832 candles, 832 feature rows (0 late)" in out
    assert "[5] prediction" in out and "/v1/predict" in out and "-> 200" in out
    assert "1,000 trades -> 411 candles" in out  # the real Kraken trades, gaps filled
    assert "candle file -> 35,019 candles" in out
    assert "FAILED" not in out
    assert f"version {DEFAULT_FEATURE_SET.version}" in out

    store = open_offline_store(f"sqlite:///{(tmp_path / 'home' / 'offline.sqlite').resolve()}")
    try:
        markets = store.markets()
    finally:
        store.close()
    rows = {(r.kind, r.exchange, r.symbol): r.rows for r in markets.itertuples()}
    assert rows[("trades", "cme", "ES-USD")] == 66_321
    assert rows[("candles", "cme", "ES-USD")] == 1_433 + 832  # history + the stream's offline log
    assert rows[("candles", "unknown", "BTC-USD")] == 35_019
    assert rows[("features", "kraken", "BTC-USDT")] == 411
    assert ("trades", "unknown", "BTC-USD") not in rows  # a candle-only market
    from rtml_core.registry import ModelRegistry

    registry = ModelRegistry(open_offline_store(f"sqlite:///{(tmp_path / 'home' / 'offline.sqlite').resolve()}"),
                             tmp_path / "home" / "artifacts", owns_store=True)
    try:  # one champion per trained market, each of its own market; the baselines are registered models
        champions = {(m.exchange, m.symbol, m.timeframe): v for m, (_, v) in registry.champions().items()}
        assert set(champions) == {("cme", "ES-USD", "1m"), ("unknown", "BTC-USD", "30m")}
        assert all((v.exchange, v.symbol, v.timeframe) == key for key, v in champions.items())
        kinds = {(v.exchange, v.kind) for v in registry.list()}
        assert {("cme", "baseline_zero"), ("cme", "baseline_mean10"), ("unknown", "baseline_zero")} <= kinds
    finally:
        registry.close()
    assert (tmp_path / "home" / "dagster_home" / "dagster.yaml").exists()


def test_demo_steps_record_runs_in_the_embedded_dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``--record-runs`` keeps the runs, materializations and checks where ``dagster dev`` finds them."""
    import dagster as dg

    from rtml_assets.market_history.markets import BUNDLED_DATA
    from rtml_cli.demo import run_demo
    from rtml_core.settings import Settings

    (tmp_path / "markets.yaml").write_text(
        "markets:\n  - {exchange: kraken, symbol: XBT/USDT, timeframe: 1m, format: kraken-rest,\n"
        f"     source: {BUNDLED_DATA / 'kraken_xbtusdt_trades_rest.json'},\n"
        "     first_day: 2025-11-10, last_day: 2025-11-10, fill_gaps: true}\n"
    )
    monkeypatch.delenv("RTML_OFFLINE_URL", raising=False)
    settings = Settings(home=tmp_path / "home", markets_file=tmp_path / "markets.yaml")
    lines: list[str] = []
    demo = run_demo(settings, echo=lines.append, record_runs=True)
    assert not demo.failures, lines
    assert [len(outcomes) for outcomes in demo.outcomes.values()] == [1, 1]
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster_home")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(run.is_success for run in runs)
        event = instance.get_latest_materialization_event(dg.AssetKey("indicator_table"))
        assert event.asset_materialization.metadata["rows"].value == 397  # 17:23..23:59, gaps filled
        assert not instance.telemetry_enabled


def test_fresh_resets_only_the_embedded_stores(tmp_path: Path):
    from rtml_cli.demo import reset_embedded_home
    from rtml_core.errors import InputError
    from rtml_core.settings import Settings

    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    (home / "offline.sqlite").write_bytes(b"x")
    (home / "online.sqlite").write_bytes(b"x")
    (home / "notes.txt").write_text("a user's file")
    removed = reset_embedded_home(Settings(home=home))
    assert sorted(p.name for p in removed) == ["artifacts", "offline.sqlite", "online.sqlite"]
    assert [p.name for p in home.iterdir()] == ["notes.txt"]  # nothing else is touched
    with pytest.raises(InputError, match="--fresh resets only the embedded stores"):
        reset_embedded_home(Settings(home=home, offline_url="postgresql+psycopg://postgres@127.0.0.1/x"))
