"""The broker section of ``bench.stream``: the same real ES ticks through NATS JetStream.

- throughput, trades/s: the ingest side publishing exchange-message-sized batches to JetStream
  (this process), the feature service consuming them into candles, features and rows in Redis
  (its own process, one core), and end to end (publishing and consuming at once, until the
  last row is readable in Redis);
- added lag at a paced rate (one trade per message, like a live feed): from the ingest side
  handing a message to JetStream to the feature service having processed it and written the
  rows it closed (p50, p99), beside the floor of the client and server alone (publish -> pull
  fetch of a small message in one event loop).

Each measurement uses a stream of its own (deleted after); needs NATS with JetStream
(``RTML_BENCH_NATS_URL``, default nats://127.0.0.1:4222).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import time
import uuid

NATS_URL = os.environ.get("RTML_BENCH_NATS_URL", "nats://127.0.0.1:4222")
MARKET = ("replay", "ES-USD")


def _config(name: str):
    from rtml_stream.broker.jetstream import BrokerConfig

    return BrokerConfig(url=NATS_URL, stream=name, subject_prefix=name.lower(), max_age_s=3600,
                        max_bytes=2**30)


def _feature_process(name: str, redis_url: str, prefix: str, timeframes, expect: int, idle_stop_s: float,
                     ready, results) -> None:
    """Child: one FeatureService on the market until ``expect`` trades (or ``idle_stop_s`` without any)."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    from rtml_core.stores.online import open_online_store
    from rtml_stream.broker.features import FeatureService, FeatureServiceOptions
    from rtml_stream.pipeline import Pipeline
    from rtml_stream.sinks import OnlineSink

    async def run() -> dict:
        store = open_online_store(redis_url, prefix, history=100)
        service = FeatureService(_config(name), lambda: Pipeline(timeframes, allowed_lateness_ns=0),
                                 OnlineSink(store, coalesce_ms=100), [MARKET],
                                 options=FeatureServiceOptions(coalesce_ms=100, commit_interval_s=0.2))
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        while not service.feeds:
            await asyncio.sleep(0.01)
        ready.set()
        first, last = time.perf_counter(), None  # from the market taken (a backlog waiting, or none yet)
        seen, idle_since = 0, time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            if service.trades != seen:
                seen, idle_since = service.trades, time.monotonic()
                last = time.perf_counter()
            if seen >= expect and not service.online_sink.pending_rows:
                last = time.perf_counter()
                break
            if time.monotonic() - idle_since > idle_stop_s:
                break
        stop.set()
        summary = await task
        store.close()
        return {"trades": summary["trades"], "rows": summary["feature_rows"], "first": first, "last": last,
                "lags_ns": list(service.lag_samples_ns)}

    results.put(asyncio.run(run()))


async def _publish(name: str, trades, per_message: int, rate: float | None, duration_s: float | None) -> dict:
    """The ingest side: batches of ``per_message`` trades to JetStream, all at once or paced at ``rate``."""
    from rtml_stream.broker.codec import encode_trades, trade_msg_id, trade_subject
    from rtml_stream.broker.ingest import Outgoing, Publisher
    from rtml_stream.broker.jetstream import close, connect, ensure_stream
    from rtml_stream.broker.metrics import BrokerMetrics

    config = _config(name)
    nc = await connect(config, name="bench-ingest")
    js = nc.jetstream(publish_async_max_pending=8192)
    await ensure_stream(js, config)
    publisher = Publisher(js, config.stream, BrokerMetrics(), max_buffer=10**7)
    subject = trade_subject(*MARKET, config.subject_prefix)
    started = time.perf_counter()
    sent = 0
    for i in range(0, len(trades), per_message):
        if rate is not None:
            due = started + i / rate
            if duration_s is not None and due - started > duration_s:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        batch = trades[i:i + per_message]
        publisher.add(Outgoing(subject, encode_trades(*MARKET, batch, time.time_ns()),
                               trade_msg_id(*MARKET, batch[0].trade_id, batch[-1].trade_id), "trades", len(batch)))
        sent += len(batch)
        if rate is not None or len(publisher.buffer) >= 2048:
            await publisher.publish_due()
    await publisher.publish_due()
    seconds = time.perf_counter() - started
    await close(nc)
    return {"trades": sent, "seconds": seconds, "started": started}


async def _delete(name: str) -> None:
    import nats

    from rtml_stream.broker.leases import lease_bucket

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for delete in (lambda: js.delete_stream(name), lambda: js.delete_key_value(lease_bucket(name))):
        try:
            await delete()
        except Exception:  # noqa: BLE001
            pass
    await nc.close()


def _run(trades, redis_url: str, prefix: str, timeframes, *, per_message: int, rate: float | None = None,
         duration_s: float | None = None, publish_first: bool = False) -> dict:
    name = f"RTMLBENCH_{uuid.uuid4().hex[:8].upper()}"
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    expect = len(trades) if rate is None else min(len(trades), int(rate * (duration_s or 0)) + 1)
    try:
        published = None
        if publish_first:  # the ingest side alone, then the feature service catching up alone
            published = asyncio.run(_publish(name, trades, per_message, None, None))
        child = ctx.Process(target=_feature_process, args=(name, redis_url, prefix, timeframes, expect, 5.0,
                                                           ready, results))
        child.start()
        while not ready.wait(1):
            if not child.is_alive():
                raise RuntimeError(f"the feature service process exited ({child.exitcode}) before it started")
        if not publish_first:
            published = asyncio.run(_publish(name, trades, per_message, rate, duration_s))
        while True:
            try:
                result = results.get(timeout=1)
                break
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the feature service process exited ({child.exitcode})") from None
        child.join(30)
        return {**result, "published": published}
    finally:
        asyncio.run(_delete(name))


async def _floor(rate: float, duration_s: float) -> list[float]:
    """The floor under the added lag: nats-py publishing one small message at ``rate`` and a pull
    consumer fetching it, one event loop, nothing else (ms)."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    name = f"RTMLBENCH_{uuid.uuid4().hex[:8].upper()}"
    nc, pub = await nats.connect(NATS_URL), await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
    try:
        await js.add_consumer(name, ConsumerConfig(durable_name="floor", ack_policy=AckPolicy.EXPLICIT))
        psub = await js.pull_subscribe_bind(durable="floor", stream=name)
        n = int(rate * duration_s)
        lags: list[float] = []

        async def consume() -> None:
            while len(lags) < n:
                try:
                    msgs = await psub.fetch(1, timeout=1.0)
                except Exception:  # noqa: BLE001 - a timeout while idle
                    continue
                for msg in msgs:
                    lags.append((time.perf_counter_ns() - int(msg.data)) / 1e6)
                    await msg.ack()

        task = asyncio.create_task(consume())
        started = time.perf_counter()
        for i in range(n):
            wait = started + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await pub.jetstream().publish(f"{name.lower()}.x", str(time.perf_counter_ns()).encode())
        await asyncio.wait_for(task, 30)
        return lags
    finally:
        await js.delete_stream(name)
        await nc.close()
        await pub.close()


async def _lag_in_process(trades, redis_url: str, prefix: str, timeframes, rate: float, duration_s: float) -> list:
    """The added lag with the feature service in the publishing process (no second process to wake)."""
    from rtml_core.stores.online import open_online_store
    from rtml_stream.broker.features import FeatureService, FeatureServiceOptions
    from rtml_stream.pipeline import Pipeline
    from rtml_stream.sinks import OnlineSink

    name = f"RTMLBENCH_{uuid.uuid4().hex[:8].upper()}"
    store = open_online_store(redis_url, prefix, history=100)
    service = FeatureService(_config(name), lambda: Pipeline(timeframes, allowed_lateness_ns=0),
                             OnlineSink(store, coalesce_ms=100), [MARKET], options=FeatureServiceOptions())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        while not service.feeds:
            await asyncio.sleep(0.01)
        await _publish(name, trades, 1, rate, duration_s)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
        store.close()
        await _delete(name)
    return list(service.lag_samples_ns)


def broker_runs(trades, redis_url: str, prefix: str, timeframes, *, rate: float, lag_seconds: float,
                per_message: int = 100) -> dict:
    """Publish-only and consume-only rates, the end-to-end rate, the added lag at ``rate``."""
    split = _run(trades, redis_url, prefix + ":bsplit", timeframes, per_message=per_message, publish_first=True)
    e2e = _run(trades, redis_url, prefix + ":be2e", timeframes, per_message=per_message)
    paced = _run(trades, redis_url, prefix + ":blag", timeframes, per_message=1, rate=rate, duration_s=lag_seconds)
    inproc = asyncio.run(_lag_in_process(trades, redis_url, prefix + ":binproc", timeframes, rate, lag_seconds))
    floor = asyncio.run(_floor(rate, lag_seconds))
    return {"split": split, "e2e": e2e, "lag": paced, "inproc": inproc, "floor": floor, "per_message": per_message}


def print_broker(runs: dict, sidecar_rate: float, sidecar_lags_ms: list[float], rate: float, percentile) -> None:
    split, e2e, lag = runs["split"], runs["e2e"], runs["lag"]
    publish = split["published"]
    consume_s = (split["last"] - split["first"]) if split["last"] else float("nan")
    e2e_s = (e2e["last"] - e2e["published"]["started"]) if e2e["last"] else float("nan")
    print(f"\nbroker layout: ingest -> NATS JetStream -> feature service (own process) -> Redis "
          f"({runs['per_message']} trades per message)")
    print(f"{'throughput':<52} {'trades':>9} {'trades/s':>10} {'rows':>7}")
    rows = [
        ("ingest side -> JetStream (published, acked)", publish["trades"], publish["trades"] / publish["seconds"], 0),
        ("JetStream backlog -> features -> Redis", split["trades"], split["trades"] / consume_s, split["rows"]),
        ("end to end, ingest -> rows readable in Redis", e2e["trades"], e2e["trades"] / e2e_s, e2e["rows"]),
        ("in-process sidecar, trades in memory -> Redis", 0, sidecar_rate, 0),
    ]
    for name, count, speed, n_rows in rows:
        print(f"{name:<52} {count or '':>9} {speed:>10,.0f} {n_rows or '':>7}")
    lags = [ns / 1e6 for ns in lag["lags_ns"]]
    print(f"\n{'lag added by the broker @ %s trades/s' % f'{rate:,.0f}':<52} {'trades':>9} {'msgs':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'publish -> processed (rows written) in the service':<52} {lag['trades']:>9,} {len(lags):>7} "
          f"{percentile(lags, 50):>8.3f} {percentile(lags, 99):>8.3f} {max(lags, default=float('nan')):>8.3f}")
    inproc = [ns / 1e6 for ns in runs["inproc"]]
    print(f"{'same, the service in the publishing process':<52} {'':>9} {len(inproc):>7} "
          f"{percentile(inproc, 50):>8.3f} {percentile(inproc, 99):>8.3f} {max(inproc, default=float('nan')):>8.3f}")
    floor = runs["floor"]
    print(f"{'(floor: nats-py publish -> pull fetch, nothing else)':<52} {'':>9} {len(floor):>7} "
          f"{percentile(floor, 50):>8.3f} {percentile(floor, 99):>8.3f} {max(floor, default=float('nan')):>8.3f}")
    print(f"{'(sidecar, closing trade -> row in Redis, same run)':<52} {'':>9} {len(sidecar_lags_ms):>7} "
          f"{percentile(sidecar_lags_ms, 50):>8.3f} {percentile(sidecar_lags_ms, 99):>8.3f} "
          f"{max(sidecar_lags_ms, default=float('nan')):>8.3f}")
