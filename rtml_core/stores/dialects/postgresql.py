"""The real backend: PostgreSQL through psycopg 3, upserts staged by ``COPY``, decimals as NUMERIC."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine

from rtml_core.stores import offline_tables as tables
from rtml_core.stores import pg_copy
from rtml_core.stores.dialects import Dialect, Quote, on_conflict

_STAGE = "_rtml_stage"


class PostgresDialect(Dialect):
    name = "postgresql"

    def create_engine(self, url: URL) -> Engine:
        return sa.create_engine(url, pool_pre_ping=True)

    def insert(self, table: sa.Table):
        return postgresql.insert(table)

    def exact(self, value):
        return value

    def changed(self, quote: Quote, table: str, values: Sequence[str]) -> str:
        old = ", ".join(f"{quote(table)}.{quote(c)}" for c in values)
        new = ", ".join(f"excluded.{quote(c)}" for c in values)
        return f"({old}) IS DISTINCT FROM ({new})"

    def upsert(self, conn: Connection, quote: Quote, table: str, key: Sequence[str], values: Sequence[str],
               rows: Iterable[tuple]) -> int:
        """``COPY`` into a temporary table, then one ``INSERT ... SELECT DISTINCT ON (key)``."""
        column_list = ", ".join(quote(c) for c in [*key, *values])
        key_list = ", ".join(quote(c) for c in key)
        stage = _stage(conn, quote, table, column_list)
        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy(f"COPY {stage} (_seq, {column_list}) FROM STDIN") as copy:
                write_row = copy.write_row
                for seq, row in enumerate(rows):
                    write_row((seq, *row))
            cursor.execute(
                f"INSERT INTO {quote(table)} ({column_list}) "
                f"SELECT DISTINCT ON ({key_list}) {column_list} FROM {stage} "
                f"ORDER BY {key_list}, _seq DESC {on_conflict(self, quote, table, key, values)}"
            )
            inserted = cursor.rowcount
            cursor.execute(f"DROP TABLE {stage}")
        return max(inserted, 0)

    def upsert_matrix(self, conn: Connection, quote: Quote, table: str, key: Sequence[str], names: list[str],
                      market: tuple[str, str, str], times: np.ndarray, values: np.ndarray) -> int:
        """Binary ``COPY`` built by numpy, then one ``INSERT ... SELECT DISTINCT ON (time_ns)``."""
        features = ", ".join(quote(name) for name in names)
        stage = _stage(conn, quote, table, f"time_ns, {features}")
        key_list = ", ".join(quote(c) for c in key)
        nan_as_null = ", ".join(f"NULLIF({quote(n)}, 'NaN')" for n in names)
        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy(f"COPY {stage} FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(pg_copy.encode_matrix(times, values))
            cursor.execute(
                f"INSERT INTO {quote(table)} ({key_list}, {features}) "
                f"SELECT %s, %s, %s, time_ns, {nan_as_null} "
                f"FROM (SELECT DISTINCT ON (time_ns) * FROM {stage} ORDER BY time_ns, _seq DESC) s "
                f"{on_conflict(self, quote, table, key, names)}",
                market,
            )
            written = cursor.rowcount
            cursor.execute(f"DROP TABLE {stage}")
        return max(written, 0)

    def read_matrix(self, conn: Connection, statement: sa.Select, floats: int) -> tuple[np.ndarray, np.ndarray]:
        return pg_copy.read_matrix(conn, statement, floats)

    def decimal_columns(self, columns: list[sa.Column]) -> list:
        # numeric -> float8 is correctly rounded (strtod)
        return [sa.cast(sa.type_coerce(col, sa.Numeric), sa.Double).label(col.name) for col in columns]

    def decimal_values(self, values: Sequence) -> np.ndarray:
        return np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)

    def lock_feature_sets(self, conn: Connection) -> None:
        """Two writers registering at once: one creates the table, the other sees it."""
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": tables.FEATURE_SET_LOCK})


def _stage(conn: Connection, quote: Quote, table: str, column_list: str) -> str:
    """A temporary ``_seq, columns...`` table shaped like ``table``, dropped at commit."""
    stage = quote(_STAGE)
    conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")  # sort the batch in memory
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS "
        f"SELECT 0::bigint AS _seq, {column_list} FROM {quote(table)} WITH NO DATA"
    )
    return stage
