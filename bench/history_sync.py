"""``rtml history sync`` against a local Kraken REST server replaying the 1,000 real XBT/USDT trades.

    python -m bench.history_sync            # 5 rounds
    python -m bench.history_sync --quick    # 2 rounds

Each round syncs the two recorded days (2025-11-10..11) of an open-ended ``kraken-rest`` market
into a fresh SQLite offline store, in-process through the Dagster assets with the runs recorded
in a persistent SQLite instance (what the command does). The peer, measured in the same run on
the same server and store kind, is the same work without Dagster: ``KrakenRestClient.trades``
per day, ``write_trades``, the candle builder and ``replace_candles`` (what ``rtml backfill
kraken`` followed by building candles does), with the same pacing (Kraken's 1 s between
requests). The difference is the cost of building the code location and recording the work as
Dagster runs with checks in a SQLite instance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from rtml_assets.market_history.assets import candles_by_day
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import day_start_ns
from rtml_cli.main import cli
from rtml_core.ingest.backfill import KrakenRestClient
from rtml_core.stores.offline import open_offline_store
from tests.ingest.exchanges import serve_exchange

DAYS = (dt.date(2025, 11, 10), dt.date(2025, 11, 11))


def sync_with_dagster(url: str, home: Path) -> int:
    markets = home / "markets.yaml"
    markets.write_text("markets:\n  - {exchange: kraken, symbol: XBTUSDT, timeframe: 1m, source: kraken-rest, "
                       f"rest_url: '{url}', first_day: {DAYS[0]}}}\n")
    env = {"RTML_HOME": str(home), "RTML_OFFLINE_URL": f"sqlite:///{home / 'offline.sqlite'}",
           "RTML_MARKETS_FILE": str(markets), "DAGSTER_HOME": None}
    result = CliRunner().invoke(cli, ["history", "sync", "--since", str(DAYS[0]), "--until", str(DAYS[1])], env=env)
    if result.exit_code != 0:
        raise SystemExit(f"rtml history sync failed: {result.output}{result.exception}")
    return _trades(home)


def sync_directly(url: str, home: Path) -> int:
    market = MarketSource(exchange="kraken", symbol="BTC-USDT", timeframe="1m", source="kraken-rest", first_day=DAYS[0])
    store = open_offline_store(f"sqlite:///{home / 'offline.sqlite'}")
    try:
        with KrakenRestClient(url) as client:  # Kraken's own pacing (1 s), as the Dagster resource
            for day in DAYS:
                start, end = day_start_ns(day), day_start_ns(day + dt.timedelta(days=1))
                trades = [t for t in client.trades("XBTUSDT", start - 1, until_ns=end) if t.time_ns >= start]
                store.write_trades(trades)
                store.replace_candles(candles_by_day(trades, market), exchange="kraken", symbol="BTC-USDT",
                                      timeframe="1m", start_ns=start, end_ns=end)
    finally:
        store.close()
    return _trades(home)


def _trades(home: Path) -> int:
    store = open_offline_store(f"sqlite:///{home / 'offline.sqlite'}")
    try:
        return len(store.read_trades("kraken", "BTC-USDT"))
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    rounds = 2 if parser.parse_args().quick else 5
    results: dict[str, list[float]] = {"rtml history sync (Dagster runs + checks)": [],
                                       "peer: REST client + store, no Dagster": []}
    counts = set()
    with serve_exchange() as (url, _):
        for _ in range(rounds):
            for name, work in zip(results, (sync_with_dagster, sync_directly), strict=True):
                with tempfile.TemporaryDirectory() as folder:
                    started = time.perf_counter()
                    counts.add(work(url, Path(folder)))
                    results[name].append(time.perf_counter() - started)
    if len(counts) != 1:
        raise SystemExit(f"the two ways stored different trade counts: {counts}")
    trades = counts.pop()
    print(f"2 days, {trades} real Kraken trades from a local REST server, {rounds} rounds (median)")
    print(f"| {'way':<44} | {'seconds':>8} | {'trades/s':>9} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 11}|")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(f"| {name:<44} | {median:8.2f} | {trades / median:9,.0f} |")


if __name__ == "__main__":
    main()
