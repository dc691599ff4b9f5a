"""The real candle files (data/ and tests/fixtures/) as rtml candle frames (a few lines of pandas)."""

from __future__ import annotations

from functools import cache

import pandas as pd

from tests.conftest import DATA, FIXTURES

CANDLE_FILES = {
    "btc_usd_30m_2017-2019.csv": DATA / "btc_usd_30m_2017-2019.csv.gz",
    "eth_usd_30m_2017-2019.csv": FIXTURES / "eth_usd_30m_2017-2019.csv.gz",
    "coinbase_btc_usd_1h_2017-2019.csv": FIXTURES / "coinbase_btc_usd_1h_2017-2019.csv.gz",
}
REAL_FILES = tuple(CANDLE_FILES)


@cache
def real_candles(name: str) -> pd.DataFrame:
    """time (UTC), open, high, low, close, volume; oldest first."""
    path = CANDLE_FILES[name]
    if name.startswith("coinbase"):
        raw = pd.read_csv(path, skiprows=1)
        frame = pd.DataFrame(
            {
                "time": pd.to_datetime(raw["date"], format="%Y-%m-%d %I-%p", utc=True),
                "open": raw["open"],
                "high": raw["high"],
                "low": raw["low"],
                "close": raw["close"],
                "volume": raw["volume_btc"],
            }
        )
        frame = frame.sort_values("time", kind="stable").drop_duplicates("time", keep="first")
    else:
        raw = pd.read_csv(path)
        base = name.split("_")[0].upper()
        frame = pd.DataFrame(
            {
                "time": pd.to_datetime(raw["Date"], utc=True),
                "open": raw[f"{base}.open"],
                "high": raw[f"{base}.high"],
                "low": raw[f"{base}.low"],
                "close": raw[f"{base}.close"],
                "volume": raw[f"{base}.volume"],
            }
        )
    return frame.reset_index(drop=True).astype({c: float for c in ("open", "high", "low", "close", "volume")})
