"""Small real frames for the training tests: the bundled BTC-USD 30m candles and features
computed from them with trailing windows only (a stand-in where the feature set is not needed)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from tests.conftest import DATA

BTC_30M = DATA / "btc_usd_30m_2017-2019.csv.gz"


@lru_cache(maxsize=1)
def _btc_candles() -> pd.DataFrame:
    raw = pd.read_csv(BTC_30M)
    return pd.DataFrame(
        {
            "time": pd.to_datetime(raw["Date"], utc=True),
            "open": raw["BTC.open"], "high": raw["BTC.high"], "low": raw["BTC.low"],
            "close": raw["BTC.close"], "volume": raw["BTC.volume"],
        }
    )


def btc_candles(rows: int | None = None) -> pd.DataFrame:
    """The first ``rows`` real BTC-USD 30m candles (time = candle start, UTC)."""
    frame = _btc_candles()
    return (frame if rows is None else frame.iloc[:rows]).reset_index(drop=True).copy()


def trailing_features(candles: pd.DataFrame) -> pd.DataFrame:
    """A handful of features from trailing windows (each row uses its candle and earlier ones)."""
    close = candles["close"]
    log_close = np.log(close)
    return pd.DataFrame(
        {
            "time": candles["time"],
            "ret_1": log_close.diff(1),
            "ret_4": log_close.diff(4),
            "vol_12": log_close.diff().rolling(12).std(),
            "range_1": (candles["high"] - candles["low"]) / close,
            "volume_z_24": (candles["volume"] - candles["volume"].rolling(24).mean())
            / candles["volume"].rolling(24).std(),
        }
    )


def store_candles(store, candles: pd.DataFrame, exchange: str = "gym", symbol: str = "BTC-USD",
                  timeframe: str = "30m") -> None:
    """Write ``btc_candles`` rows to an offline store as exact candles."""
    from decimal import Decimal

    from rtml_core.schemas import Candle

    store.write_candles(
        Candle(exchange=exchange, symbol=symbol, timeframe=timeframe, start_ns=int(row.time.value),
               open=Decimal(str(row.open)), high=Decimal(str(row.high)), low=Decimal(str(row.low)),
               close=Decimal(str(row.close)), volume=Decimal(str(row.volume)), vwap=None, trade_count=0)
        for row in candles.itertuples()
    )
