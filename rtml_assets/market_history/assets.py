"""Market history assets: imported trades and validated candles, one partition per (day, market).

Both assets replace exactly their partitions' windows, so re-materializing a partition (or a
range, in one run) changes nothing the second time. A market with a REST source fetches each
day from its exchange (``exchange_history`` resource); a streamed market keeps the candles the
sidecar logged and rebuilds only the intervals it did not log.
"""

from collections.abc import Sequence
from itertools import groupby

import dagster as dg
import pandas as pd

from rtml_assets.market_history import sources
from rtml_assets.market_history.checks import measure_gaps
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import NS_PER_DAY, MarketWindow, market_windows
from rtml_assets.market_history.resources import ExchangeHistoryResource
from rtml_assets.resources import OfflineStoreResource
from rtml_core.candles import build_candles
from rtml_core.schemas import Candle, Trade

GROUP = "market_history"
OWNERS = ["team:market-data"]
PREVIEW_ROWS = 5


def window_summary(frame: pd.DataFrame, window: MarketWindow) -> dict[str, object]:
    """Rows, first/last time, gaps and a markdown preview of one window of a frame."""
    summary: dict[str, object] = {"rows": len(frame)}
    if len(frame):
        summary["first"] = str(frame["time"].min())
        summary["last"] = str(frame["time"].max())
    else:
        summary["first"] = summary["last"] = "-"
    if {"open", "close"} <= set(frame.columns):
        gaps = measure_gaps(frame, window.market.timeframe, window.market.max_gap_seconds).metadata
        summary["gaps"] = gaps["gap_count"]
        summary["longest_gap_seconds"] = gaps["longest_gap_seconds"]
    summary["preview"] = frame.head(PREVIEW_ROWS).to_markdown(index=False) if len(frame) else "(no rows)"
    return summary


def materialization_metadata(summaries: Sequence[tuple[MarketWindow, dict[str, object]]]) -> dict[str, object]:
    """The metadata a person wants: rows, date range, gaps, a preview (per market when several)."""
    metadata: dict[str, object] = {"rows": sum(int(s["rows"]) for _, s in summaries)}
    streamed = [int(s["stream_candles"]) for _, s in summaries if "stream_candles" in s]
    if streamed:
        metadata["stream_candles"] = sum(streamed)  # kept as the sidecar logged them
    table = ["| market | days | rows | first | last | gaps |", "|---|---|---|---|---|---|"]
    for window, s in summaries:
        table.append(f"| {window.market.key} | {window.first_day}..{window.last_day} | {s['rows']} "
                     f"| {s['first']} | {s['last']} | {s.get('gaps', '-')} |")
    metadata["markets"] = dg.MetadataValue.md("\n".join(table))
    if len(summaries) == 1:
        window, s = summaries[0]
        metadata["date_range"] = f"{window.first_day}..{window.last_day}"
        metadata["first"] = s["first"]
        metadata["last"] = s["last"]
        if "gaps" in s:
            metadata["gaps"] = s["gaps"]
            metadata["longest_gap_seconds"] = s["longest_gap_seconds"]
    previews = [f"**{window.label}**\n\n{s['preview']}" for window, s in summaries]
    metadata["preview"] = dg.MetadataValue.md("\n\n".join(previews))
    return metadata


def candles_by_day(trades: list[Trade], market: MarketSource) -> list[Candle]:
    """Candles of each UTC day built on their own, so gap filling never crosses midnight and a
    range run writes exactly what day-by-day runs write."""
    if not market.fill_gaps:  # windows align to the epoch and divide a day: no day split needed
        return build_candles(trades, market.timeframe, exchange=market.exchange, symbol=market.symbol)
    candles: list[Candle] = []
    for _, day in groupby(sorted(trades, key=lambda t: (t.time_ns, t.trade_id)), key=lambda t: t.time_ns // NS_PER_DAY):
        candles.extend(build_candles(list(day), market.timeframe, fill_gaps=True,
                                     exchange=market.exchange, symbol=market.symbol))
    return candles


def fetch_trades(window: MarketWindow, exchange_history: ExchangeHistoryResource, store, log) -> list[Trade]:
    """A REST market's trades of ``window`` fetched day by day, each day upserted as it arrives."""
    market = window.market
    fetched: list[Trade] = []
    for day, start, end in sources.rest_days(window):
        trades = list(sources.as_market(exchange_history.trades(market, start, end), market))
        written = store.write_trades(trades)
        log.info(f"{market.key} {day}: {len(trades)} trades from {market.source}, {written} upserted")
        fetched.extend(trades)
    return fetched


def fetch_candles(window: MarketWindow, exchange_history: ExchangeHistoryResource) -> list[Candle]:
    """A REST candle market's candles of ``window`` (Binance klines), day by day."""
    market = window.market
    return [c for _, start, end in sources.rest_days(window)
            for c in sources.as_market(exchange_history.candles(market, start, end), market)]


def build_market_history_assets(
    markets: Sequence[MarketSource], partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """``raw_trades`` and ``validated_candles`` over the given markets and partitions."""
    market_list = list(markets)

    @dg.asset(
        name="raw_trades",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"python", "pandas", "sql"},
        owners=OWNERS,
        tags={"layer": "raw"},
        description=(
            "Trades imported from each market's source file, or fetched day by day from its exchange's "
            "REST API (kraken-rest, binance-rest aggTrades, coinbase-rest), into the offline store, "
            "keyed on (exchange, symbol, trade_id) and upserted, so importing a day twice changes "
            "nothing. Candle-only markets have no trades and write none."
        ),
    )
    def raw_trades(context: dg.AssetExecutionContext, offline_store: OfflineStoreResource,
                   exchange_history: ExchangeHistoryResource) -> dg.MaterializeResult:
        store = offline_store.get_store()
        summaries = []
        for window in market_windows(context.partition_keys, market_list):
            market = window.market
            if not market.has_trades:
                trades = []
            elif market.is_rest:
                trades = fetch_trades(window, exchange_history, store, context.log)
            else:
                trades = sources.trades_in_window(market, window.start_ns, window.end_ns)
                written = store.write_trades(trades)
                context.log.info(f"{window.label}: {written} trades upserted from {market.source}")
            summaries.append((window, window_summary(sources.trades_frame(trades), window)))
        return dg.MaterializeResult(metadata=materialization_metadata(summaries))

    @dg.asset(
        name="validated_candles",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[raw_trades],
        kinds={"python", "pandas", "sql"},
        owners=OWNERS,
        tags={"layer": "validated"},
        description=(
            "Candles per market and timeframe: built from the stored trades by rtml's one candle "
            "builder (exact Decimal OHLC, volume, vwap, trade_count), or imported from the market's "
            "candle file (or Binance klines) for candle-only markets; a streamed market keeps the "
            "candles the sidecar logged and rebuilds only the intervals it did not log. Each run "
            "replaces exactly its days. Checked for duplicate keys, time order, OHLC invariants "
            "(blocking), gaps, outlier returns, and for streamed markets against the exchange."
        ),
    )
    def validated_candles(context: dg.AssetExecutionContext, offline_store: OfflineStoreResource,
                          exchange_history: ExchangeHistoryResource) -> dg.MaterializeResult:
        store = offline_store.get_store()
        summaries = []
        for window in market_windows(context.partition_keys, market_list):
            market = window.market
            if market.has_trades:
                trades = store.read_trades(market.exchange, market.symbol, window.start_ns, window.end_ns, exact=True)
                candles = candles_by_day(list(sources.frame_to_trades(trades, market)), market)
            elif market.is_rest:
                candles = fetch_candles(window, exchange_history)
            else:
                candles = sources.candles_in_window(market, window.start_ns, window.end_ns)
            if market.stream:
                logged = store.read_candles(market.exchange, market.symbol, market.timeframe, window.start_ns,
                                            window.end_ns, exact=True)
                candles, from_stream = sources.with_logged_candles(
                    sources.frame_to_candles(logged, market.exchange, market.symbol, market.timeframe), candles)
                context.log.info(f"{window.label}: {from_stream} candles from the stream's log")
            written = store.replace_candles(candles, exchange=market.exchange, symbol=market.symbol,
                                            timeframe=market.timeframe, start_ns=window.start_ns,
                                            end_ns=window.end_ns)
            context.log.info(f"{window.label}: {written} candles written")
            frame = store.read_candles(market.exchange, market.symbol, market.timeframe,
                                       window.start_ns, window.end_ns)
            summary = window_summary(frame, window)
            if market.stream:
                summary["stream_candles"] = from_stream
            summaries.append((window, summary))
        return dg.MaterializeResult(metadata=materialization_metadata(summaries))

    return [raw_trades, validated_candles]
