"""The live half of ``rtml demo``: the sidecar replays the last day of real ticks into the
online store, then the API answers a prediction from the champion on those features.

The history steps stop the day before ``REPLAY_DAY`` for the demo's training market, so the
sidecar continues exactly where the stored candles end (it rebuilds its indicator state
from the offline store) and nothing it serves was in the training set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import day_start_ns
from rtml_core.schemas import Trade

REPLAY_DAY = dt.date(2013, 9, 3)
DEMO_MARKET = ("cme", "ES-USD", "1m")
"""ES futures, 1m candles, H = 60 s: the market the demo trains on and replays."""


def is_demo_market(market: MarketSource) -> bool:
    return (market.exchange, market.symbol, market.timeframe) == DEMO_MARKET


def history_markets(markets: list[MarketSource]) -> list[MarketSource]:
    """The catalog with the demo market's history ending the day before the replay day."""
    return [m.model_copy(update={"last_day": REPLAY_DAY - dt.timedelta(days=1)}) if is_demo_market(m) else m
            for m in markets]


def replay_trades(market: MarketSource, start_ns: int) -> Iterator[Trade]:
    """The market's real trades from ``start_ns`` on, in file order."""
    from rtml_core.ingest import read_trades

    for trade in read_trades(market.source, market.format, exchange=market.exchange, symbol=market.symbol,
                             mapping=market.mapping, preset=market.preset):
        if trade.time_ns >= start_ns:
            yield trade


def stream_step(demo) -> list[str]:
    """Replay REPLAY_DAY's real ticks through the sidecar into the online store (as fast as possible)."""
    from rtml_core.stores.online import open_online_store
    from rtml_stream.app import build_sidecar
    from rtml_stream.sources.replay import ReplaySource

    exchange, symbol, timeframe = DEMO_MARKET
    market = next(m for m in demo.source_markets if is_demo_market(m))
    settings = demo.settings.model_copy(update={"stream_dagster": "off"})
    source = ReplaySource(lambda: replay_trades(market, day_start_ns(REPLAY_DAY)), speed="max")
    sidecar = build_sidecar(settings, source, [(exchange, symbol)], timeframes=[timeframe],
                            health_port=-1, checkpoints=False)
    try:
        summary = asyncio.run(sidecar.run())
    finally:
        sidecar.close()
    store = open_online_store(settings.resolved_online_url, prefix=settings.online_prefix)
    try:
        row = store.read_latest(exchange, symbol, timeframe)
    finally:
        store.close()
    started = ", ".join(f"{market} from {how}" for market, how in summary.started.items())
    lines = [
        f"replayed {summary.trades:,} real ticks of {REPLAY_DAY} -> {summary.candles:,} candles, "
        f"{summary.rows:,} feature rows ({summary.late} late) in {summary.seconds:.1f}s [{started}]",
        f"online store {settings.resolved_online_url if not settings.online_url else 'RTML_ONLINE_URL'}: "
        f"written {summary.online.get('written')}, pending {summary.online.get('pending')}",
    ]
    if row is None:
        demo.failures.append("stream: no feature row reached the online store")
        return lines
    event = dt.datetime.fromtimestamp(row.event_time_ns / 1e9, dt.UTC).isoformat()
    demo.latest_row = row
    lines.append(f"latest row {exchange}:{symbol}:{timeframe} at {event}: rsi_14 "
                 f"{row.values.get('rsi_14', float('nan')):.2f}, macd_12_26_9 {row.values.get('macd_12_26_9', float('nan')):.4f}, "
                 f"{len(row.values)} features, version {row.feature_set_version}")
    if summary.online.get("pending"):
        demo.failures.append(f"stream: {summary.online.get('pending')} rows not written to the online store")
    return lines
