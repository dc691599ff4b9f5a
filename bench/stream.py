"""Streaming sidecar benchmark: the 500,000 real ES ticks through the whole pipeline into real Redis.

    .venv/bin/python -m bench.stream            # full run (a few minutes on a busy 2-core box)
    .venv/bin/python -m bench.stream --quick    # smoke run

Measured in one run, side by side:
- throughput, trades/s end to end: rtml's sidecar replaying the gzipped CSV (parsing included),
  from trades already in memory, and through the live Kraken source from a local WebSocket
  server (another process) sending the same trades as Kraken v2 messages at full speed; and the
  common way: per-message JSON decode of each
  trade, float candles, talipp indicators, one Redis round trip per update;
- lag from the trade that closes a candle to its feature row being readable in Redis (p50, p99)
  with trades paced at 1,000/s for a bounded time, for both;
- resident memory over a long replay (start, middle, end), for rtml.

Redis keys live under a prefix of their own (``rtmlbench:<random>``), deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from itertools import islice
from pathlib import Path

ES_TICKS = Path(__file__).resolve().parents[1] / "data" / "es_futures_ticks_2013-09.csv.gz"
REDIS_URL = os.environ.get("RTML_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEFRAMES = ("1m", "5m")


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load_trades(n: int | None):
    from rtml_core.ingest import read_trades

    trades = read_trades(ES_TICKS, "ticks-csv", exchange="replay", symbol="ES-USD")
    return list(trades if n is None else islice(trades, n))


# --- rtml -------------------------------------------------------------------------------------

def make_sidecar(source, prefix: str, home: Path, *, offline: bool = False, market=("replay", "ES-USD")):
    from rtml_core.settings import Settings
    from rtml_stream.app import build_sidecar

    settings = Settings(home=home, online_url=REDIS_URL, online_prefix=prefix, stream_offline_log=offline,
                        stream_dagster="off", stream_allowed_lateness_ms=0)
    return build_sidecar(settings, source, [market], timeframes=TIMEFRAMES, health_port=-1,
                         checkpoints=False)


def rtml_throughput(source, prefix: str, home: Path, *, sample_rss: int | None = None,
                    max_trades: int | None = None, market=("replay", "ES-USD")) -> dict:
    sidecar = make_sidecar(source, prefix, home, market=market)
    sidecar.options.max_trades = max_trades
    samples: list[tuple[int, float]] = []
    if sample_rss:
        original = sidecar.pipeline.on_trades
        marks = iter(range(0, 10**9, sample_rss))
        next_mark = [next(marks)]

        def on_trades(batch):
            original(batch)
            if sidecar.pipeline.trades_in >= next_mark[0]:
                samples.append((sidecar.pipeline.trades_in, rss_mb()))
                next_mark[0] = next(marks)

        sidecar.pipeline.on_trades = on_trades
    started = time.perf_counter()
    summary = asyncio.run(sidecar.run())
    seconds = time.perf_counter() - started
    sidecar.close()
    return {"trades": summary.trades, "seconds": seconds, "rows": summary.online["written"].get("rows", 0),
            "pending": summary.online["pending"], "rss": samples}


def kraken_messages(trades, per_message: int = 50) -> list[bytes]:
    """The trades as Kraken WebSocket v2 ``trade`` updates (``BTC/USD``), ``per_message`` each (the ES
    ticks name no aggressor side; Kraken's messages must: they go out as ``sell``)."""
    from rtml_core.times import iso_from_ns

    out = []
    for i in range(0, len(trades), per_message):
        items = ",".join(
            f'{{"symbol":"BTC/USD","side":"{"buy" if t.side == "buy" else "sell"}","price":{t.price},"qty":{t.size},"ord_type":"market",'
            f'"trade_id":{t.trade_id},"timestamp":"{iso_from_ns(t.time_ns, "trim")}"}}' for t in trades[i:i + per_message])
        out.append(('{"channel":"trade","type":"update","data":[' + items + "]}").encode())
    return out


def _serve_kraken(messages: list[bytes], port, ready) -> None:
    """A local Kraken v2 server (its own process): ack the subscription, then send every message."""
    from websockets.asyncio.server import serve

    async def handler(ws):
        request = json.loads(await ws.recv())
        await ws.send(json.dumps({"method": "subscribe", "result": {"channel": "trade", "symbol": "BTC/USD"},
                                  "success": True, "req_id": request.get("req_id")}))
        for message in messages:
            await ws.send(message, text=True)
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=None) as server:
            port.value = server.sockets[0].getsockname()[1]
            ready.set()
            await asyncio.Future()

    asyncio.run(main())


def rtml_kraken_ws(trades, prefix: str, home: Path) -> dict:
    """The live Kraken source end to end: a local WebSocket server process at full speed -> Redis."""
    import multiprocessing

    from rtml_stream.sources.kraken import KrakenSource

    context = multiprocessing.get_context("fork")
    port, ready = context.Value("i", 0), context.Event()
    server = context.Process(target=_serve_kraken, args=(kraken_messages(trades), port, ready), daemon=True)
    server.start()
    try:
        ready.wait(60)
        source = KrakenSource(["BTC-USD"], url=f"ws://127.0.0.1:{port.value}", channels=("trade",), backfill=None,
                              ping_interval=None)
        return rtml_throughput(source, prefix, home, max_trades=len(trades), market=("kraken", "BTC-USD"))
    finally:
        server.terminate()
        server.join(10)


class PacedReplay:
    """Trades handed over at ``rate`` per wall second (event times kept), one small batch at a time."""

    def __new__(cls, trades, rate: float, duration_s: float):
        from rtml_stream.sources.replay import ReplaySource

        class _Paced(ReplaySource):
            async def batches(self):
                start = time.perf_counter()
                for i, trade in enumerate(trades):
                    due = start + i / rate
                    if due - start > duration_s or self._closing:
                        return
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    yield [trade]

        return _Paced(trades)


def rtml_lag(trades, prefix: str, home: Path, rate: float, duration_s: float) -> dict:
    sidecar = make_sidecar(PacedReplay(trades, rate, duration_s), prefix, home)
    sidecar.options.flush_at_end = False
    summary = asyncio.run(sidecar.run())
    sidecar.close()
    lags_ms = [ns / 1e6 for ns in sidecar.lag_samples_ns]
    return {"trades": summary.trades, "lags_ms": lags_ms}


# --- the common way -----------------------------------------------------------------------------

class CommonWay:
    """What a first streaming bot usually looks like: json.loads per message, float candles per
    timeframe, talipp indicators updated on each close, one Redis round trip per update (the live
    hash on every trade, the feature hash on every close)."""

    def __init__(self, client, prefix: str) -> None:
        from talipp.indicators import ADX, ATR, BB, CCI, EMA, MACD, OBV, ROC, RSI, SMA, Stoch

        self.client = client
        self.prefix = prefix
        self.tf_ns = {"1m": 60_000_000_000, "5m": 300_000_000_000}
        self.open: dict[str, dict | None] = {tf: None for tf in self.tf_ns}
        self.ind = {tf: dict(sma_10=SMA(10), sma_20=SMA(20), sma_50=SMA(50), ema_12=EMA(12), ema_26=EMA(26),
                             rsi_14=RSI(14), macd=MACD(12, 26, 9), bb=BB(20, 2.0), atr_14=ATR(14), obv=OBV(),
                             roc_10=ROC(10), stoch=Stoch(14, 3), adx=ADX(14, 14), cci_20=CCI(20))
                    for tf in self.tf_ns}
        self.closed_at: list[float] = []
        self.lags_ms: list[float] = []
        self.rows = 0

    def on_message(self, raw: str) -> None:
        from talipp.ohlcv import OHLCV

        arrived = time.perf_counter()
        msg = json.loads(raw)
        t = msg["t"]
        price = float(msg["p"])
        size = float(msg["q"])
        for tf, tf_ns in self.tf_ns.items():
            start = t - t % tf_ns
            candle = self.open[tf]
            if candle is not None and start > candle["start"]:
                ohlcv = OHLCV(candle["o"], candle["h"], candle["l"], candle["c"], candle["v"])
                values = {}
                for name, ind in self.ind[tf].items():
                    ind.add(ohlcv if name in ("atr_14", "obv", "stoch", "adx", "cci_20") else candle["c"])
                    last = ind[-1] if len(ind) else None
                    if last is None:
                        values[name] = "nan"
                    elif hasattr(last, "__dict__"):
                        for k, v in vars(last).items():
                            values[f"{name}_{k}"] = repr(v) if v is not None else "nan"
                    else:
                        values[name] = repr(last)
                values["event_time"] = str(candle["start"] + tf_ns)
                self.client.hset(f"{self.prefix}:common:{tf}", mapping=values)
                self.rows += 1
                self.lags_ms.append((time.perf_counter() - arrived) * 1e3)
                candle = None
            if candle is None:
                self.open[tf] = {"start": start, "o": price, "h": price, "l": price, "c": price, "v": size}
            else:
                candle["h"] = max(candle["h"], price)
                candle["l"] = min(candle["l"], price)
                candle["c"] = price
                candle["v"] += size
        self.client.hset(f"{self.prefix}:common:live", mapping={"last_price": repr(price), "time": str(t)})


def messages(trades) -> list[str]:
    return [json.dumps({"e": "trade", "s": t.symbol, "t": t.time_ns, "i": t.trade_id, "p": str(t.price),
                        "q": str(t.size), "side": t.side}) for t in trades]


def common_throughput(raw: list[str], prefix: str) -> dict:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    bot = CommonWay(client, prefix)
    started = time.perf_counter()
    for message in raw:
        bot.on_message(message)
    seconds = time.perf_counter() - started
    client.close()
    return {"trades": len(raw), "seconds": seconds, "rows": bot.rows}


def common_lag(raw: list[str], prefix: str, rate: float, duration_s: float) -> dict:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    bot = CommonWay(client, prefix)
    start = time.perf_counter()
    count = 0
    for i, message in enumerate(raw):
        due = start + i / rate
        if due - start > duration_s:
            break
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        bot.on_message(message)
        count += 1
    client.close()
    return {"trades": count, "lags_ms": bot.lags_ms}


def cleanup(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced trades per second for the lag run")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="duration of each paced lag run")
    parser.add_argument("--passes", type=int, default=3, help="file replays in the long memory run")
    parser.add_argument("--no-broker", action="store_true", help="skip the NATS JetStream (broker layout) section")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # warnings off: a clean table

    from rtml_stream.sources.replay import ReplaySource

    n = 50_000 if args.quick else None
    common_n = 10_000 if args.quick else 100_000
    lag_seconds = 3.0 if args.quick else args.lag_seconds
    prefix = f"rtmlbench:{uuid.uuid4().hex[:8]}"
    load = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        try:
            # 1. end to end from the gzipped file (parsing included) + memory over a long replay
            file_run = rtml_throughput(
                ReplaySource.from_file(ES_TICKS, "ticks-csv", symbol="ES-USD", exchange="replay"),
                prefix + ":file", home / "a", max_trades=n)
            trades = load_trades(n)
            mem_run = rtml_throughput(ReplaySource(_passes(trades, 1 if args.quick else args.passes)),
                                      prefix + ":mem", home / "b", sample_rss=len(trades) // 4)
            memory_only = rtml_throughput(ReplaySource(trades), prefix + ":inmem", home / "c")
            kraken_ws = rtml_kraken_ws(trades, prefix + ":kraken", home / "e")
            lag = rtml_lag(trades, prefix + ":lag", home / "d", args.rate, lag_seconds)
            raw = messages(trades[:common_n])
            common = common_throughput(raw, prefix + ":common")
            raw_lag = messages(trades[: int(args.rate * lag_seconds) + 1])
            common_l = common_lag(raw_lag, prefix + ":commonlag", args.rate, lag_seconds)
            if not args.no_broker:  # the broker layout: bench/stream_broker.py
                from bench.stream_broker import broker_runs

                broker = broker_runs(trades, REDIS_URL, prefix, TIMEFRAMES, rate=args.rate, lag_seconds=lag_seconds)
        finally:
            removed = cleanup(prefix)

    def rate(run):
        return run["trades"] / run["seconds"]

    results = [
        ("rtml sidecar, gz CSV file -> Redis (parse incl.)", file_run["trades"], rate(file_run), file_run["rows"]),
        ("rtml sidecar, trades in memory -> Redis", memory_only["trades"], rate(memory_only), memory_only["rows"]),
        ("rtml sidecar, live Kraken source, local WS -> Redis", kraken_ws["trades"], rate(kraken_ws),
         kraken_ws["rows"]),
        ("common way: json.loads + talipp + 1 RTT/update", common["trades"], rate(common), common["rows"]),
    ]
    print(f"\nbench.stream  ({'quick' if args.quick else 'full'}; load average {load[0]:.1f} on "
          f"{os.cpu_count()} cores shared with other jobs; timeframes {','.join(TIMEFRAMES)}; real Redis)\n")
    print(f"{'throughput':<52} {'trades':>9} {'trades/s':>10} {'rows':>7}")
    for name, count, speed, rows in results:
        print(f"{name:<52} {count:>9,} {speed:>10,.0f} {rows:>7,}")
    print(f"\n{'lag: closing trade -> row readable in Redis':<52} {'trades':>9} {'closes':>7} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")
    for name, run in ((f"rtml sidecar @ {args.rate:,.0f} trades/s", lag),
                      (f"common way @ {args.rate:,.0f} trades/s", common_l)):
        lags = run["lags_ms"]
        print(f"{name:<52} {run['trades']:>9,} {len(lags):>7} {percentile(lags, 50):>8.3f} "
              f"{percentile(lags, 99):>8.3f} {max(lags, default=float('nan')):>8.3f}")
    print(f"\nresident memory, rtml over {mem_run['trades']:,} trades ({args.passes if not args.quick else 1} "
          f"replay passes, times shifted each pass):")
    rss = mem_run["rss"]
    if rss:
        picks = [rss[0], rss[len(rss) // 2], rss[-1]]
        print("  " + "   ".join(f"{label} {mb:.1f} MB @ {count:,}" for label, (count, mb) in
                                 zip(("start", "mid", "end"), picks)))
        print(f"  samples: {', '.join(f'{mb:.0f}' for _, mb in rss)} MB  "
              f"(median {statistics.median(mb for _, mb in rss):.1f})")
    if not args.no_broker:
        from bench.stream_broker import print_broker

        print_broker(broker, rate(memory_only), lag["lags_ms"], args.rate, percentile)
    print(f"\nredis keys removed: {removed}")


def _passes(trades, passes: int):
    """The trades ``passes`` times as new objects, each pass shifted past the previous one (times, ids)."""
    from rtml_core.schemas import Trade

    span = trades[-1].time_ns - trades[0].time_ns + 3_600_000_000_000
    span -= span % 300_000_000_000
    top = max(t.trade_id for t in trades)

    def generate():
        for p in range(passes):  # new objects every pass, like a source decoding messages
            shift, ids = p * span, p * top
            for t in trades:
                yield Trade(t.exchange, t.symbol, t.trade_id + ids, t.time_ns + shift, t.price, t.size, t.side)

    return generate


if __name__ == "__main__":
    main()
