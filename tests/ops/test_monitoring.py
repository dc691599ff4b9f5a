"""Monitoring on real data: PSI, the realized-price join and live metrics, the prediction log."""

from __future__ import annotations

import math
import time

import msgspec
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from rtml_core.monitoring import PSI_MAJOR, feature_drift, join_realized, live_metrics, psi
from rtml_core.prediction_log import PredictionLog, read_predictions
from rtml_core.stores.offline import SqlOfflineStore, open_offline_store
from tests.training.data import btc_candles, trailing_features

NS = 1_000_000_000
TF_NS = 1800 * NS


def test_psi_matches_the_formula_by_hand():
    expected = np.arange(100.0)  # quartile edges 24.75, 49.5, 74.25: 25 values each
    actual = np.concatenate([np.arange(0.0, 25.0, 0.5), np.arange(75.0, 100.0, 0.5)])  # half low, half high
    floor = 1e-4
    by_hand = 2 * (0.5 - 0.25) * math.log(0.5 / 0.25) + 2 * (floor - 0.25) * math.log(floor / 0.25)
    assert psi(expected, actual, bins=4) == pytest.approx(by_hand, rel=1e-12)
    assert psi(expected, expected, bins=4) == 0.0


def test_psi_on_real_prices_and_returns():
    candles = btc_candles()
    first_quarter, last_quarter = candles.iloc[:4000], candles.iloc[-4000:]
    assert psi(first_quarter["close"], last_quarter["close"]) > PSI_MAJOR  # BTC moved from ~5k to ~10k
    returns = np.log(candles["close"]).diff()
    same_period = psi(returns.iloc[1:8000:2], returns.iloc[2:8000:2])  # interleaved halves of one period
    assert same_period < 0.05
    assert psi(returns.iloc[1:8000], returns.iloc[1:8000].to_numpy() * 3) > PSI_MAJOR  # tripled volatility


def test_feature_drift_table_and_unknown_for_all_nan():
    features = trailing_features(btc_candles(3000))
    names = ["ret_1", "vol_12", "range_1"]
    early, late = features.iloc[:1500].copy(), features.iloc[1500:].copy()
    late["range_1"] = np.nan
    table = feature_drift(early, late, names)
    assert list(table["feature"]) == names
    assert table.loc[2, "level"] == "unknown" and math.isnan(table.loc[2, "psi"])
    assert table.loc[0, "n_expected"] == 1499 and table.loc[0, "n_actual"] == 1500
    assert table.loc[1, "psi"] == pytest.approx(psi(early["vol_12"], late["vol_12"]))
    with pytest.raises(ValueError, match="missing"):
        feature_drift(early, late, ["nope"])


def _momentum_predictions(candles: pd.DataFrame, horizon_s: int, version: str) -> pd.DataFrame:
    """One prediction at each candle close: the last candle's log return continues (real numbers)."""
    close = candles["close"].to_numpy(np.float64)
    ret = np.concatenate([[0.0], np.diff(np.log(close))])
    return pd.DataFrame({
        "feature_time": candles["time"] + pd.Timedelta(seconds=1800),
        "model_version": version, "horizon_s": horizon_s, "price": close, "predicted_return": ret,
    })


def test_join_realized_matches_merge_asof_and_counts_pending_and_gaps():
    candles = btc_candles(2000)
    predictions = _momentum_predictions(candles, 3600, "7")
    dropped_start = candles["time"].iloc[1000]
    holed = candles[candles["time"] != dropped_start]
    joined = join_realized(predictions, holed, "30m")
    # independent: price at T = close of the candle whose close time is the last one <= T
    closes = holed.assign(close_time=holed["time"] + pd.Timedelta(seconds=1800))[["close_time", "close"]]
    due = predictions.assign(due=predictions["feature_time"] + pd.Timedelta(seconds=3600))
    expected = pd.merge_asof(due.sort_values("due"), closes, left_on="due", right_on="close_time")
    last_close = closes["close_time"].iloc[-1]
    matured = expected[expected["due"] <= last_close]
    in_gap = matured["close_time"] <= matured["due"] - pd.Timedelta(seconds=1800)
    assert joined.pending == int((expected["due"] > last_close).sum()) == 2
    assert joined.gaps == int(in_gap.sum()) == 1  # the prediction whose target candle was removed
    ok = matured[~in_gap].reset_index(drop=True)
    assert len(joined.frame) == len(ok)
    np.testing.assert_array_equal(joined.frame["target_price"].to_numpy(), ok["close"].to_numpy())
    # mean-of-last-10 baseline at t for a row far from the hole
    row = joined.frame.iloc[500]
    known = holed[holed["time"] + pd.Timedelta(seconds=1800) <= row["feature_time"]]["close"].iloc[-10:]
    assert row["baseline_price"] == pytest.approx(known.mean(), rel=1e-12)


def test_live_metrics_by_model_version():
    candles = btc_candles(3000)
    momentum = _momentum_predictions(candles, 1800, "3")
    flat = momentum.assign(model_version="4", predicted_return=0.0)
    joined = join_realized(pd.concat([momentum, flat], ignore_index=True), candles, "30m").frame
    table = live_metrics(joined).set_index("model_version")
    assert list(table.index) == ["3", "4"]
    assert table.loc["4", "skill_vs_zero"] == 0.0 and table.loc["4", "directional_accuracy"] == 0.5
    mine = joined[joined["model_version"] == "3"]
    mae = np.mean(np.abs(mine["price"] * np.exp(mine["predicted_return"]) - mine["target_price"]))
    assert table.loc["3", "mae_price"] == pytest.approx(mae, rel=1e-12)
    # skill on the judged loss: squared error of the log return, as on the holdout
    target = np.log(mine["target_price"] / mine["price"])
    mse = np.mean((mine["predicted_return"] - target) ** 2)
    mse_mean10 = np.mean((np.log(mine["baseline_price"] / mine["price"]) - target) ** 2)
    assert table.loc["3", "skill_vs_mean10"] == pytest.approx(1 - mse / mse_mean10, rel=1e-9)
    assert table.loc["3", "skill_vs_zero"] == pytest.approx(1 - mse / np.mean(target**2), rel=1e-9)
    assert table.loc["3", "n"] == len(mine) == 2999


def _api_prediction(i: int, close: float, feature_time: pd.Timestamp):
    from api.schemas import ExecutionPayload, Prediction

    return Prediction(
        symbol="BTC-USD", exchange="kraken", timeframe="30m", model_version=str(1 + i % 2), feature_set_version="v1",
        feature_event_time=feature_time.isoformat(), feature_age_ms=12.5, price=close,
        predicted_price=close * 1.001, predicted_return=math.log(1.001), prob_up=0.55, horizon_s=1800, stale=False,
        execution=ExecutionPayload(side="buy", size=0.1, stop_loss=None, take_profit=None, expected_edge_bps=10.0,
                                   cost_bps=2.0, spread_bps=1.0, volatility_annualized=None, atr=None, reason="r"),
        inference_path="xgboost",
    )


def test_prediction_log_round_trip(offline_url):
    candles = btc_candles(1200)
    store = open_offline_store(offline_url)
    log = PredictionLog(store, batch_size=256, flush_interval_s=0.05)
    started = time.perf_counter()
    for i, row in candles.iterrows():
        item = _api_prediction(i, float(row["close"]), row["time"] + pd.Timedelta(minutes=30))
        assert log.record(item if i % 3 else msgspec.structs.asdict(item))
    per_call = (time.perf_counter() - started) / len(candles)
    log.close()
    assert log.written == len(candles) and log.dropped == 0 and log.invalid == 0
    assert per_call < 1e-3  # queued, not written on the caller's thread
    frame = read_predictions(store, exchange="kraken", symbol="BTC-USD", timeframe="30m")
    assert len(frame) == len(candles)
    np.testing.assert_array_equal(frame["price"].to_numpy(), candles["close"].to_numpy())
    assert (frame["feature_time"] == candles["time"] + pd.Timedelta(minutes=30)).all()
    assert set(frame["model_version"]) == {"1", "2"} and set(frame["side"]) == {"buy"}
    assert store.schema_versions()["predictions"] == 1
    store.close()


def test_prediction_log_bounded_while_the_store_is_locked(tmp_path):
    url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    store = open_offline_store(url)
    blocker = sa.create_engine(url, connect_args={"timeout": 0.1})
    # SQLite's 30 s busy timeout would hide the lock: let the log's connections give up fast
    impatient = SqlOfflineStore(sa.create_engine(url, connect_args={"timeout": 0.05}))
    log = PredictionLog(impatient, max_queue=20, batch_size=5, flush_interval_s=0.01, retry_cap_s=0.2,
                        owns_store=True)
    raw = blocker.raw_connection()
    raw.isolation_level = None
    raw.execute("BEGIN EXCLUSIVE")
    item = {"exchange": "kraken", "symbol": "BTC-USD", "timeframe": "1m", "model_version": "1",
            "feature_set_version": "v1", "feature_event_time": "2025-11-10T17:24:00+00:00", "horizon_s": 60,
            "price": 100.0, "predicted_price": 101.0, "predicted_return": math.log(1.01)}
    accepted = sum(log.record(item) for _ in range(200))
    assert accepted <= 20 + 5 + 5 and log.dropped == 200 - accepted  # queue bound + batches in hand
    deadline = time.monotonic() + 5
    while log.write_errors == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.write_errors >= 1 and log.written == 0
    raw.execute("ROLLBACK")
    raw.close()
    log.close()
    assert log.written == accepted
    assert len(read_predictions(store)) == accepted
    assert not log.record(item)  # closed
    store.close()
    blocker.dispose()


async def test_prediction_log_aclose_from_the_event_loop(tmp_path):
    log = PredictionLog(open_offline_store(f"sqlite:///{tmp_path / 'o.sqlite'}"), flush_interval_s=5.0,
                        owns_store=True)
    log.record({"exchange": "kraken", "symbol": "BTC-USD", "timeframe": "1m", "model_version": "1",
                "feature_set_version": "v1", "feature_event_time": 1_762_795_440 * NS, "horizon_s": 60,
                "price": 100.0, "predicted_price": 100.0, "predicted_return": 0.0})
    log.record({"symbol": "BTC-USD"})  # invalid: counted, not fatal
    started = time.perf_counter()
    await log.aclose()
    assert time.perf_counter() - started < 4.0  # close does not wait out the flush interval
    assert log.written == 1 and log.invalid == 1
    assert not log._thread.is_alive()
