"""indicator_table: a partition equals the full-history computation; checks catch bad rows."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt

from rtml_assets.features.checks import measure_no_nan_after_warmup, measure_ranges, measure_row_count
from rtml_assets.market_history.partitions import day_start_ns
from rtml_core.features import DEFAULT_FEATURE_SET, compute_features
from rtml_core.stores.offline import open_offline_store
from tests.assets.helpers import check_results, definitions, market, materialized, run

FIRST, LAST = dt.date(2018, 3, 1), dt.date(2018, 3, 6)
DAY = dt.date(2018, 3, 4)  # a partition with three days of history before it


def test_a_partition_equals_the_full_history_computation(offline_url: str, tmp_path: Path):
    btc = market("unknown_BTC-USD_30m")
    defs = definitions(tmp_path, offline_url)
    assert run(defs, ["validated_candles"], day=FIRST, last_day=LAST, market=btc).success
    result = run(defs, ["indicator_table"], day=DAY, market=btc)
    assert result.success
    version = DEFAULT_FEATURE_SET.version
    start, end = day_start_ns(DAY), day_start_ns(DAY + dt.timedelta(days=1))

    store = open_offline_store(offline_url)
    try:
        stored = store.read_features("unknown", "BTC-USD", "30m", version)
        candles = store.read_candles("unknown", "BTC-USD", "30m")
        assert version in {row["version"] for row in store.feature_set_versions()}
    finally:
        store.close()
    full = compute_features(candles, DEFAULT_FEATURE_SET)
    expected = full[(full["time"] >= pd.Timestamp(start, unit="ns", tz="UTC"))
                    & (full["time"] < pd.Timestamp(end, unit="ns", tz="UTC"))].reset_index(drop=True)
    assert len(stored) == len(expected) == 48  # only the materialized day was written
    pdt.assert_frame_equal(stored, expected, check_exact=False, rtol=1e-12, atol=1e-12)
    assert not stored.drop(columns="time").iloc[0].isna().any()  # the warm-up did not restart at midnight

    # what a partition computed on its own day would have given: NaN warm-up rows, other EMA values
    alone = compute_features(candles[(candles["time"] >= expected["time"].iloc[0])
                                     & (candles["time"] <= expected["time"].iloc[-1])].reset_index(drop=True))
    assert alone["sma_50"].isna().all()  # 48 candles: SMA(50) never warms up within one day
    assert not np.allclose(alone["ema_26"].to_numpy()[-1], expected["ema_26"].to_numpy()[-1], rtol=1e-12)

    metadata = materialized(result)["indicator_table"][0].metadata
    assert metadata["rows"].value == 48
    assert metadata["feature_set_version"].value == version
    checks = check_results(result)
    assert {"check_indicator_table_no_nan_after_warmup", "check_indicator_table_ranges",
            "check_indicator_table_row_count"} <= set(checks)
    assert all(c.passed for c in checks.values()), {k: v.metadata for k, v in checks.items() if not v.passed}


def test_rematerializing_the_indicator_table_replaces_rows(tmp_path: Path):
    kraken = market("kraken_BTC-USDT_1m")
    url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    defs = definitions(tmp_path, url)
    assert run(defs, ["raw_trades", "validated_candles"], day=kraken.first_day, last_day=kraken.last_day,
               market=kraken).success
    frames = []
    for _ in range(2):
        assert run(defs, ["indicator_table"], day=kraken.first_day, last_day=kraken.last_day, market=kraken).success
        store = open_offline_store(url)
        frames.append(store.read_features("kraken", "BTC-USDT", "1m", DEFAULT_FEATURE_SET.version))
        candles = store.read_candles("kraken", "BTC-USDT", "1m")
        store.close()
    assert len(frames[0]) == len(candles) == 411
    pdt.assert_frame_equal(frames[0], frames[1])


def _times(n: int) -> pd.Series:
    return pd.Series(pd.date_range("2018-03-01", periods=n, freq="30min", tz="UTC"))


def test_nan_after_warmup_fails_and_names_the_feature():
    frame = pd.DataFrame({"time": _times(6), "rsi_14": [math.nan, math.nan, 50.0, 51.0, math.nan, 49.0]})
    assert measure_no_nan_after_warmup(frame, first_position=0, warmup=2).passed is False
    result = measure_no_nan_after_warmup(frame, first_position=0, warmup=2)
    assert result.metadata["rows_with_nan"] == 1
    assert result.metadata["features_with_nan"] == "rsi_14 (1)"
    assert measure_no_nan_after_warmup(frame.iloc[:4], first_position=0, warmup=2).passed


def test_rsi_or_stochastics_outside_0_100_fail():
    frame = pd.DataFrame({"time": _times(3), "rsi_14": [10.0, 100.5, 50.0], "stoch_k_14_3_3": [0.0, 100.0, 3.0]})
    result = measure_ranges(frame)
    assert not result.passed
    assert result.metadata["rsi_14 outside [0, 100]"] == 1
    assert result.metadata["stoch_k_14_3_3 outside [0, 100]"] == 0
    frame.loc[1, "rsi_14"] = 100.0
    assert measure_ranges(frame).passed


def test_row_count_must_equal_candle_count():
    candles = pd.DataFrame({"time": _times(4)})
    assert measure_row_count(candles.copy(), candles).passed
    result = measure_row_count(candles.iloc[:3], candles)
    assert not result.passed
    assert result.metadata["candles_without_features"] == 1
