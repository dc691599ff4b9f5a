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
    assert "500,000 trades -> 2,264 candles" in out  # the real ES ticks, 1m candles
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
    assert rows[("trades", "cme", "ES-USD")] == 500_000
    assert rows[("candles", "cme", "ES-USD")] == 2_264
    assert rows[("candles", "unknown", "BTC-USD")] == 35_019
    assert rows[("features", "kraken", "BTC-USDT")] == 411
    assert ("trades", "unknown", "BTC-USD") not in rows  # a candle-only market
    assert (tmp_path / "home" / "dagster_home" / "dagster.yaml").exists()
