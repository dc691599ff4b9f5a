"""The JetStream side: connection, the market-data stream (created or updated idempotently),
the last trade of a market, and consumer positions.

``BrokerConfig`` is built once from Settings at an entry point (``BrokerConfig.from_settings``)
and passed down; nothing here reads the environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nats
import structlog
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from rtml_core.errors import InputError
from rtml_core.settings import Settings
from rtml_stream.broker.codec import decode_trades, stream_subjects, trade_subject

log = structlog.get_logger("rtml_stream.broker")


@dataclass(frozen=True)
class BrokerConfig:
    url: str = "nats://127.0.0.1:4222"
    stream: str = "RTML_MARKET_DATA"
    subject_prefix: str = "rtml"
    max_age_s: float = 7 * 86_400.0  # 0: no age limit
    max_bytes: int = 10 * 2**30  # 0: no size limit
    duplicate_window_s: float = 120.0
    replicas: int = 1
    group: str = "features"
    lease_ttl_s: float = 3.0
    ack_wait_s: float = 900.0
    max_ack_pending: int = 100_000
    publish_buffer: int = 100_000
    book_snapshot_s: float = 10.0
    tick_s: float = 1.0  # a quiet feed's clock is published this often (candles close on it)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> BrokerConfig:
        url = url or settings.broker_url
        if not url:
            raise InputError("no broker URL: pass --source/--to nats://host:4222 or set RTML_BROKER_URL")
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise InputError(f"broker URL {url!r} is not a nats:// URL")
        group = settings.broker_group
        if not group or any(not (c.isalnum() or c in "-_") for c in group):
            raise InputError(f"RTML_BROKER_GROUP {group!r}: use letters, digits, '-' and '_'")
        return cls(url=url, stream=settings.broker_stream, subject_prefix=settings.broker_subject_prefix, max_age_s=settings.broker_max_age_s,
                   max_bytes=settings.broker_max_bytes, duplicate_window_s=settings.broker_duplicate_window_s,
                   replicas=settings.broker_replicas, group=settings.broker_group,
                   lease_ttl_s=settings.broker_lease_ttl_s, ack_wait_s=settings.broker_ack_wait_s,
                   max_ack_pending=settings.broker_max_ack_pending, publish_buffer=settings.broker_publish_buffer,
                   book_snapshot_s=settings.broker_book_snapshot_s, tick_s=settings.broker_tick_s)

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=stream_subjects(self.subject_prefix),
            retention=RetentionPolicy.LIMITS,  # a log: several consumer groups read the same messages
            storage=StorageType.FILE,
            max_age=self.max_age_s or None,
            max_bytes=self.max_bytes or -1,
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.replicas,
        )


async def connect(config: BrokerConfig, *, name: str, on_state=None) -> nats.NATS:
    """A client that reconnects forever; ``on_state(connected: bool)`` follows the connection."""

    client: dict = {}

    async def disconnected():
        nc = client.get("nc")
        if nc is None or not nc.is_closed:  # a close of ours is no outage
            log.warning("broker_disconnected", url=config.url)
        if on_state is not None:
            on_state(False)

    async def reconnected():
        log.info("broker_reconnected", url=config.url)
        if on_state is not None:
            on_state(True)

    async def error(exc):
        log.debug("broker_error", error=repr(exc))

    nc = await nats.connect(config.url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                            connect_timeout=5, allow_reconnect=True, disconnected_cb=disconnected,
                            reconnected_cb=reconnected, error_cb=error)
    client["nc"] = nc
    if on_state is not None:
        on_state(True)
    return nc


async def ensure_stream(js, config: BrokerConfig):
    """Create the stream, or update its retention and duplicate window to ``config``; idempotent."""
    wanted = config.stream_config()
    try:
        info = await js.stream_info(config.stream)
    except NotFoundError:
        info = await js.add_stream(wanted)
        log.info("stream_created", stream=config.stream, subjects=wanted.subjects)
        return info
    have = info.config
    if (have.max_age or 0) != (wanted.max_age or 0) or (have.max_bytes or -1) != wanted.max_bytes \
            or have.duplicate_window != wanted.duplicate_window or sorted(have.subjects or []) != wanted.subjects \
            or (have.num_replicas or 1) != wanted.num_replicas:
        info = await js.update_stream(wanted)
        log.info("stream_updated", stream=config.stream, max_age_s=wanted.max_age, max_bytes=wanted.max_bytes,
                 duplicate_window_s=wanted.duplicate_window)
    return info


async def last_trades(js, config: BrokerConfig, exchange: str, symbols: Sequence[str]) -> dict[str, tuple[int, int]]:
    """symbol -> (trade id, time ns) of the newest trade the stream holds for each market."""
    out = {}
    for symbol in symbols:
        try:
            raw = await js.get_last_msg(config.stream, trade_subject(exchange, symbol, config.subject_prefix))
        except NotFoundError:
            continue
        batch = decode_trades(raw.data)
        if batch.trades:
            newest = max(batch.trades, key=lambda t: t.trade_id)
            out[symbol] = (newest.trade_id, newest.time_ns)
    return out


def durable_name(group: str, exchange: str, symbol: str) -> str:
    """A durable consumer name per (group, market): only letters, digits, '-' and '_'."""
    raw = f"{group}_{exchange}_{symbol}"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)


async def close(nc) -> None:
    """Send what is buffered (acks, publishes), then close (``drain`` waits out pull subscriptions)."""
    try:
        await nc.flush(timeout=2)
    except Exception:  # noqa: BLE001 - closing anyway
        pass
    await nc.close()
