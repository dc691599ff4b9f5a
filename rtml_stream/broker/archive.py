"""The archive consumer: every trade of the stream into the offline store's trades table.

A durable pull consumer (``<group>``, default ``archive``) on ``rtml.trades.>`` fetches batches,
upserts their trades on (exchange, symbol, trade_id) in one transaction and acknowledges the
batch after the commit: a crash redelivers what was not committed, and rewriting it changes
nothing. The Dagster ``raw_trades`` history of a streamed market is then the stream's own
record, replayable after a feature-definition change (``rtml stream --source ... --from-start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from rtml_core.schemas import Trade
from rtml_stream.broker.codec import decode_trades
from rtml_stream.broker.jetstream import BrokerConfig, close, connect, ensure_stream
from rtml_stream.broker.metrics import BrokerMetrics
from rtml_stream.health import HealthServer

log = structlog.get_logger("rtml_stream.broker.archive")


class Archiver:
    def __init__(self, config: BrokerConfig, open_store: Callable[[], object], *, name: str = "archive",
                 fetch_batch: int = 2048, metrics: BrokerMetrics | None = None, health_host: str = "127.0.0.1",
                 health_port: int | None = None, subject: str | None = None) -> None:
        self.config = config
        self.open_store = open_store
        self.name = name
        self.subject = subject or f"{config.subject_prefix}.trades.>"
        self.fetch_batch = fetch_batch
        self.metrics = metrics or BrokerMetrics()
        self.health_host, self.health_port = health_host, health_port
        self.store = None
        self.trades = 0
        self.failures = 0
        self.last_error: str | None = None
        self.connected = False
        self.lag: int | None = None

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self.metrics.connected.set(1 if up else 0)

    def write(self, msgs: list) -> int:
        """Decode and upsert the trades of ``msgs`` (blocking; runs in a worker thread)."""
        if self.store is None:
            self.store = self.open_store()
        trades: list[Trade] = []
        for msg in msgs:
            trades.extend(decode_trades(msg.data).trades)
        if trades:
            self.store.write_trades(trades)
        return len(trades)

    def health_reasons(self) -> list[str]:
        reasons = []
        if not self.connected:
            reasons.append(f"broker {self.config.url} is not connected")
        if self.failures:
            reasons.append(f"offline store failing: {self.last_error}")
        return reasons

    def health_details(self) -> dict:
        return {"role": "archive", "stream": self.config.stream, "consumer": self.name, "trades": self.trades,
                "consumer_lag": self.lag}

    async def run(self, stop: asyncio.Event | None = None, *, duration_s: float | None = None) -> dict:
        stop = stop or asyncio.Event()
        started = time.monotonic()
        nc = await connect(self.config, name="rtml-archive", on_state=self._set_connected)
        js = nc.jetstream()
        await ensure_stream(js, self.config)
        await js.add_consumer(self.config.stream, ConsumerConfig(
            durable_name=self.name, filter_subject=self.subject, deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=max(60.0, self.config.ack_wait_s), max_deliver=-1,
            max_ack_pending=self.config.max_ack_pending, num_replicas=self.config.replicas))
        psub = await js.pull_subscribe_bind(durable=self.name, stream=self.config.stream)
        server = None
        if self.health_port is not None:
            server = await HealthServer(self.metrics.registry, lambda: (self.health_reasons(), self.health_details()),
                                        host=self.health_host, port=self.health_port).start()
            self.health_port = server.port
            log.info("health_server", url=f"http://{self.health_host}:{server.port}/health")
        deadline = asyncio.get_running_loop().call_later(duration_s, stop.set) if duration_s else None
        consumed = self.metrics.consumed.labels(self.name)
        acknowledged = self.metrics.acknowledged.labels(self.name)
        redelivered = self.metrics.redelivered.labels(self.name)
        last_lag_poll = 0.0
        try:
            while not stop.is_set():
                try:
                    msgs = await psub.fetch(self.fetch_batch, timeout=0.5)
                except (TimeoutError, NatsTimeoutError):
                    msgs = []
                except Exception as error:  # noqa: BLE001 - NATS trouble: retry
                    log.warning("fetch_failed", consumer=self.name, error=repr(error))
                    await asyncio.sleep(0.5)
                    continue
                if msgs:
                    consumed.inc(len(msgs))
                    redelivered.inc(sum(1 for m in msgs if m.metadata.num_delivered > 1))
                    while not stop.is_set():
                        try:
                            n = await asyncio.to_thread(self.write, msgs)
                            break
                        except Exception as error:  # noqa: BLE001 - store down: keep the batch, retry
                            self.failures += 1
                            self.last_error = f"{type(error).__name__}: {error}"
                            (log.warning if self.failures == 1 else log.debug)("archive_write_failed",
                                                                            error=self.last_error)
                            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self.failures, 6)))
                    else:
                        break  # stopping with the batch unwritten: it is redelivered to the next run
                    self.failures, self.last_error = 0, None
                    for msg in msgs:
                        await msg.ack()
                    acknowledged.inc(len(msgs))
                    self.trades += n
                    self.metrics.archived_trades.inc(n)
                if time.monotonic() - last_lag_poll > 2.0:
                    last_lag_poll = time.monotonic()
                    with contextlib.suppress(Exception):
                        info = await js.consumer_info(self.config.stream, self.name)
                        self.lag = info.num_pending
                        self.metrics.consumer_lag.labels(self.name).set(info.num_pending or 0)
        finally:
            if deadline is not None:
                deadline.cancel()
            if server is not None:
                await server.close()
            with contextlib.suppress(Exception):
                await close(nc)
            if self.store is not None:
                with contextlib.suppress(Exception):
                    self.store.close()
        return {"trades": self.trades, "seconds": round(time.monotonic() - started, 3)}
