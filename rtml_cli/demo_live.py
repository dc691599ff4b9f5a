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

import click

from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import day_start_ns
from rtml_core.schemas import ROW_CONTEXT_FIELDS, Trade

REPLAY_DAY = dt.date(2013, 9, 3)
DEMO_MARKET = ("cme", "ES-USD", "1m")
"""ES futures, 1m candles, H = 60 s: the market the demo trains on and replays."""


SKIPPED = "skipped: the catalog (RTML_MARKETS_FILE) has no cme ES-USD 1m market to train on and replay"


def is_demo_market(market: MarketSource) -> bool:
    return (market.exchange, market.symbol, market.timeframe) == DEMO_MARKET


def history_markets(markets: list[MarketSource]) -> list[MarketSource]:
    """The catalog with the demo market's history ending the day before the replay day."""
    return [m.model_copy(update={"last_day": REPLAY_DAY - dt.timedelta(days=1)}) if is_demo_market(m) else m
            for m in markets]


def data_lines(path) -> int:
    """Data lines of a (gzipped) CSV file, header excluded: the progress bar's length."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return max(sum(1 for _ in handle) - 1, 0)


def replay_trades(market: MarketSource, start_ns: int, on_read=None, every: int = 10_000) -> Iterator[Trade]:
    """The market's real trades from ``start_ns`` on, in file order; ``on_read(n)`` is told of
    every ``every`` trades read (skipped ones included) for a progress bar."""
    from rtml_core.ingest import read_trades

    n = 0
    for trade in read_trades(market.source, market.format, exchange=market.exchange, symbol=market.symbol,
                             mapping=market.mapping, preset=market.preset):
        n += 1
        if on_read is not None and n == every:
            on_read(n)
            n = 0
        if trade.time_ns >= start_ns:
            yield trade
    if on_read is not None:
        on_read(n)


def stream_step(demo) -> list[str]:
    """Replay REPLAY_DAY's real ticks through the sidecar into the online store (as fast as possible)."""
    from rtml_core.stores.online import open_online_store
    from rtml_stream.app import build_sidecar
    from rtml_stream.sources.replay import ReplaySource

    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # the bar speaks
    exchange, symbol, timeframe = DEMO_MARKET
    market = next((m for m in demo.source_markets if is_demo_market(m)), None)
    if market is None:
        return [SKIPPED]
    settings = demo.settings.model_copy(update={"stream_dagster": "off"})
    with click.progressbar(length=data_lines(market.source), label="    replaying ticks", show_pos=True,
                           file=click.get_text_stream("stderr")) as bar:
        source = ReplaySource(lambda: replay_trades(market, day_start_ns(REPLAY_DAY), bar.update), speed="max")
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
                 f"{len(set(row.values) - set(ROW_CONTEXT_FIELDS))} features, version {row.feature_set_version}")
    if summary.online.get("pending"):
        demo.failures.append(f"stream: {summary.online.get('pending')} rows not written to the online store")
    return lines


def prediction_step(demo) -> list[str]:
    """Start the API on loopback (a fresh API key), ask it for a prediction over real HTTP, stop it."""
    import json
    import secrets
    import socket
    import threading
    import time

    import logging

    import httpx
    import uvicorn

    from api.app import create_app

    exchange, symbol, timeframe = DEMO_MARKET
    if demo.latest_row is None:
        return [SKIPPED if not any(is_demo_market(m) for m in demo.source_markets) else "skipped: no online row"]
    for quiet in ("httpx", "api"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    key = secrets.token_urlsafe(16)
    # Replayed 2013 features are years old: serve them flagged stale rather than refuse them.
    settings = demo.settings.model_copy(update={"api_keys": key, "api_serve_stale": True,
                                                "api_default_exchange": exchange})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="rtml-demo-api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10.0) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or not thread.is_alive():
                    demo.failures.append("prediction: the API did not become ready within 60 s")
                    return [f"API on {base} not ready"]
                time.sleep(0.2)
            started = time.perf_counter()
            answer = client.post("/v1/predict", headers={"X-API-Key": key},
                                 json={"symbol": symbol, "exchange": exchange, "timeframe": timeframe})
            elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    if answer.status_code != 200:
        demo.failures.append(f"prediction: POST /v1/predict answered {answer.status_code}: {answer.text[:300]}")
        return [f"POST {base}/v1/predict -> {answer.status_code}"]
    body = answer.json()
    execution = body.get("execution", {})
    return [
        f"POST {base}/v1/predict {json.dumps({'symbol': symbol, 'exchange': exchange})} -> 200 "
        f"in {elapsed_ms:.1f} ms (model v{body['model_version']}, {body.get('inference_path', '-')})",
        f"price {body['price']:.2f} -> predicted {body['predicted_price']:.4f} in {body['horizon_s']} s "
        f"(return {body['predicted_return']:+.6f}, prob_up {body['prob_up']:.3f}); features of "
        f"{body['feature_event_time']}{' (stale: replayed history)' if body.get('stale') else ''}",
        f"execution: {execution.get('side')} size {execution.get('size')}: {execution.get('reason')}",
    ]
