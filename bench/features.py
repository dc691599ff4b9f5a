"""Feature engines: incremental updates beside talipp and a pandas-ta sliding window; batch
over 1,000,000 candles and its write to PostgreSQL.

    .venv/bin/python -m bench.features            # full run (a few minutes)
    .venv/bin/python -m bench.features --quick    # smoke run

Candles are a random walk bootstrapped from the real BTC/USD 30m candles in
data/ (their log returns, wick and open ratios and volumes), so the
prices move like real ones. Times are CPU seconds of this process (``time.process_time``,
what one core spends, which other processes on the machine cannot inflate) and wall seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rtml_core.features import DEFAULT_FEATURE_SET, FeatureEngine, compute_features

REAL_CANDLES = Path(__file__).resolve().parents[1] / "data" / "btc_usd_30m_2017-2019.csv.gz"
PG_ADMIN_URL = os.environ.get("RTML_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SLIDING_WINDOW = 300  # candles a typical pipeline recomputes pandas-ta over for each new candle


def synthesize(count: int, seed: int = 7) -> pd.DataFrame:
    """``count`` one-minute candles: a bootstrap of the real candles' returns and shapes."""
    raw = pd.read_csv(REAL_CANDLES)
    o, c, h, l, v = (raw[f"BTC.{k}"].to_numpy(float) for k in ("open", "close", "high", "low", "volume"))  # noqa: E741
    pick = np.random.default_rng(seed).integers(1, len(c), size=count)
    returns = np.log(c[pick] / c[pick - 1])
    close = 20_000.0 * np.exp(np.cumsum(returns))
    prev_close = np.concatenate([[20_000.0], close[:-1]])
    open_ = prev_close * (o[pick] / c[pick - 1])
    high = np.maximum(open_, close) * (h[pick] / np.maximum(o[pick], c[pick]))
    low = np.minimum(open_, close) * (l[pick] / np.minimum(o[pick], c[pick]))
    start = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "time": pd.date_range(start, periods=count, freq="1min"),
            "open": open_, "high": high, "low": low, "close": close, "volume": v[pick],
        }
    )


@dataclass
class Timing:
    cpu: float
    wall: float


def timed(run) -> tuple[object, Timing]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = run()
    return result, Timing(time.process_time() - cpu, time.perf_counter() - wall)


def rows_of(frame: pd.DataFrame) -> list[tuple]:
    return list(
        zip(
            frame["time"].astype("int64").tolist(),
            frame["open"].tolist(), frame["high"].tolist(), frame["low"].tolist(),
            frame["close"].tolist(), frame["volume"].tolist(),
        )
    )


def run_engine(rows: list[tuple]) -> None:
    update = FeatureEngine().update_values
    for row in rows:
        update(*row)


def run_talipp(rows: list[tuple]) -> None:
    """The same indicators in talipp (it has no MFI; MOM and log returns are one line each)."""
    from talipp.indicators import ADX, ATR, BB, CCI, EMA, MACD, NATR, OBV, ROC, RSI, SMA, StdDev, Stoch, Williams
    from talipp.ohlcv import OHLCV

    on_close = [SMA(10), SMA(20), SMA(50), EMA(12), EMA(26), RSI(14), MACD(12, 26, 9), BB(20, 2.0), ROC(10)]
    on_bar = [ATR(14), NATR(14), OBV(), Stoch(14, 3), ADX(14, 14), CCI(20), Williams(14)]
    on_return = [StdDev(20), StdDev(60)]
    closes: list[float] = []
    for _, o, h, l, c, v in rows:  # noqa: E741
        bar = OHLCV(o, h, l, c, v)
        for indicator in on_close:
            indicator.add(c)
        for indicator in on_bar:
            indicator.add(bar)
        if closes:
            log_return = math.log(c / closes[-1])
            for indicator in on_return:
                indicator.add(log_return)
        closes.append(c)
        if len(closes) > 16:
            _ = c - closes[-11], math.log(c / closes[-6]), math.log(c / closes[-16]), c / ((h + l + c) / 3) - 1
            del closes[0]


def run_sliding_pandas_ta(frame: pd.DataFrame, first: int, count: int) -> None:
    """Per new candle: pandas-ta over the last ``SLIDING_WINDOW`` candles, keep the last row."""
    for end in range(first, first + count):
        window = frame.iloc[end - SLIDING_WINDOW + 1 : end + 1]
        compute_features(window).iloc[-1]


def write_postgres(features: pd.DataFrame) -> tuple[int, Timing, Timing]:
    import sqlalchemy as sa

    from rtml_core.stores.offline import open_offline_store

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"rtml_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        store = open_offline_store(admin.url.set(database=name).render_as_string(hide_password=False))
        fs = DEFAULT_FEATURE_SET
        store.register_feature_set(fs.version, fs.names, {"features": fs.to_json()})

        def write():
            return store.write_features(
                features, exchange="bench", symbol="BTC-USD", timeframe="1m", feature_set_version=fs.version
            )

        written, first = timed(write)
        _, again = timed(write)  # idempotent re-materialization: an upsert over the same rows
        store.close()
        return int(written), first, again
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL write")
    args = parser.parse_args(argv)
    n_stream, n_talipp, n_sliding, n_batch = (
        (20_000, 5_000, 40, 100_000) if args.quick else (200_000, 50_000, 400, 1_000_000)
    )
    candles = synthesize(max(n_batch, n_stream))
    rows = rows_of(candles)
    feature_count = len(DEFAULT_FEATURE_SET)

    _, engine = timed(lambda: run_engine(rows[:n_stream]))
    _, talipp = timed(lambda: run_talipp(rows[:n_talipp]))
    _, sliding = timed(lambda: run_sliding_pandas_ta(candles, SLIDING_WINDOW, n_sliding))
    batch_frame, batch = timed(lambda: compute_features(candles.iloc[:n_batch]))

    def per(t: Timing, n: int) -> tuple[float, float]:
        return t.cpu / n * 1e6, t.wall / n * 1e6

    e_cpu, e_wall = per(engine, n_stream)
    lines = [
        f"feature set {DEFAULT_FEATURE_SET.version}: {feature_count} features; candles bootstrapped from {REAL_CANDLES.name}",
        "",
        "incremental, one candle at a time     candles   us/candle cpu   us/candle wall   updates/s (cpu)   vs rtml",
    ]

    def row(label: str, t: Timing, n: int) -> str:
        cpu, wall = per(t, n)
        return f"{label:<37} {n:>8,}   {cpu:>13.1f}   {wall:>14.1f}   {1e6 / cpu:>15,.0f}   {cpu / e_cpu:>6.1f}x"

    lines.append(row("rtml FeatureEngine (31 features)", engine, n_stream))
    lines.append(row("talipp 2.7 (same indicators, no MFI)", talipp, n_talipp))
    lines.append(row(f"pandas-ta over last {SLIDING_WINDOW} per candle", sliding, n_sliding))
    lines += [
        "",
        f"target: < 20 us per candle -> {'met' if e_cpu < 20 else 'NOT met'} ({e_cpu:.1f} us cpu, {e_wall:.1f} us wall); "
        f">= 5x talipp -> {'met' if per(talipp, n_talipp)[0] / e_cpu >= 5 else 'NOT met'}",
        "",
        "batch                                  candles    seconds cpu    seconds wall     candles/s (wall)",
        f"{'compute_features (pandas-ta, TA-Lib)':<37} {n_batch:>9,}   {batch.cpu:>11.2f}   {batch.wall:>13.2f}   {n_batch / batch.wall:>17,.0f}",
    ]
    if not args.no_postgres:
        written, first, again = write_postgres(batch_frame)
        lines.append(
            f"{'offline write, PostgreSQL (new rows)':<37} {written:>9,}   {first.cpu:>11.2f}   {first.wall:>13.2f}   {written / first.wall:>17,.0f} rows/s"
        )
        lines.append(
            f"{'offline write, PostgreSQL (replace)':<37} {written:>9,}   {again.cpu:>11.2f}   {again.wall:>13.2f}   {written / again.wall:>17,.0f} rows/s"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
