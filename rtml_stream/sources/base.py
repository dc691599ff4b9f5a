"""What every source shares: the event types, timestamp parsing, and the WebSocket session loop.

``WebSocketSource.events()`` connects, subscribes, reads messages under an idle timeout (a
missing heartbeat is a dead connection), hands each message to the exchange's ``handle`` and
yields the Trades and BookUpdates it returns. Any drop, timeout or failed connect leads to a
reconnect after an exponentially growing, fully jittered delay, then a resubscribe. Malformed
or unexpected input is counted by reason, logged with a sample, and skipped: the source never
dies of input.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import backoff
import msgspec
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from rtml_core.errors import RtmlError
from rtml_core.schemas import BookUpdate, Trade
from rtml_core.symbols import validate_symbol
from rtml_stream.metrics import StreamMetrics

Event = Trade | BookUpdate
log = structlog.get_logger("rtml_stream.sources")

_SAMPLE_CHARS = 300
_LOG_FIRST = 5  # log the first few samples of each malformed reason, then every 1000th


class Malformed(Exception):
    """Raised by a handler for a message it must skip; ``reason`` labels the counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SubscriptionError(RtmlError):
    """The exchange rejected a subscription (unknown pair, bad depth...): a configuration error."""


class IdleTimeout(Exception):
    """No message (not even a heartbeat) within the idle timeout."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(max, initial * factor**n))."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: bool = True

    def delays(self) -> Iterator[float]:
        expo = backoff.expo(base=self.factor, factor=self.initial, max_value=self.maximum)
        next(expo)  # backoff's wait generators are primed with one send(None)
        for delay in expo:
            yield backoff.full_jitter(delay) if self.jitter else delay


_FRACTION_DIGITS = 9
_SECONDS_CACHE: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch seconds; trades share seconds
_SECONDS_CACHE_LIMIT = 4096


def parse_rfc3339_ns(text: str) -> int:
    """``2024-07-27T21:16:00.512060Z`` (UTC, up to nanoseconds) -> int ns since the epoch."""
    head = text[:19]
    seconds = _SECONDS_CACHE.get(head)
    if seconds is None:
        if not text.endswith("Z") or len(text) < 20 or text[10] != "T":
            raise Malformed("bad_timestamp", text[:40])
        try:
            seconds = calendar.timegm(
                (
                    int(text[0:4]),
                    int(text[5:7]),
                    int(text[8:10]),
                    int(text[11:13]),
                    int(text[14:16]),
                    int(text[17:19]),
                    0,
                    0,
                    0,
                )
            )
        except ValueError as error:
            raise Malformed("bad_timestamp", text[:40]) from error
        if len(_SECONDS_CACHE) >= _SECONDS_CACHE_LIMIT:
            _SECONDS_CACHE.clear()
        _SECONDS_CACHE[head] = seconds
    elif text[-1] != "Z" or len(text) < 20:
        raise Malformed("bad_timestamp", text[:40])
    if text[19] != ".":
        if len(text) != 20:
            raise Malformed("bad_timestamp", text[:40])
        return seconds * 1_000_000_000
    fraction = text[20:-1]
    if not fraction.isdigit():
        raise Malformed("bad_timestamp", text[:40])
    return seconds * 1_000_000_000 + int(fraction[:_FRACTION_DIGITS].ljust(_FRACTION_DIGITS, "0"))


class Source(ABC):
    """An async stream of normalized events: ``async for e in source.events()``, then ``close()``."""

    exchange: ClassVar[str]

    @abstractmethod
    def events(self) -> AsyncIterator[Event]: ...

    @abstractmethod
    async def close(self) -> None: ...


class WebSocketSource(Source):
    """The connect / subscribe / read / reconnect loop; exchanges implement the hooks.

    Hooks: ``subscriptions()`` (messages sent after each connect), ``on_connect()`` (reset
    per-connection state), ``handle(raw)`` (one message -> events; may ``await self.send``).
    """

    default_idle_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        url: str,
        symbols: Sequence[str],
        *,
        metrics: StreamMetrics | None = None,
        idle_timeout: float | None = None,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        reconnect: ReconnectPolicy | None = None,
        max_message_bytes: int | None = 2**24,
    ) -> None:
        if not symbols:
            raise ValueError("at least one symbol is required")
        self.url = url
        self.symbols = tuple(validate_symbol(s) for s in symbols)
        self.metrics = metrics if metrics is not None else StreamMetrics()
        self.idle_timeout = idle_timeout if idle_timeout is not None else self.default_idle_timeout
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.max_message_bytes = max_message_bytes
        self.reconnect_delays: deque[float] = deque(maxlen=64)  # the delays actually waited
        self.connections = 0
        self._ws: ClientConnection | None = None
        self._closing = asyncio.Event()
        self._malformed_seen: dict[str, int] = {}

    # --- hooks -----------------------------------------------------------------------------

    @abstractmethod
    def subscriptions(self) -> list[Any]:
        """Messages (JSON-encodable) to send right after connecting."""

    def on_connect(self) -> None:
        """Reset per-connection state (books await a fresh snapshot, sequence counters...)."""

    @abstractmethod
    async def handle(self, raw: bytes) -> Sequence[Event]:
        """Turn one message into events; raise ``Malformed`` to count and skip it."""

    # --- session loop ----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        delays: Iterator[float] | None = None
        exchange = self.exchange
        while not self._closing.is_set():
            reason = "closed"
            try:
                async with connect(
                    self.url,
                    open_timeout=self.open_timeout,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_interval,
                    close_timeout=1.0,
                    max_size=self.max_message_bytes,
                    compression=None,
                ) as ws:
                    self._ws = ws
                    if self._closing.is_set():  # close() ran while we were connecting
                        return
                    self.connections += 1
                    self.on_connect()
                    for message in self.subscriptions():
                        await self.send(message)
                    log.info(
                        "subscribed",
                        exchange=exchange,
                        url=self.url,
                        symbols=self.symbols,
                        connection=self.connections,
                    )
                    self.metrics.connected.labels(exchange).set(1)
                    idle = self.idle_timeout
                    while True:
                        try:
                            async with asyncio.timeout(idle):
                                raw = await ws.recv(decode=False)
                        except TimeoutError:
                            raise IdleTimeout(f"no message for {idle}s") from None
                        self.metrics.messages_in.labels(exchange).inc()
                        self.metrics.last_message_time.labels(exchange).set(time.time())
                        events = await self._handle_safely(raw)
                        if events:
                            delays = None  # a working connection resets the backoff
                            for event in events:
                                yield event
            except IdleTimeout as error:
                reason = "idle_timeout"
                log.warning("idle_timeout", exchange=exchange, detail=str(error))
            except ConnectionClosed as error:
                reason = "closed"
                if not self._closing.is_set():
                    log.warning(
                        "connection_closed",
                        exchange=exchange,
                        code=error.rcvd.code if error.rcvd else None,
                    )
            except InvalidURI:
                raise
            except (OSError, TimeoutError, InvalidHandshake) as error:
                reason = "connect_failed"
                log.warning("connect_failed", exchange=exchange, url=self.url, error=repr(error))
            finally:
                self._ws = None
                self.metrics.connected.labels(exchange).set(0)
            if self._closing.is_set():
                break
            if delays is None:
                delays = self.reconnect_policy.delays()
            delay = next(delays)
            self.metrics.reconnects.labels(exchange, reason).inc()
            self.reconnect_delays.append(delay)
            log.info("reconnecting", exchange=exchange, reason=reason, delay_s=round(delay, 3))
            await self._pause(delay)

    async def _handle_safely(self, raw: bytes) -> Sequence[Event]:
        try:
            return await self.handle(raw)
        except Malformed as error:
            self.count_malformed(error.reason, raw, error.detail)
        except msgspec.ValidationError as error:
            self.count_malformed("wrong_types", raw, str(error))
        except msgspec.DecodeError as error:
            self.count_malformed("bad_json", raw, str(error))
        except (ConnectionClosed, SubscriptionError):
            raise
        except Exception as error:  # noqa: BLE001 - the source never dies of input
            self.count_malformed("unexpected_error", raw, repr(error))
        return ()

    def count_malformed(self, reason: str, raw: bytes | str, detail: str = "") -> None:
        """Count a skipped message under ``reason`` and log a sample of it (rate-limited)."""
        self.metrics.malformed_messages.labels(self.exchange, reason).inc()
        seen = self._malformed_seen.get(reason, 0) + 1
        self._malformed_seen[reason] = seen
        if seen <= _LOG_FIRST or seen % 1000 == 0:
            sample = raw[:_SAMPLE_CHARS]
            if isinstance(sample, bytes):
                sample = sample.decode("utf-8", "replace")
            log.warning(
                "malformed_message",
                exchange=self.exchange,
                reason=reason,
                detail=detail[:200],
                sample=sample,
                count=seen,
            )

    async def send(self, message: Any) -> None:
        """Send one JSON message on the current connection (as a text frame)."""
        if self._ws is None:
            raise ConnectionClosed(None, None)
        await self._ws.send(msgspec.json.encode(message), text=True)

    async def _pause(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Stop: the running ``events()`` loop ends after the current message."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
