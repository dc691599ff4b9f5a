"""Real bundled files, and Binance/Kraken-OHLC files re-expressed from the real Kraken trades.

No real capture of a Binance trade/kline dump or of a Kraken OHLC reply is bundled, so
these helpers write the *real* Kraken XBTUSDT trades (same prices, sizes, times) in those
documented layouts. The candle values are computed here with plain Python, not with
rtml's candle builder, so the files are an independent reference.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Context, Decimal
from pathlib import Path

from tests.conftest import DATA, FIXTURES

KRAKEN_TRADES = DATA / "kraken_xbtusdt_trades_rest.json"
ES_TICKS = DATA / "es_futures_ticks_2013-09.csv.gz"
BTC_30M = DATA / "btc_usd_30m_2017-2019.csv.gz"
ETH_30M = FIXTURES / "eth_usd_30m_2017-2019.csv.gz"
COINBASE_1H = FIXTURES / "coinbase_btc_usd_1h_2017-2019.csv.gz"
VWAP = Context(prec=28)


def kraken_rows() -> list[list]:
    """The raw rows of the real Kraken reply, numbers as their JSON text (Decimal)."""
    reply = json.loads(KRAKEN_TRADES.read_text(), parse_float=Decimal)
    return reply["result"]["XBTUSDT"]


def row_time_ns(row: list) -> int:
    return int(row[2] * 1_000_000_000)


def reference_candles(rows: list[list], tf_s: int) -> list[dict]:
    """OHLCV by plain Python over (time, id) order: the independent computation."""
    groups: dict[int, list] = defaultdict(list)
    for row in rows:
        t = row_time_ns(row)
        groups[t - t % (tf_s * 1_000_000_000)].append((t, row[6], Decimal(row[0]), Decimal(row[1])))
    out = []
    for start in sorted(groups):
        trades = sorted(groups[start])
        volume = sum((q for *_, q in trades), Decimal(0))
        notional = sum((p * q for _, _, p, q in trades), Decimal(0))
        out.append(
            {
                "start_ns": start,
                "open": trades[0][2],
                "high": max(p for _, _, p, _ in trades),
                "low": min(p for _, _, p, _ in trades),
                "close": trades[-1][2],
                "volume": volume,
                "notional": notional,
                "count": len(trades),
            }
        )
    return out


def write_binance_trades(path: Path, *, header: bool, micros: bool) -> list[list]:
    """The Kraken trades as a Binance trades dump; returns the rows written."""
    unit = 1_000 if micros else 1_000_000
    lines = ["id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"] if header else []
    rows = kraken_rows()
    for row in rows:
        price, qty = Decimal(row[0]), Decimal(row[1])
        maker = "True" if row[3] == "s" else "False"  # taker sold -> the buyer was the maker
        lines.append(
            f"{row[6]},{row[0]},{row[1]},{price * qty},{row_time_ns(row) // unit},{maker},True"
        )
    path.write_text("\n".join(lines) + "\n")
    return rows


def write_binance_klines(path: Path, tf_s: int, *, header: bool, micros: bool) -> list[dict]:
    """Reference candles from the Kraken trades as a Binance klines dump (12 columns)."""
    unit = 1_000 if micros else 1_000_000
    step = tf_s * 1_000_000_000 // unit
    candles = reference_candles(kraken_rows(), tf_s)
    lines = (
        [
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
            "taker_buy_volume,taker_buy_quote_volume,ignore"
        ]
        if header
        else []
    )
    for c in candles:
        open_time = c["start_ns"] // unit
        lines.append(
            f"{open_time},{c['open']},{c['high']},{c['low']},{c['close']},{c['volume']},"
            f"{open_time + step - 1},{c['notional']},{c['count']},0,0,0"
        )
    path.write_text("\n".join(lines) + "\n")
    return candles


def write_kraken_ohlc(path: Path, tf_s: int) -> list[dict]:
    """Reference candles as a Kraken OHLC reply; the last row is the open interval."""
    candles = reference_candles(kraken_rows(), tf_s)
    rows = [
        [
            c["start_ns"] // 1_000_000_000,
            str(c["open"]),
            str(c["high"]),
            str(c["low"]),
            str(c["close"]),
            str(VWAP.divide(c["notional"], c["volume"])),
            str(c["volume"]),
            c["count"],
        ]
        for c in candles
    ]
    reply = {"error": [], "result": {"XXBTZUSD": rows, "last": rows[-1][0]}}
    path.write_text(json.dumps(reply, indent=1))
    return candles
