"""The stream sidecar's own offline tables: late trade corrections and gaps too long to fill.

They live here, beside the core tables, so every reader (the stream, monitoring, the CLI)
finds one schema in the core; ``rtml_stream.corrections`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from rtml_core.stores.offline_base import OfflineStore
from rtml_core.stores.offline_tables import ExactDecimal, Migration, create_tables, not_null

STREAM_COMPONENT = "stream"
STREAM_METADATA = sa.MetaData()

trade_corrections = sa.Table(
    "trade_corrections",
    STREAM_METADATA,
    *not_null(sa.Text, "exchange", "symbol", "timeframe"),
    *not_null(sa.BigInteger, "trade_id", "time_ns"),
    *not_null(ExactDecimal, "price", "size"),
    sa.Column("side", sa.Text, nullable=False),
    *not_null(sa.BigInteger, "window_start_ns", "watermark_ns", "recorded_at_ns"),
    sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "trade_id", name="trade_corrections_pkey"),
    info={"time_ns": "time_ns"},
)

candle_gaps = sa.Table(
    "candle_gaps",
    STREAM_METADATA,
    *not_null(sa.Text, "exchange", "symbol", "timeframe"),
    *not_null(sa.BigInteger, "from_ns", "to_ns", "candles", "recorded_at_ns"),
    sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "from_ns", name="candle_gaps_pkey"),
    info={"time_ns": "from_ns"},
)

STREAM_MIGRATIONS: list[Migration] = [
    Migration(1, "late trade corrections", create_tables(trade_corrections)),
    Migration(2, "gaps too long to fill", create_tables(candle_gaps)),
]


def insert_new(store: OfflineStore, table: sa.Table, rows: list[dict], key: Sequence[str]) -> int:
    """Insert rows whose ``key`` is not stored yet (a retry or replay writes nothing twice); rows inserted."""
    if not rows:
        return 0
    statement = store.insert(table).on_conflict_do_nothing(index_elements=list(key))
    with store.begin_write() as conn:
        # an executemany's rowcount is -1 on PostgreSQL unless asked to keep it
        result = conn.execution_options(preserve_rowcount=True).execute(statement, rows)
    return max(result.rowcount or 0, 0)


def read_market_rows(store: OfflineStore, table: sa.Table, order_by: Sequence, exchange: str | None,
                     symbol: str | None) -> list[dict]:
    """Rows of ``table`` (optionally of one exchange and symbol) as plain dicts, in ``order_by``."""
    query = sa.select(table).order_by(*order_by)
    if exchange is not None:
        query = query.where(table.c.exchange == exchange)
    if symbol is not None:
        query = query.where(table.c.symbol == symbol)
    with store.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
