"""Replay trades from files (or any iterable) at a chosen speed, to rehearse the system offline.

``speed``: ``"max"`` or ``0`` = as fast as possible; ``1`` = real time (the gaps between trade
times are waited out); ``N`` = N times real time. The clock and sleep are injected, so tests
run a day of trades in no time. ``batches()`` yields lists of trades (one await per batch);
``events()`` yields single trades.

The feed's clock follows the same rule as a live source's: the trades' own times, plus the idle
time while the replay waits for its next trade (at ``speed`` times the elapsed time, never up to
that trade's time). At ``"max"`` speed the replay is never idle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

from rtml_core.schemas import Trade
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.base import Source

Speed = float | int | str


def parse_speed(speed: Speed) -> float | None:
    """``"max"``/``0`` -> None (as fast as possible); a positive number -> that multiple of real time."""
    if isinstance(speed, str):
        text = speed.strip().lower()
        if text in ("max", "inf", "fast", "0"):
            return None
        try:
            value = float(text.rstrip("x"))
        except ValueError:
            raise ValueError(
                f"speed {speed!r} is not 'max' or a positive number (1 = real time)"
            ) from None
    else:
        value = float(speed)
    if value == 0:
        return None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"speed {speed!r} is not 'max' or a positive number (1 = real time)")
    return value


class ReplaySource(Source):
    """Trades from ``trades`` (an iterable, or a callable making one) at ``speed``."""

    exchange = "replay"

    def __init__(
        self,
        trades: Iterable[Trade] | Callable[[], Iterable[Trade]],
        *,
        speed: Speed = "max",
        batch_size: int = 512,
        metrics: StreamMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._trades = trades
        self.speed = parse_speed(speed)
        self.batch_size = batch_size
        self.metrics = metrics if metrics is not None else StreamMetrics()
        self.clock = clock
        self.sleep = sleep
        self.replayed = 0
        self._closing = False
        self._last_ns: int | None = None  # newest trade time handed over
        self._handed_at = 0.0  # clock() when it was
        self._next_ns: int | None = None  # the trade the replay waits for

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        fmt: str,
        *,
        symbol: str | None = None,
        exchange: str | None = None,
        mapping: dict[str, str] | None = None,
        preset: str | None = None,
        **options,
    ) -> ReplaySource:
        """Replay a trades file in one of ``rtml_core.ingest.TRADE_FORMATS`` (kraken-rest,
        binance-trades, ticks-csv incl. ``.csv.gz``); the file is read lazily as it plays."""
        from rtml_core.ingest import read_trades

        def open_trades() -> Iterator[Trade]:
            return read_trades(
                path, fmt, exchange=exchange, symbol=symbol, mapping=mapping, preset=preset
            )

        return cls(open_trades, **options)

    def _iterator(self) -> Iterator[Trade]:
        trades = self._trades() if callable(self._trades) else self._trades
        return iter(trades)

    def idle_ns(self) -> int:
        """While waiting for the next trade: elapsed time times ``speed``, short of that trade."""
        if self.speed is None or self._next_ns is None or self._last_ns is None:
            return 0
        idle = int((self.clock() - self._handed_at) * self.speed * 1e9)
        return max(0, min(idle, self._next_ns - self._last_ns - 1))

    def _count(self, batch: list[Trade]) -> None:
        self.replayed += len(batch)
        newest = max(trade.time_ns for trade in batch)
        if self._last_ns is None or newest > self._last_ns:
            self._last_ns = newest
        self._handed_at = self.clock()
        first = batch[0]
        if first.symbol == batch[-1].symbol and all(t.symbol == first.symbol for t in batch):
            self.metrics.trades_in.labels(first.exchange, first.symbol).inc(len(batch))
        else:
            for trade in batch:
                self.metrics.trades_in.labels(trade.exchange, trade.symbol).inc()

    async def batches(self) -> AsyncIterator[list[Trade]]:
        """Lists of up to ``batch_size`` trades, each yielded once its trades are due."""
        trades = self._iterator()
        if self.speed is None:
            while not self._closing:
                batch = list(islice(trades, self.batch_size))
                if not batch:
                    return
                self._count(batch)
                yield batch
            return
        scale = 1.0 / (self.speed * 1e9)  # trade-time ns -> wall seconds
        clock, size = self.clock, self.batch_size
        start = clock()
        first_ns: int | None = None
        batch: list[Trade] = []
        for trade in trades:
            if self._closing:
                return
            if first_ns is None:
                first_ns = trade.time_ns
            due = start + (trade.time_ns - first_ns) * scale
            if due > clock():
                if batch:  # hand over what is due before waiting
                    self._count(batch)
                    yield batch
                    batch = []
                wait = due - clock()
                if wait > 0:
                    self._next_ns = trade.time_ns
                    await self.sleep(wait)
                    self._next_ns = None
                if self._closing:
                    return
            batch.append(trade)
            if len(batch) >= size:
                self._count(batch)
                yield batch
                batch = []
        if batch and not self._closing:
            self._count(batch)
            yield batch

    async def close(self) -> None:
        self._closing = True
