"""What every source shares: the source interface, the feed's idle clock, timestamp parsing, and
the WebSocket session loop.

Every source yields ``batches()`` of normalized events (Trade | BookUpdate), says whether it
``is_live``, takes ``resume(symbol, trade_id, time_ns)`` (the last trade already processed, so
the gap is backfilled) and reports ``idle_ns()``: how long it has been connected, subscribed
and silent since its last trade or book event (the runner advances event time by that much
past the feed's own time; it never reads the machine's clock as event time).

``WebSocketSource.batches()`` connects, subscribes and reads messages in a reader task under an
idle timeout (a missing heartbeat is a dead connection). After every (re)connect the trades
missed since the last one seen are fetched from REST first and yielded, in id order, before any
live trade; a trade-id gap seen later is filled the same way. While it pages, the reader keeps
reading (live messages wait in order) and the idle clock stands still, as it does while
disconnected. Any drop, timeout or failed connect leads to a reconnect after an exponentially
growing, fully jittered delay. Malformed or unexpected input is counted by reason, logged with
a sample, and skipped: the source never dies of input.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
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


class IdleClock:
    """How long a source has been live (connected, subscribed, caught up) and silent since its
    last trade or book event. Heartbeats and status messages (``alive``) prove the link but carry
    no event time: the idle time runs at most ``grace_ns`` past the last message received, and
    stands still while the source is paused (disconnected, reconnecting, backfilling).
    ``clock`` is monotonic ns (elapsed time only: a skewed machine clock changes nothing)."""

    def __init__(self, *, grace_ns: int = 0, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.grace_ns = grace_ns
        self.clock = clock
        self._accrued = 0
        self._since: int | None = None  # live since (None: paused)
        self._alive: int | None = None

    @property
    def live(self) -> bool:
        return self._since is not None

    def event(self) -> None:
        """A trade or book event was handed over: the idle time starts again from zero."""
        self._accrued = 0
        if self._since is not None:
            self._since = self.clock()

    def alive(self) -> None:
        """A message (any: heartbeat, status, data) arrived."""
        self._alive = self.clock()

    def pause(self) -> None:
        if self._since is not None:
            self._accrued += self._span()
            self._since = None

    def resume(self) -> None:
        if self._since is None:
            now = self.clock()
            self._since = now
            self._alive = now

    def _span(self) -> int:
        end = self.clock()
        if self._alive is not None:
            end = min(end, self._alive + self.grace_ns)
        return max(0, end - self._since)

    def idle_ns(self) -> int:
        return self._accrued + (self._span() if self._since is not None else 0)


class Source(ABC):
    """Batches of normalized events: ``async for batch in source.batches()``, then ``close()``.

    ``is_live``: a connection to an exchange (wall-clock lag metrics and health apply);
    ``resume(symbol, trade_id, time_ns)``: continue after that trade (a restart);
    ``idle_ns()``: the feed's idle time (see ``IdleClock``), 0 for a source never silent.
    """

    exchange: ClassVar[str]
    is_live: ClassVar[bool] = False

    @abstractmethod
    def batches(self) -> AsyncIterator[Sequence[Event]]: ...

    async def events(self) -> AsyncIterator[Event]:
        """The same events one by one."""
        async for batch in self.batches():
            for event in batch:
                yield event

    def resume(self, symbol: str, trade_id: int, time_ns: int) -> None:
        """Continue after ``trade_id`` (already processed before a restart)."""

    def idle_ns(self) -> int:
        return 0

    @abstractmethod
    async def close(self) -> None: ...


class WebSocketSource(Source):
    """The connect / subscribe / read / catch up / reconnect loop; exchanges implement the hooks.

    Hooks: ``subscriptions()`` (messages sent after each connect), ``on_connect()`` (reset
    per-connection state), ``handle(raw)`` (one message -> events, trades not yet sequenced;
    may ``await self.send``), ``fetch_missing_trades(symbol, first_id, last_id, since_ns)``
    (REST; ``last_id`` None = everything after ``first_id - 1`` up to now).
    """

    default_idle_timeout: ClassVar[float] = 10.0
    heartbeat_grace_s: ClassVar[float] = 0.0  # idle time may run this far past the last message
    is_live = True

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
        max_backfill_age_s: float | None = 3600.0,
        idle_clock: IdleClock | None = None,
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
        self.max_backfill_age_s = max_backfill_age_s
        self.idle = idle_clock or IdleClock(grace_ns=int(self.heartbeat_grace_s * 1e9))
        self.reconnect_delays: deque[float] = deque(maxlen=64)  # the delays actually waited
        self.connections = 0
        self.feed_ns: int | None = None  # the largest event time handed over
        self._handed_at = 0  # monotonic ns when it was
        self._ws: ClientConnection | None = None
        self._closing = asyncio.Event()
        self._malformed_seen: dict[str, int] = {}
        self._inbox: deque[Sequence[Event]] = deque()  # handled messages waiting to be sequenced
        self.last_trade_id: dict[str, int] = {}
        self.last_trade_time_ns: dict[str, int] = {}
        self.backfill_attempts = 3

    # --- hooks -----------------------------------------------------------------------------

    @abstractmethod
    def subscriptions(self) -> list[Any]:
        """Messages (JSON-encodable) to send right after connecting."""

    def on_connect(self) -> None:
        """Reset per-connection state (books await a fresh snapshot, sequence counters...)."""

    @abstractmethod
    async def handle(self, raw: bytes) -> Sequence[Event]:
        """Turn one message into events; raise ``Malformed`` to count and skip it."""

    trade_backfill: Callable[..., Any] | None = None
    """``async (symbol, first_id, last_id) -> list[Trade]`` (REST), used by the default hook."""

    async def fetch_missing_trades(
        self, symbol: str, first_id: int, last_id: int | None, since_ns: int
    ) -> list[Trade] | None:
        """Trades ``first_id..last_id`` (``last_id`` None: up to now) from the exchange's REST API;
        None: no backfill configured."""
        if self.trade_backfill is None:
            return None
        return await self.trade_backfill(symbol, first_id, last_id)

    # --- the feed's clock ----------------------------------------------------------------------

    def idle_ns(self) -> int:
        """Idle time of the feed; 0 while handled messages still wait to be handed over."""
        return 0 if self._inbox else self.idle.idle_ns()

    def event_time_or_feed(self, text: str | None) -> int:
        """The exchange's timestamp, or (a message without one) the feed's own time so far: never
        the machine's clock, which may differ from the feed's."""
        if text:
            return parse_rfc3339_ns(text)
        return self.feed_ns or 0

    # --- trade ids: order, duplicates, gaps -------------------------------------------------

    def resume(self, symbol: str, trade_id: int, time_ns: int) -> None:
        """Continue after ``trade_id`` (the last trade already processed, e.g. from a checkpoint):
        on connect the trades after it are fetched from REST before any live trade."""
        if symbol not in self.symbols:
            raise ValueError(f"{symbol} is not one of this source's symbols {self.symbols}")
        self.last_trade_id[symbol] = trade_id
        self.last_trade_time_ns[symbol] = time_ns

    async def sequence_trades(self, trades: list[Trade]) -> list[Event]:
        """Trades in id order per symbol: ids seen before are skipped, a skipped id range is
        filled through ``fetch_missing_trades`` before the later trade (or recorded unfilled)."""
        if any(a.trade_id > b.trade_id for a, b in pairwise(trades)):
            trades.sort(key=lambda trade: trade.trade_id)
        out: list[Event] = []
        live: list[Trade] = []
        last_ids, last_times = self.last_trade_id, self.last_trade_time_ns
        for trade in trades:
            symbol = trade.symbol
            last = last_ids.get(symbol)
            if last is not None:
                if trade.trade_id <= last:
                    self.metrics.duplicate_trades.labels(self.exchange, symbol).inc()
                    continue
                if trade.trade_id > last + 1:
                    out.extend(await self._fill_gap(symbol, last + 1, trade.trade_id - 1, last_times[symbol],
                                                    until_ns=trade.time_ns))
            last_ids[symbol] = trade.trade_id
            last_times[symbol] = trade.time_ns
            out.append(trade)
            live.append(trade)
        self._count_trades(live)
        return out

    async def catch_up(self) -> list[Trade]:
        """After a (re)connect: every trade after the last one seen, per symbol, from REST.

        A gap beyond the backfill bound is left to the first live trade, whose id and time
        (the feed's own) decide whether it is filled or recorded."""
        out: list[Trade] = []
        for symbol in self.symbols:
            last = self.last_trade_id.get(symbol)
            if last is None:
                continue
            since = self.last_trade_time_ns[symbol]
            if self.max_backfill_age_s is not None and self._feed_time_now() - since > self.max_backfill_age_s * 1e9:
                log.warning("catch_up_skipped", exchange=self.exchange, symbol=symbol, after_id=last,
                            reason=f"older than the backfill bound of {self.max_backfill_age_s:g} s")
                continue
            found = await self._fill_gap(symbol, last + 1, None, self.last_trade_time_ns[symbol])
            found = [t for t in found if t.trade_id > self.last_trade_id[symbol]]
            if found:
                self.last_trade_id[symbol] = found[-1].trade_id
                self.last_trade_time_ns[symbol] = found[-1].time_ns
                out.extend(found)
        return out

    def _count_trades(self, live: list[Trade]) -> None:
        """Count live trades per symbol once per message; observe the lag of the newest."""
        if not live:
            return
        exchange = self.exchange
        counts: dict[str, int] = {}
        for trade in live:
            counts[trade.symbol] = counts.get(trade.symbol, 0) + 1
        for symbol, count in counts.items():
            self.metrics.trades_in.labels(exchange, symbol).inc(count)
        newest = max(trade.time_ns for trade in live)
        self.metrics.exchange_lag.labels(exchange).observe(
            max(0.0, (time.time_ns() - newest) / 1e9)
        )

    def _gap_unfilled(self, symbol: str, first_id: int, last_id: int | None, found: int, why: str) -> None:
        self.metrics.gaps_unfilled.labels(self.exchange, symbol).inc()
        log.error("trade_gap_unfilled", exchange=self.exchange, symbol=symbol, first_id=first_id,
                  last_id=last_id, found=found, reason=why)

    async def _fill_gap(
        self, symbol: str, first_id: int, last_id: int | None, since_ns: int, *, until_ns: int | None = None
    ) -> list[Trade]:
        """The trades with ids first_id..last_id (None: up to now), in id order, as many as could
        be fetched. A gap older than ``max_backfill_age_s`` (up to ``until_ns``, else up to the
        feed's time now) is recorded, not fetched. The idle clock stands still while REST pages."""
        exchange = self.exchange
        missing = None if last_id is None else last_id - first_id + 1
        reference = until_ns if until_ns is not None else self._feed_time_now()
        if self.max_backfill_age_s is not None and reference - since_ns > self.max_backfill_age_s * 1e9:
            self._gap_unfilled(symbol, first_id, last_id, 0,
                               f"older than the backfill bound of {self.max_backfill_age_s:g} s")
            return []
        if last_id is None:
            log.info("catching_up", exchange=exchange, symbol=symbol, after_id=first_id - 1)
        else:
            log.warning("trade_id_gap", exchange=exchange, symbol=symbol, first_id=first_id, last_id=last_id,
                        missing=missing)
        was_live = self.idle.live
        self.idle.pause()
        found: list[Trade] = []
        fetched: list[Trade] | None = None
        try:
            delays = self.reconnect_policy.delays()
            for attempt in range(1, self.backfill_attempts + 1):
                try:
                    fetched = await self.fetch_missing_trades(symbol, first_id, last_id, since_ns)
                except Exception as error:  # noqa: BLE001 - REST trouble must not kill the stream
                    log.warning("backfill_failed", exchange=exchange, symbol=symbol, attempt=attempt,
                                error=repr(error))
                    if attempt < self.backfill_attempts:
                        await self._pause(next(delays))
                    continue
                break
        finally:
            if was_live:
                self.idle.resume()
        if fetched is not None:
            unique = {t.trade_id: t for t in fetched
                      if t.trade_id >= first_id and (last_id is None or t.trade_id <= last_id)}
            found = [unique[i] for i in sorted(unique)]
        if found:
            self.metrics.trades_backfilled.labels(exchange, symbol).inc(len(found))
            self.metrics.trades_in.labels(exchange, symbol).inc(len(found))
        if missing is None:  # catching up after a (re)connect: how many there were is not known
            if found:
                self.metrics.gaps_backfilled.labels(exchange, symbol).inc()
        elif len(found) == missing:
            self.metrics.gaps_backfilled.labels(exchange, symbol).inc()
        else:
            self._gap_unfilled(symbol, first_id, last_id, len(found),
                               "no REST backfill" if fetched is None else "REST returned fewer trades")
        return found

    # --- session loop ----------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[Sequence[Event]]:
        delays: Iterator[float] | None = None
        exchange = self.exchange
        while not self._closing.is_set():
            reason = "closed"
            reader: asyncio.Task | None = None
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
                    self._inbox.clear()
                    for message in self.subscriptions():
                        await self.send(message)
                    log.info("subscribed", exchange=exchange, url=self.url, symbols=self.symbols,
                             connection=self.connections)
                    self.metrics.connected.labels(exchange).set(1)
                    arrived = asyncio.Event()
                    reader = asyncio.create_task(self._read(ws, arrived))
                    missed = await self.catch_up()  # REST first; the reader keeps reading meanwhile
                    if missed:
                        self._handed(missed)
                        yield missed
                    self.idle.resume()
                    while True:
                        while not self._inbox:
                            if reader.done():
                                reader.result()  # raises why the connection ended
                                raise ConnectionClosed(None, None)
                            arrived.clear()
                            if not self._inbox and not reader.done():
                                await arrived.wait()  # set by the reader for a message and when it ends
                        events = await self._sequence(self._inbox.popleft())
                        if events:
                            delays = None  # a working connection resets the backoff
                            self._handed(events)
                            yield events
            except IdleTimeout as error:
                reason = "idle_timeout"
                log.warning("idle_timeout", exchange=exchange, detail=str(error))
            except ConnectionClosed as error:
                reason = "closed"
                if not self._closing.is_set():
                    log.warning("connection_closed", exchange=exchange,
                                code=error.rcvd.code if error.rcvd else None)
            except InvalidURI:
                raise
            except (OSError, TimeoutError, InvalidHandshake) as error:
                reason = "connect_failed"
                log.warning("connect_failed", exchange=exchange, url=self.url, error=repr(error))
            finally:
                if reader is not None:
                    reader.cancel()
                self._ws = None
                self._inbox.clear()
                self.idle.pause()
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

    async def _read(self, ws: ClientConnection, arrived: asyncio.Event) -> None:
        """Read and handle messages into the inbox until the connection ends (raises why)."""
        messages_in = self.metrics.messages_in.labels(self.exchange)
        last_message_time = self.metrics.last_message_time.labels(self.exchange)
        idle = self.idle_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        raw = await ws.recv(decode=False)
                except TimeoutError:
                    raise IdleTimeout(f"no message for {idle}s") from None
                messages_in.inc()
                last_message_time.set(time.time())
                self.idle.alive()
                events = await self._handle_safely(raw)
                if events:
                    self._inbox.append(events)
                    arrived.set()
        finally:
            arrived.set()

    async def _sequence(self, events: Sequence[Event]) -> Sequence[Event]:
        """Trades of one message in id order, gaps filled (books pass through unchanged)."""
        trades = [event for event in events if isinstance(event, Trade)]
        if not trades:
            return events
        if len(trades) == len(events):
            return await self.sequence_trades(trades)
        return [event for event in events if not isinstance(event, Trade)] + await self.sequence_trades(trades)

    def _handed(self, events: Sequence[Event]) -> None:
        newest = max(event.time_ns for event in events)
        if self.feed_ns is None or newest > self.feed_ns:
            self.feed_ns = newest
        self._handed_at = time.monotonic_ns()
        self.idle.event()

    def _feed_time_now(self) -> int:
        """The feed's time now, estimated: its newest event plus the time elapsed since it was
        handed over (the wall clock for a process that has seen no event yet)."""
        if self.feed_ns is None:
            return time.time_ns()
        return self.feed_ns + time.monotonic_ns() - self._handed_at

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
        """Stop: the running ``batches()`` loop ends after the current message."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
