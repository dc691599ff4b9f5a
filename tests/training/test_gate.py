"""The promotion gate: Diebold-Mariano with a HAC variance, no phantom skill on random walks
bootstrapped from real returns, and a real signal (a planted future return) promoted."""

from __future__ import annotations

from decimal import Decimal

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training import build_training_assets, training_resources
from rtml_core.registry import Market, ModelRegistry
from rtml_core.schemas import Candle
from rtml_core.stores.offline import open_offline_store
from rtml_core.training.gate import (
    GateConfig,
    diebold_mariano,
    hac_variance,
    judge,
    newey_west_lags,
)
from tests.training.data import btc_candles, trailing_features

VERSION = "gate-test-v1"
ROWS = 1500
FAST_TUNING = {"n_folds": 2, "xgb_trials": 2, "xgb_n_estimators": [30], "lasso_alphas": [1e-5, 1e-4], "nthread": 1}
RANDOM_WALKS = [Market("boot", f"RW{i}-USD", "30m", 1800) for i in range(4)]
PLANTED = Market("boot", "PLANT-USD", "30m", 1800)


def test_hac_variance_by_hand_and_lags_cover_the_overlap():
    d = np.array([0.3, -0.1, 0.4, 0.0, -0.2, 0.5, 0.1, -0.3])
    c = d - d.mean()
    n = len(d)
    gamma = [float(c[k:] @ c[: n - k]) / n for k in range(3)]
    assert hac_variance(d, 2) == pytest.approx(gamma[0] + 2 * (2 / 3) * gamma[1] + 2 * (1 / 3) * gamma[2])
    assert newey_west_lags(1000, horizon_steps=12) == 11  # overlapping 12-candle targets
    assert newey_west_lags(1000, horizon_steps=1) == 6  # the usual floor(4 (n/100)^(2/9))


def test_dm_is_one_sided_and_overlap_widens_the_variance():
    rng = np.random.default_rng(7)
    realized = rng.standard_t(4, size=2000) * 1e-3
    good = realized * 0.3 + rng.normal(0, 1e-4, size=2000)  # knows 30% of the move
    zero = np.zeros_like(realized)
    loss = lambda p: (realized - p) ** 2
    better = diebold_mariano(loss(good), loss(zero), 1, "baseline_zero")
    assert better.skill > 0 and better.statistic > 3 and better.p_value < 1e-3
    worse = diebold_mariano(loss(zero), loss(good), 1, "model")
    assert worse.statistic < 0 and worse.p_value > 0.99
    # overlapping targets (an H of 20 candles): the same rows, a larger HAC lag, a smaller statistic
    smoothed = np.convolve(realized, np.ones(20), mode="same")
    one = diebold_mariano((smoothed - 0.3 * smoothed) ** 2, smoothed**2, 1)
    twenty = diebold_mariano((smoothed - 0.3 * smoothed) ** 2, smoothed**2, 20)
    assert twenty.lags == 19 and abs(twenty.statistic) < abs(one.statistic)
    verdict = judge(good, realized, {"baseline_zero": zero, "champion v3 (lasso)": realized * 0.31}, 1,
                    GateConfig(margin=0.0, p_value=0.05), champion_version=3)
    assert not verdict.passed and "champion v3 (lasso)" in verdict.reason and verdict.champion_version == 3


def _bootstrapped(seed: int, planted: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candles whose log returns are drawn with replacement from the real BTC-USD 30m returns,
    demeaned (a driftless random walk), each with its real candle's high/low/volume shape."""
    real = btc_candles(20_000)
    log_close = np.log(real["close"].to_numpy())
    returns = np.diff(log_close)
    returns -= returns.mean()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(returns), size=ROWS)
    close = real["close"].iloc[0] * np.exp(np.concatenate([[0.0], np.cumsum(returns[pick][1:])]))
    shape = real.iloc[pick + 1].reset_index(drop=True)
    candles = pd.DataFrame({
        "time": real["time"].iloc[:ROWS].to_numpy(),
        "open": close * shape["open"].to_numpy() / shape["close"].to_numpy(),
        "high": close * shape["high"].to_numpy() / shape["close"].to_numpy(),
        "low": close * shape["low"].to_numpy() / shape["close"].to_numpy(),
        "close": close, "volume": shape["volume"].to_numpy(),
    })
    candles["time"] = pd.to_datetime(candles["time"], utc=True)
    features = trailing_features(candles)
    if planted:  # the return from this candle's close to the next one, plus as much noise
        future = np.log(candles["close"].shift(-1) / candles["close"]).fillna(0.0).to_numpy()
        features["planted"] = future + rng.normal(0, returns.std(), size=ROWS)
    else:
        features["planted"] = rng.normal(0, returns.std(), size=ROWS)  # the same column, pure noise
    return candles.round(8), features


def _store(url: str) -> None:
    store = open_offline_store(url)
    names = None
    for seed, market in enumerate([*RANDOM_WALKS, PLANTED]):
        candles, features = _bootstrapped(100 + seed, planted=market is PLANTED)
        store.write_candles(
            Candle(exchange=market.exchange, symbol=market.symbol, timeframe="30m", start_ns=int(row.time.value),
                   open=Decimal(repr(row.open)), high=Decimal(repr(max(row.high, row.open, row.close))),
                   low=Decimal(repr(min(row.low, row.open, row.close))), close=Decimal(repr(row.close)),
                   volume=Decimal(repr(row.volume)), vwap=None, trade_count=0)
            for row in candles.itertuples())
        if names is None:
            names = [c for c in features.columns if c != "time"]
            store.register_feature_set(VERSION, names, {"test": "bootstrapped random walks"})
        store.write_features(features, feature_set_version=VERSION, exchange=market.exchange,
                             symbol=market.symbol, timeframe="30m")
    store.close()


def test_random_walks_promote_nothing_and_a_planted_signal_is_promoted(sqlite_url, tmp_path):
    _store(sqlite_url)
    training = build_training_assets([*RANDOM_WALKS, PLANTED])
    offline = OfflineStoreResource(url=sqlite_url)
    resources = {"offline_store": offline, **training_resources(offline, str(tmp_path / "artifacts")),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    ops = {"training_set": {"config": {"feature_set_version": VERSION, "min_rows": 200}},
           **{name: {"config": FAST_TUNING} for name in ("baseline_model", "lasso_model", "xgboost_model")}}
    registry = ModelRegistry(open_offline_store(sqlite_url), tmp_path / "artifacts", owns_store=True)
    verdicts = {}
    for market in [*RANDOM_WALKS, PLANTED]:
        key = f"{market.exchange}_{market.symbol}_{market.timeframe}"
        result = dg.materialize([*training.assets, *training.checks], partition_key=key, resources=resources,
                                run_config={"ops": ops}, raise_on_error=False)  # the default PromotionConfig
        materialized = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
                        for e in result.get_asset_materialization_events()}
        candidate = materialized["candidate_model"]
        verdicts[market.symbol] = (candidate["verdict"].value, candidate["why"].value,
                                   candidate.get("p_value_vs_zero") and candidate["p_value_vs_zero"].value)
        champion = registry.champion_of(market)
        if market is PLANTED:
            assert candidate["verdict"].value == "passed", verdicts
            assert champion.version == candidate["model_version"].value and champion.kind in ("lasso", "xgboost")
            assert materialized["champion_model"]["promoted"].value is True
        else:
            assert candidate["verdict"].value == "failed", verdicts
            assert champion.kind == "baseline_zero", verdicts  # the random walk stays the champion
            assert "champion_model" not in materialized
    print("verdicts:", verdicts)
    assert [a["action"] for a in registry.audit()].count("promote") == 1
    registry.close()
