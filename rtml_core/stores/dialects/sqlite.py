"""The embedded backend: a SQLite file in WAL mode, upserts by ``executemany``, decimals as text."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, Engine

from rtml_core.stores.dialects import Dialect, Quote, on_conflict
from rtml_core.stores.offline_tables import decimal_text

SQLITE_BUSY_TIMEOUT_S = 30


class SqliteDialect(Dialect):
    name = "sqlite"
    write_options = {"sqlite_begin": "IMMEDIATE"}

    def create_engine(self, url: URL) -> Engine:
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
        _configure(engine)
        return engine

    def insert(self, table: sa.Table):
        return sqlite.insert(table)

    def exact(self, value):
        return decimal_text(value)

    def changed(self, quote: Quote, table: str, values: Sequence[str]) -> str:
        return " OR ".join(f"{quote(table)}.{quote(c)} IS NOT excluded.{quote(c)}" for c in values)

    def upsert(self, conn: Connection, quote: Quote, table: str, key: Sequence[str], values: Sequence[str],
               rows: Iterable[tuple]) -> int:
        columns = [*key, *values]
        column_list = ", ".join(quote(c) for c in columns)
        placeholders = ", ".join("?" for _ in columns)
        conflict = on_conflict(self, quote, table, key, values)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.executemany(f"INSERT INTO {quote(table)} ({column_list}) VALUES ({placeholders}) {conflict}", rows)
            return max(cursor.rowcount, 0)
        finally:
            cursor.close()

    def upsert_matrix(self, conn: Connection, quote: Quote, table: str, key: Sequence[str], names: list[str],
                      market: tuple[str, str, str], times: np.ndarray, values: np.ndarray) -> int:
        cells = values.astype(object)
        cells[np.isnan(values)] = None
        rows = ((*market, t, *row) for t, row in zip(times.tolist(), cells.tolist()))
        return self.upsert(conn, quote, table, key, names, rows)

    def read_matrix(self, conn: Connection, statement: sa.Select, floats: int) -> tuple[np.ndarray, np.ndarray]:
        rows = conn.execute(statement).all()
        times = np.asarray([row[0] for row in rows], dtype=np.int64)
        return times, np.array([row[1:] for row in rows], dtype=np.float64).reshape(len(rows), floats)

    def decimal_columns(self, columns: list[sa.Column]) -> list:
        return [sa.type_coerce(col, sa.Text).label(col.name) for col in columns]

    def decimal_values(self, values: Sequence) -> np.ndarray:
        return np.fromiter((math.nan if v is None else float(v) for v in values), dtype=np.float64, count=len(values))


def _configure(engine: Engine) -> None:
    """WAL, a busy timeout and real transactions (pysqlite's own BEGIN handling is off)."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, DDL included
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
