"""Real models trained on the real BTC-USD 30m candles, a real registry and real online rows."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib

from rtml_core.registry import ModelRegistry
from rtml_core.schemas import FeatureRow
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_core.training.models import fit_lasso, fit_xgboost, lasso_to_json, xgboost_to_ubj
from tests.conftest import DATA

FEATURE_SET = "testfs-1"
FEATURES = ("log_return_1", "log_return_5", "rsi_14", "atr_14", "natr_14", "realized_vol_20", "roc_10")
TIMEFRAME = "30m"
HORIZON_S = 1800
EXCHANGE = "kraken"
API_KEY = "test-key-0123456789"


@dataclass(frozen=True)
class RealData:
    features: pd.DataFrame  # FEATURES + close, warm-up dropped
    target: np.ndarray
    train: slice
    holdout: slice


def _load_real() -> RealData:
    raw = pd.read_csv(DATA / "btc_usd_30m_2017-2019.csv.gz", nrows=700)
    close = raw["BTC.close"].to_numpy(np.float64)
    high = raw["BTC.high"].to_numpy(np.float64)
    low = raw["BTC.low"].to_numpy(np.float64)
    logret = np.log(close[1:] / close[:-1])
    frame = pd.DataFrame({"close": close})
    frame["log_return_1"] = np.r_[np.nan, logret]
    frame["log_return_5"] = np.log(frame["close"] / frame["close"].shift(5))
    frame["rsi_14"] = talib.RSI(close, 14)
    frame["atr_14"] = talib.ATR(high, low, close, 14)
    frame["natr_14"] = talib.NATR(high, low, close, 14)
    frame["realized_vol_20"] = frame["log_return_1"].rolling(20).std()
    frame["roc_10"] = talib.ROC(close, 10)
    target = np.log(frame["close"].shift(-1) / frame["close"]).to_numpy()
    keep = frame.notna().all(axis=1).to_numpy() & np.isfinite(target)
    frame, target = frame[keep].reset_index(drop=True), target[keep]
    cut = int(len(frame) * 0.8)
    return RealData(frame, target, slice(0, cut), slice(cut, len(frame)))


_REAL: RealData | None = None


@pytest.fixture(scope="session")
def real_data() -> RealData:
    global _REAL
    if _REAL is None:
        _REAL = _load_real()
    return _REAL


def register_xgboost(registry: ModelRegistry, data: RealData, *, seed: int = 0, depth: int = 3,
                     symbol: str = "BTC-USD") -> int:
    X = data.features.loc[:, FEATURES].to_numpy(np.float64)
    model = fit_xgboost(X[data.train], data.target[data.train],
                        params={"n_estimators": 20, "max_depth": depth, "learning_rate": 0.1},
                        nthread=1, seed=seed)
    residual = data.target[data.holdout] - model.predict(X[data.holdout])
    return registry.register(
        kind="xgboost", artifact=xgboost_to_ubj(model), artifact_format="ubj", feature_names=FEATURES,
        feature_set_version=FEATURE_SET, timeframe=TIMEFRAME, horizon_s=HORIZON_S,
        training_rows=data.train.stop, training_set_hash=f"test-{seed}-{depth}",
        metrics={"holdout_rmse": float(np.sqrt(np.mean(residual**2)))},
        residual_std=float(np.std(residual)), exchange=EXCHANGE, symbol=symbol,
    ).version


def register_lasso(registry: ModelRegistry, data: RealData) -> int:
    X = data.features.loc[:, FEATURES].to_numpy(np.float64)
    model = fit_lasso(X[data.train], data.target[data.train], alpha=1e-5)
    residual = data.target[data.holdout] - model.predict(X[data.holdout])
    return registry.register(
        kind="lasso", artifact=lasso_to_json(model, FEATURES), artifact_format="json",
        feature_names=FEATURES, feature_set_version=FEATURE_SET, timeframe=TIMEFRAME,
        horizon_s=HORIZON_S, training_rows=data.train.stop, training_set_hash="test-lasso",
        metrics={}, residual_std=float(np.std(residual)), exchange=EXCHANGE, symbol="BTC-USD",
    ).version


def feature_row(data: RealData, index: int = -1, *, symbol: str = "BTC-USD", age_s: float = 5.0,
                version: str = FEATURE_SET, **overrides: float) -> FeatureRow:
    values = {name: float(data.features[name].iloc[index]) for name in (*FEATURES, "close")}
    values.update(overrides)
    return FeatureRow(exchange=EXCHANGE, symbol=symbol, timeframe=TIMEFRAME,
                      event_time_ns=time.time_ns() - int(age_s * 1e9), feature_set_version=version,
                      values=values)


@pytest.fixture
def registry(tmp_path: Path, real_data: RealData) -> ModelRegistry:
    reg = ModelRegistry(open_offline_store(f"sqlite:///{tmp_path / 'registry.sqlite'}"),
                        tmp_path / "artifacts", owns_store=True)
    yield reg
    reg.close()


@pytest.fixture
def champion_version(registry: ModelRegistry, real_data: RealData) -> int:
    version = register_xgboost(registry, real_data)
    registry.promote(version, "test champion", force=True)
    return version


@pytest.fixture
def online_store(online_url):
    url, prefix = online_url
    store = open_online_store(url, prefix)
    yield store
    store.close()


def api_settings(**overrides) -> Settings:
    base = dict(api_keys=API_KEY, api_model_poll_s=0.05, api_rate_limit=0, home=Path("/nonexistent"),
                api_log_predictions=False)
    base.update(overrides)
    return Settings(**base)


HEADERS = {"X-API-Key": API_KEY}


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))
