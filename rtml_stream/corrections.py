"""Late trades recorded as corrections in the offline store, and the sidecar's offline log sink.

A trade later than the allowed lateness is never folded into a candle that was already served
and never silently dropped: it lands in ``trade_corrections`` (one row per timeframe whose
window had closed), so a batch job can rebuild those candles from the full trade history.
The table belongs to the ``stream`` component of the offline store's migration mechanism.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from rtml_core.stores.offline_tables import ExactDecimal, Migration, create_tables
from rtml_stream.pipeline import Correction
from rtml_stream.sinks import OfflineLogSink, _OfflineBatch

STREAM_COMPONENT = "stream"
STREAM_METADATA = sa.MetaData()

trade_corrections = sa.Table(
    "trade_corrections",
    STREAM_METADATA,
    sa.Column("exchange", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("trade_id", sa.BigInteger, nullable=False),
    sa.Column("time_ns", sa.BigInteger, nullable=False),
    sa.Column("price", ExactDecimal, nullable=False),
    sa.Column("size", ExactDecimal, nullable=False),
    sa.Column("side", sa.Text, nullable=False),
    sa.Column("window_start_ns", sa.BigInteger, nullable=False),
    sa.Column("watermark_ns", sa.BigInteger, nullable=False),
    sa.Column("recorded_at_ns", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "trade_id", name="trade_corrections_pkey"),
    info={"time_ns": "time_ns"},
)

STREAM_MIGRATIONS: list[Migration] = [
    Migration(1, "late trade corrections", create_tables(trade_corrections)),
]


def migrate_stream_tables(store) -> list[int]:
    """Create or upgrade the sidecar's own tables in an offline store (idempotent)."""
    return store.apply_migrations(STREAM_COMPONENT, STREAM_MIGRATIONS)


def write_corrections(store, corrections: Sequence[Correction], recorded_at_ns: int | None = None) -> int:
    """Insert corrections once each (a retry or a replay writes nothing twice); return rows inserted."""
    if not corrections:
        return 0
    now = time.time_ns() if recorded_at_ns is None else recorded_at_ns
    rows = [
        {
            "exchange": c.trade.exchange, "symbol": c.trade.symbol, "timeframe": c.timeframe,
            "trade_id": c.trade.trade_id, "time_ns": c.trade.time_ns, "price": c.trade.price,
            "size": c.trade.size, "side": c.trade.side, "window_start_ns": c.window_start_ns,
            "watermark_ns": c.watermark_ns if c.watermark_ns is not None else c.window_start_ns,
            "recorded_at_ns": now,
        }
        for c in corrections
    ]
    dialect = store.dialect
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(trade_corrections)
    statement = insert.on_conflict_do_nothing(index_elements=["exchange", "symbol", "timeframe", "trade_id"])
    with store.begin_write() as conn:
        result = conn.execute(statement, rows)
    return max(result.rowcount or 0, 0)


def read_corrections(store, exchange: str | None = None, symbol: str | None = None) -> list[dict]:
    """Recorded corrections (oldest trade first) as plain dicts."""
    query = sa.select(trade_corrections).order_by(trade_corrections.c.time_ns, trade_corrections.c.trade_id)
    if exchange is not None:
        query = query.where(trade_corrections.c.exchange == exchange)
    if symbol is not None:
        query = query.where(trade_corrections.c.symbol == symbol)
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


class StreamOfflineSink(OfflineLogSink):
    """``OfflineLogSink`` plus corrections: candles, feature rows and late trades, batched and retried."""

    def __init__(self, offline_store, **options) -> None:
        super().__init__(offline_store, **options)
        self._corrections: deque[Correction] = deque()
        self._migrated = False

    @property
    def pending(self) -> int:
        return super().pending + len(self._corrections)

    def add_corrections(self, corrections: Iterable[Correction]) -> None:
        before = len(self._corrections)
        self._corrections.extend(corrections)
        self._added(len(self._corrections) - before)

    def _take(self, now: float):
        due = self.next_due()
        if due is None or now < due:
            return None
        corrections = [self._corrections.popleft() for _ in range(min(self.max_batch, len(self._corrections)))]
        if super().pending:
            inner = super()._take(now)
        else:
            inner = _OfflineBatch([], [])
        if not self.pending:
            self._first_pending_at = None
        return inner, corrections

    def _write(self, batch) -> None:
        inner, corrections = batch
        if self.store is None:
            self.store = self._open_store()
        if corrections:
            if not self._migrated:
                migrate_stream_tables(self.store)
                self._migrated = True
            write_corrections(self.store, corrections)
            self.stats.count_written("corrections", len(corrections))
            corrections.clear()
        super()._write(inner)

    def _size(self, batch) -> int:
        inner, corrections = batch
        return super()._size(inner) + len(corrections)

    def _requeue(self, batch) -> None:
        inner, corrections = batch
        self._corrections.extendleft(reversed(corrections))
        super()._requeue(inner)
        if self.pending:
            self._first_pending_at = float("-inf")

    def _rejected(self, batch, error) -> None:
        if isinstance(batch, tuple):
            inner, corrections = batch
            self.stats.count_dropped("rejected", len(corrections))
            batch = inner
        super()._rejected(batch, error)

    def _enforce_bound(self) -> None:
        while self.pending > self.max_buffer:
            if self._rows or self._candles:
                self._drop_one_logged()
            else:
                self._corrections.popleft()
                self.stats.count_dropped("corrections")

