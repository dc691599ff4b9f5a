"""The online store interface: the latest feature row per (exchange, symbol, timeframe).

Implementations: ``RedisOnlineStore`` (real) and ``SqliteOnlineStore`` (embedded). Both pass
``tests/contract/test_online_store.py``. Open one with ``rtml_core.stores.online.open_online_store``.

Also here: the one JSON form of a row (``encode_row_json`` / ``decode_row_json``) that both
backends store as history and Redis publishes, and ``Subscription``, the async iterator
``OnlineStore.subscribe`` returns.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence

import msgspec

from rtml_core.errors import InputError, RtmlError, UnsupportedOperation
from rtml_core.schemas import FeatureRow
from rtml_core.timeframes import timeframe_ns
from rtml_core.times import iso_from_ns

RESERVED_FIELDS = frozenset({"event_time", "event_time_iso", "feature_set_version", "written_at"})
"""Fields of the latest/live hashes that are not features (a feature may not use these names)."""


class OnlineStoreUnavailable(RtmlError):
    """The online store did not answer (connection refused, timeout, database locked)."""


class LiveValues(msgspec.Struct, frozen=True):
    """Live market-microstructure values of one market at ``time_ns`` (coalesced, not per trade)."""

    exchange: str
    symbol: str
    time_ns: int
    values: dict[str, float]


class MarketSnapshot:
    """What a prediction reads in one round trip: the latest row (None when nothing was written)
    and the market's live values (empty when none)."""

    __slots__ = ("row", "live")

    def __init__(self, row: FeatureRow | None, live: Mapping[str, float] | None = None) -> None:
        self.row = row
        self.live: Mapping[str, float] = live or {}


class _WireRow(msgspec.Struct, frozen=True):
    """A FeatureRow as JSON: NaN is ``null``, infinities are the strings ``"inf"``/``"-inf"``."""

    exchange: str
    symbol: str
    timeframe: str
    event_time: int
    event_time_iso: str
    feature_set_version: str
    written_at: int
    values: dict[str, float | str | None]


_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(_WireRow)


def _json_value(value: float) -> float | str | None:
    value = float(value)  # also turns numpy scalars into plain floats
    if math.isfinite(value):
        return value
    if value != value:
        return None
    return "inf" if value > 0 else "-inf"


_BAD_KEY_PART = re.compile(r"[{}:\s*?\[\]]")


def check_key_part(what: str, value: str) -> str:
    """An exchange, symbol or timeframe that can be part of a store key (``{``, ``:`` etc. cannot)."""
    if not value or _BAD_KEY_PART.search(value):
        raise InputError(f"{what} {value!r} cannot be part of an online-store key (no braces, colons, "
                         "spaces or glob characters)")
    return value


def _reserved(names) -> list[str]:
    """The names the stores keep for themselves, sorted."""
    return sorted(RESERVED_FIELDS.intersection(names))


def check_live(live: LiveValues) -> None:
    """Refuse live values the stores cannot hold (reserved names, unusable market names)."""
    check_key_part("exchange", live.exchange)
    check_key_part("symbol", live.symbol)
    clash = _reserved(live.values)
    if clash:
        raise InputError(f"live value name(s) {clash} are reserved in the online store")


def check_row(row: FeatureRow, now_ns: int | None = None) -> None:
    """Refuse a row the stores cannot hold faithfully (reserved names, bad market names, negative times)
    and, given ``now_ns``, a row whose event time is beyond now plus one timeframe: such a row would
    stay "latest" and make every real row after it look older."""
    check_key_part("exchange", row.exchange)
    check_key_part("symbol", row.symbol)
    check_key_part("timeframe", row.timeframe)
    clash = _reserved(row.values)
    if clash:
        raise InputError(
            f"feature name(s) {clash} of {row.exchange} {row.symbol} {row.timeframe} are "
            f"reserved in the online store ({sorted(RESERVED_FIELDS)})"
        )
    if row.event_time_ns < 0:
        raise InputError(f"event time {row.event_time_ns} of {row.exchange} {row.symbol} is before 1970")
    if now_ns is not None and row.event_time_ns > now_ns + timeframe_ns(row.timeframe):
        raise InputError(
            f"event time {iso_from_ns(row.event_time_ns)} of {row.exchange} {row.symbol} {row.timeframe} is "
            f"beyond now ({iso_from_ns(now_ns)}) plus one timeframe"
        )


def encode_row_json(row: FeatureRow, written_at_ns: int) -> bytes:
    """The compact JSON of a row, as kept in history and published on each update."""
    values = row.values
    plain = values.values()
    if math.inf in plain or -math.inf in plain:
        values = {name: _json_value(value) for name, value in values.items()}
    wire = _WireRow(
        exchange=row.exchange,
        symbol=row.symbol,
        timeframe=row.timeframe,
        event_time=row.event_time_ns,
        event_time_iso=iso_from_ns(row.event_time_ns),
        feature_set_version=row.feature_set_version,
        written_at=written_at_ns,
        values=values,  # msgspec writes NaN as null
    )
    try:
        return _json_encoder.encode(wire)
    except TypeError:  # numpy scalars or other float-likes: convert one by one
        return _json_encoder.encode(
            msgspec.structs.replace(wire, values={name: _json_value(v) for name, v in row.values.items()})
        )


def decode_row_json(data: bytes | str) -> FeatureRow:
    """Inverse of ``encode_row_json`` (NaN and infinities come back as floats)."""
    wire = _json_decoder.decode(data)
    return FeatureRow(
        exchange=wire.exchange,
        symbol=wire.symbol,
        timeframe=wire.timeframe,
        event_time_ns=wire.event_time,
        feature_set_version=wire.feature_set_version,
        values={name: math.nan if value is None else float(value) for name, value in wire.values.items()},
    )


def row_hash_fields(row: FeatureRow, written_at_ns: int) -> dict[str, str]:
    """The latest-row hash: every feature as ``repr(float)`` plus the reserved fields."""
    fields = {name: repr(float(value)) for name, value in row.values.items()}
    fields["event_time"] = str(row.event_time_ns)
    fields["event_time_iso"] = iso_from_ns(row.event_time_ns)
    fields["feature_set_version"] = row.feature_set_version
    fields["written_at"] = str(written_at_ns)
    return fields


def row_from_hash_fields(
    exchange: str, symbol: str, timeframe: str, fields: Mapping[str, str]
) -> FeatureRow:
    """Inverse of ``row_hash_fields``."""
    return FeatureRow(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        event_time_ns=int(fields["event_time"]),
        feature_set_version=fields["feature_set_version"],
        values={name: float(value) for name, value in fields.items() if name not in RESERVED_FIELDS},
    )


def live_hash_fields(live: LiveValues, written_at_ns: int) -> dict[str, str]:
    """The live hash: every value as ``repr(float)`` plus ``event_time`` and ``written_at``."""
    check_live(live)
    fields = {name: repr(float(value)) for name, value in live.values.items()}
    fields["event_time"] = str(live.time_ns)
    fields["event_time_iso"] = iso_from_ns(live.time_ns)
    fields["written_at"] = str(written_at_ns)
    return fields


def live_from_hash_fields(exchange: str, symbol: str, fields: Mapping[str, str]) -> LiveValues:
    return LiveValues(
        exchange=exchange,
        symbol=symbol,
        time_ns=int(fields["event_time"]),
        values={name: float(value) for name, value in fields.items() if name not in RESERVED_FIELDS},
    )


class Subscription(ABC):
    """Rows that become the latest of one (exchange, symbol, timeframe), in event-time order.

    Yields only rows newer than the latest row at the moment the subscription is open; use
    ``rows = await store.subscribe(...)`` to be sure it is open before going on, or simply
    ``async for row in store.subscribe(...)`` (opens on the first iteration). Close it with
    ``await rows.aclose()`` or ``async with store.subscribe(...) as rows``.
    """

    def __init__(self, exchange: str, symbol: str, timeframe: str) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.timeframe = timeframe
        self._opened = False
        self._closed = False
        self._last_event_time_ns = -1

    @abstractmethod
    async def _open(self) -> int | None:
        """Start listening; return the event time of the current latest row (or None)."""

    @abstractmethod
    async def _next_row(self) -> FeatureRow:
        """Wait for the next candidate row (may be a duplicate or older; filtered here)."""

    @abstractmethod
    async def _close(self) -> None:
        """Stop listening and release connections."""

    async def open(self) -> Subscription:
        if not self._opened:
            self._opened = True
            latest = await self._open()
            self._last_event_time_ns = -1 if latest is None else latest
        return self

    def __await__(self):
        return self.open().__await__()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> FeatureRow:
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        while True:
            row = await self._next_row()
            if row.event_time_ns > self._last_event_time_ns:
                self._last_event_time_ns = row.event_time_ns
                return row

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._opened:
                await self._close()

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


class MarketFeed(ABC):
    """New latest rows of any number of markets through one listener (one connection).

    ``await feed.add(exchange, symbol, timeframe)`` starts delivering that market's rows newer
    than its latest row at that moment; ``feed.discard(...)`` stops it. ``async for row in
    feed`` yields the rows of every watched market, each market in event-time order; the feed
    reconnects by itself and catches up from history. Close with ``await feed.aclose()``.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], int] = {}  # watched market -> newest event time yielded
        self._pending: deque[FeatureRow] = deque()
        self._closed = False

    @property
    def markets(self) -> list[tuple[str, str, str]]:
        return list(self._last)

    async def add(self, exchange: str, symbol: str, timeframe: str) -> None:
        """Watch a market (listening when this returns: no later row is missed)."""
        check_key_part("exchange", exchange)
        check_key_part("symbol", symbol)
        check_key_part("timeframe", timeframe)
        market = (exchange, symbol, timeframe)
        if market in self._last:
            return
        await self._open()
        self._last[market] = -1  # rows arriving while the latest is read are not lost
        latest = await self._latest_event_time(market)
        if market in self._last and latest is not None:
            self._last[market] = max(self._last[market], latest)

    def discard(self, exchange: str, symbol: str, timeframe: str) -> None:
        self._last.pop((exchange, symbol, timeframe), None)

    def _wanted(self, row: FeatureRow) -> bool:
        """True (and remembered) when ``row`` is of a watched market and newer than its last one."""
        market = (row.exchange, row.symbol, row.timeframe)
        last = self._last.get(market)
        if last is None or row.event_time_ns <= last:
            return False
        self._last[market] = row.event_time_ns
        return True

    def __aiter__(self) -> MarketFeed:
        return self

    async def __anext__(self) -> FeatureRow:
        while True:
            if self._closed:
                raise StopAsyncIteration
            while self._pending:
                row = self._pending.popleft()
                if self._wanted(row):
                    return row
            await self._open()
            self._pending.extend(await self._next_rows())

    @abstractmethod
    async def _open(self) -> None:
        """Start listening (idempotent)."""

    @abstractmethod
    async def _latest_event_time(self, market: tuple[str, str, str]) -> int | None:
        """Event time of a market's latest row now (None: no row)."""

    @abstractmethod
    async def _next_rows(self) -> list[FeatureRow]:
        """Wait for candidate rows (any market; duplicates and older rows are filtered here)."""

    @abstractmethod
    async def _close(self) -> None:
        """Stop listening and release connections."""

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close()


class OnlineStore(ABC):
    """Latest feature row, bounded history and live values per market; one round trip per batch.

    Writers never expose a partial row: a reader sees a row's features all from the old row or
    all from the new one. A row only replaces the latest when its event time is not older.
    Backend failures raise ``OnlineStoreUnavailable``.
    """

    history: int
    """How many newest rows per (exchange, symbol, timeframe) ``read_history`` can return."""

    @abstractmethod
    def write_batch(self, rows: Sequence[FeatureRow], live: Sequence[LiveValues] = ()) -> None:
        """Write rows (latest, history, one publish per new latest) and live values in one round trip."""

    def write_rows(self, rows: Sequence[FeatureRow]) -> None:
        """Write rows in one round trip: latest row, bounded history, a publish per row that becomes the latest."""
        self.write_batch(rows, ())

    def write_live(self, exchange: str, symbol: str, time_ns: int, values: dict[str, float]) -> None:
        """Merge live microstructure values into the market's live hash (one round trip)."""
        self.write_batch((), (LiveValues(exchange, symbol, time_ns, values),))

    @abstractmethod
    def read_latest(self, exchange: str, symbol: str, timeframe: str) -> FeatureRow | None:
        """The newest row, or None when nothing was written."""

    @abstractmethod
    def read_history(self, exchange: str, symbol: str, timeframe: str, n: int) -> list[FeatureRow]:
        """Up to ``n`` newest rows, newest first."""

    @abstractmethod
    def read_live(self, exchange: str, symbol: str) -> LiveValues | None:
        """The market's live values (every name ever written, each with its latest value)."""

    @abstractmethod
    def subscribe(self, exchange: str, symbol: str, timeframe: str) -> Subscription:
        """Rows that become the latest from now on, as an async iterator (see ``Subscription``)."""

    @abstractmethod
    def feed(self) -> MarketFeed:
        """One listener for the new latest rows of many markets (see ``MarketFeed``)."""

    # async reads (the API's request path): never block the event loop --------------------
    async def aread_market(self, exchange: str, symbol: str, timeframe: str) -> MarketSnapshot:
        """The latest row and the live values of a market in one round trip, without blocking
        the event loop. Raises ``OnlineStoreUnavailable`` (connection, timeout, protocol) and
        ``InputError`` (a name that cannot be part of a key); nothing else on a store failure.

        The default runs the synchronous reads in a worker thread; backends override it.
        """
        return await asyncio.to_thread(self._read_market, exchange, symbol, timeframe)

    def _read_market(self, exchange: str, symbol: str, timeframe: str) -> MarketSnapshot:
        row = self.read_latest(exchange, symbol, timeframe)
        live = self.read_live(exchange, symbol) if row is not None else None
        return MarketSnapshot(row, live.values if live is not None else None)

    async def aread_latest(self, exchange: str, symbol: str, timeframe: str) -> FeatureRow | None:
        """``read_latest`` without blocking the event loop."""
        return (await self.aread_market(exchange, symbol, timeframe)).row

    async def aread_live(self, exchange: str, symbol: str) -> LiveValues | None:
        """``read_live`` without blocking the event loop."""
        return await asyncio.to_thread(self.read_live, exchange, symbol)

    async def acount(self, name: str, window_s: int) -> int:
        """Count one hit in the window ``name`` (shared by every process using this store) and
        return the window's count so far; the window ends ``window_s`` after its first hit.

        Only stores several processes share cheaply offer it (Redis); others raise
        ``UnsupportedOperation``.
        """
        raise UnsupportedOperation(f"online store {type(self).__name__} does not keep shared counters")

    async def aclose(self) -> None:
        """Release the connections the async reads opened on the running event loop (the store
        stays usable; ``close`` releases the rest)."""
        return None

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


async def sleep_backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> None:
    """Sleep ``min(cap, base * 2**attempt)`` scaled by a random factor in [0.5, 1)."""
    await asyncio.sleep(min(cap, base * 2**attempt) * (0.5 + random.random() / 2))
