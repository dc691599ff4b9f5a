"""The offline store on SQLAlchemy: an embedded SQLite file or a real PostgreSQL database.

Every write is one transaction: rows stream into the database as they are validated, and a
bad row (or a crash) anywhere in the batch rolls the whole batch back. Writes are upserts on
the natural keys and count only rows that were inserted or really changed, so importing the
same data twice writes 0 rows.

PostgreSQL path: ``COPY`` into a temporary table, then one
``INSERT ... SELECT DISTINCT ON (key) ... ON CONFLICT DO UPDATE ... WHERE changed``.
SQLite path: ``executemany`` of the same upsert, WAL journal, 30 s busy timeout.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rtml_core.errors import InputError, UnsupportedOperation
from rtml_core.schemas import Candle, Trade
from rtml_core.stores import offline_tables as tables
from rtml_core.stores.offline_base import OfflineStore
from rtml_core.stores.offline_tables import (
    CORE_COMPONENT,
    CORE_MIGRATIONS,
    METADATA,
    Migration,
    decimal_text,
    to_decimal,
)
from rtml_core.timeframes import timeframe_seconds

SQLITE_BUSY_TIMEOUT_S = 30
_INT64 = (-(2**63), 2**63 - 1)
_SIDES = frozenset({"buy", "sell", "unknown"})
_TRADE_KEY = ("exchange", "symbol", "trade_id")
_TRADE_VALUES = ("time_ns", "price", "size", "side")
_CANDLE_KEY = ("exchange", "symbol", "timeframe", "start_ns")
_CANDLE_VALUES = ("open", "high", "low", "close", "volume", "vwap", "trade_count")
_CANDLE_PRICES = ("open", "high", "low", "close")


def open_offline_store(url: str, *, migrate: bool = True) -> SqlOfflineStore:
    """Open (and by default create or upgrade) the offline store at a SQLAlchemy URL.

    ``sqlite:///path/offline.sqlite`` (the file and its folder are created) or
    ``postgresql+psycopg://user@host:5432/db`` (``postgresql://`` means psycopg 3 too).
    """
    parsed = sa.make_url(url)
    if parsed.drivername == "postgres":  # the Heroku-style spelling
        parsed = parsed.set(drivername="postgresql")
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql":
        if driver not in ("psycopg", "postgresql", ""):
            raise UnsupportedOperation(
                f"offline store on PostgreSQL needs psycopg 3 (postgresql+psycopg://), not {driver!r}"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    elif backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        _configure_sqlite(engine)
    else:
        raise UnsupportedOperation(
            f"offline store backend {backend!r} is not supported (sqlite or postgresql)"
        )
    store = SqlOfflineStore(engine)
    if migrate:
        store.migrate()
    return store


def _configure_sqlite(engine: Engine) -> None:
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


class SqlOfflineStore(OfflineStore):
    """Trades, candles and feature rows in SQLite or PostgreSQL (see ``open_offline_store``)."""

    def __init__(self, engine: Engine):
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise UnsupportedOperation(
                f"offline store dialect {engine.dialect.name!r} is not supported"
            )
        self._engine = engine
        self._feature_tables: dict[str, tuple[sa.Table, list[str]]] = {}

    # --- plumbing -------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def metadata(self) -> sa.MetaData:
        """The core tables; other packages may define theirs here and migrate them."""
        return METADATA

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @contextmanager
    def begin_write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite): commits on success, rolls back on error."""
        with self._engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def migrate(self, *, target: int | None = None) -> list[int]:
        """Create or upgrade the core schema (to ``target``, default the latest); keeps all rows."""
        return self.apply_migrations(CORE_COMPONENT, CORE_MIGRATIONS, target=target)

    def apply_migrations(
        self, component: str, steps: Sequence[Migration], *, target: int | None = None
    ) -> list[int]:
        """Run the missing ``steps`` of ``component`` in one transaction; returns versions applied."""
        return tables.apply_migrations(self.begin_write, component, steps, target=target)

    def schema_versions(self) -> dict[str, int]:
        return tables.schema_versions(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def _quote(self, name: str) -> str:
        return self._engine.dialect.identifier_preparer.quote(name)

    # --- generic upsert ---------------------------------------------------------------------

    def _on_conflict(self, table: str, key: Sequence[str], values: Sequence[str]) -> str:
        """``ON CONFLICT (key) DO UPDATE SET ... WHERE <a value changed>``."""
        q = self._quote
        key_list = ", ".join(q(c) for c in key)
        if not values:
            return f"ON CONFLICT ({key_list}) DO NOTHING"
        assignments = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in values)
        if self.dialect == "postgresql":
            old = ", ".join(f"{q(table)}.{q(c)}" for c in values)
            new = ", ".join(f"excluded.{q(c)}" for c in values)
            changed = f"({old}) IS DISTINCT FROM ({new})"
        else:
            changed = " OR ".join(f"{q(table)}.{q(c)} IS NOT excluded.{q(c)}" for c in values)
        return f"ON CONFLICT ({key_list}) DO UPDATE SET {assignments} WHERE {changed}"

    def _upsert(
        self,
        conn: Connection,
        table: str,
        key: Sequence[str],
        values: Sequence[str],
        rows: Iterable[tuple],
    ) -> int:
        """Upsert ``rows`` (tuples of key + value columns) inside ``conn``'s transaction.

        Later rows of the batch win over earlier ones with the same key; unchanged rows are
        not rewritten. Returns the number of rows inserted or changed.
        """
        q = self._quote
        columns = [*key, *values]
        column_list = ", ".join(q(c) for c in columns)
        key_list = ", ".join(q(c) for c in key)
        conflict = self._on_conflict(table, key, values)
        raw = conn.connection.driver_connection
        if self.dialect == "sqlite":
            placeholders = ", ".join("?" for _ in columns)
            cursor = raw.cursor()
            try:
                cursor.executemany(
                    f"INSERT INTO {q(table)} ({column_list}) VALUES ({placeholders}) {conflict}",
                    rows,
                )
                return max(cursor.rowcount, 0)
            finally:
                cursor.close()
        stage = q("_rtml_stage")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")  # sort the batch in memory
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS "
            f"SELECT 0::bigint AS _seq, {column_list} FROM {q(table)} WITH NO DATA"
        )
        with raw.cursor() as cursor:
            with cursor.copy(f"COPY {stage} (_seq, {column_list}) FROM STDIN") as copy:
                write_row = copy.write_row
                for seq, row in enumerate(rows):
                    write_row((seq, *row))
            cursor.execute(
                f"INSERT INTO {q(table)} ({column_list}) "
                f"SELECT DISTINCT ON ({key_list}) {column_list} FROM {stage} "
                f"ORDER BY {key_list}, _seq DESC {conflict}"
            )
            inserted = cursor.rowcount
            cursor.execute(f"DROP TABLE {stage}")
        return max(inserted, 0)

    # --- trades and candles -------------------------------------------------------------------

    def write_trades(self, trades: Iterable[Trade]) -> int:
        with self.begin_write() as conn:
            return self._upsert(conn, "trades", _TRADE_KEY, _TRADE_VALUES, self._trade_rows(trades))

    def write_candles(self, candles: Iterable[Candle]) -> int:
        with self.begin_write() as conn:
            return self._upsert(
                conn, "candles", _CANDLE_KEY, _CANDLE_VALUES, self._candle_rows(candles)
            )

    def replace_candles(
        self,
        candles: Iterable[Candle],
        *,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ns: int,
        end_ns: int,
    ) -> int:
        """Re-materialize one range: delete [start, end) then insert ``candles``, one transaction."""
        _check_range(start_ns, end_ns)
        timeframe_seconds(timeframe)
        c = tables.candles.c
        with self.begin_write() as conn:
            conn.execute(
                tables.candles.delete().where(
                    c.exchange == exchange,
                    c.symbol == symbol,
                    c.timeframe == timeframe,
                    c.start_ns >= start_ns,
                    c.start_ns < end_ns,
                )
            )
            rows = self._candle_rows(candles, only=(exchange, symbol, timeframe, start_ns, end_ns))
            return self._upsert(conn, "candles", _CANDLE_KEY, _CANDLE_VALUES, rows)

    def _trade_rows(self, trades: Iterable[Trade]) -> Iterator[tuple]:
        exact = decimal_text if self.dialect == "sqlite" else _same
        for index, trade in enumerate(trades):
            try:
                price, size = to_decimal(trade.price), to_decimal(trade.size)
                if price <= 0:
                    raise ValueError(f"price {price} is not positive")
                if size < 0:
                    raise ValueError(f"size {size} is negative")
                if trade.side not in _SIDES:
                    raise ValueError(f"side {trade.side!r} is not buy, sell or unknown")
                row = (
                    _name(trade.exchange, "exchange"),
                    _name(trade.symbol, "symbol"),
                    _int64(trade.trade_id, "trade_id"),
                    _int64(trade.time_ns, "time_ns"),
                    exact(price),
                    exact(size),
                    trade.side,
                )
            except (TypeError, ValueError, AttributeError) as error:
                raise InputError(
                    f"trade {index} of the batch ({_describe(trade)}): {error}"
                ) from None
            yield row

    def _candle_rows(
        self, candles: Iterable[Candle], only: tuple[str, str, str, int, int] | None = None
    ) -> Iterator[tuple]:
        exact = decimal_text if self.dialect == "sqlite" else _same
        for index, candle in enumerate(candles):
            try:
                prices = [to_decimal(getattr(candle, name)) for name in _CANDLE_PRICES]
                if min(prices) <= 0:
                    raise ValueError(f"prices {[str(p) for p in prices]} must be positive")
                volume = to_decimal(candle.volume)
                if volume < 0:
                    raise ValueError(f"volume {volume} is negative")
                vwap = None if candle.vwap is None else exact(to_decimal(candle.vwap))
                trade_count = _int64(candle.trade_count, "trade_count")
                if trade_count < 0:
                    raise ValueError(f"trade_count {trade_count} is negative")
                timeframe_seconds(candle.timeframe)
                key = (
                    _name(candle.exchange, "exchange"),
                    _name(candle.symbol, "symbol"),
                    candle.timeframe,
                    _int64(candle.start_ns, "start_ns"),
                )
                if only is not None:
                    if key[:3] != only[:3]:
                        raise ValueError(f"candle of {key[:3]} in a replace of {only[:3]}")
                    if not only[3] <= key[3] < only[4]:
                        raise ValueError(
                            f"start_ns {key[3]} is outside the replaced range [{only[3]}, {only[4]})"
                        )
                row = (*key, *(exact(p) for p in prices), exact(volume), vwap, trade_count)
            except (TypeError, ValueError, AttributeError, InputError) as error:
                raise InputError(
                    f"candle {index} of the batch ({_describe(candle)}): {error}"
                ) from None
            yield row

    def read_trades(
        self,
        exchange: str,
        symbol: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        exact: bool = False,
    ) -> pd.DataFrame:
        c = tables.trades.c
        statement = (
            sa.select(
                c.time_ns, c.trade_id, *self._decimal_columns([c.price, c.size], exact), c.side
            )
            .where(
                c.exchange == exchange, c.symbol == symbol, *_in_range(c.time_ns, start_ns, end_ns)
            )
            .order_by(c.time_ns, c.trade_id)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(statement).all()
        columns = _columns(rows, 5)
        return pd.DataFrame(
            {
                "time": _ns_to_time(columns[0]),
                "trade_id": np.asarray(columns[1], dtype=np.int64),
                "price": self._decimal_values(columns[2], exact),
                "size": self._decimal_values(columns[3], exact),
                "side": pd.Series(columns[4], dtype="str"),
            }
        )

    def read_candles(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        exact: bool = False,
    ) -> pd.DataFrame:
        c = tables.candles.c
        decimals = [c.open, c.high, c.low, c.close, c.volume, c.vwap]
        statement = (
            sa.select(c.start_ns, *self._decimal_columns(decimals, exact), c.trade_count)
            .where(
                c.exchange == exchange,
                c.symbol == symbol,
                c.timeframe == timeframe,
                *_in_range(c.start_ns, start_ns, end_ns),
            )
            .order_by(c.start_ns)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(statement).all()
        columns = _columns(rows, 8)
        frame = {"time": _ns_to_time(columns[0])}
        for name, values in zip(("open", "high", "low", "close", "volume", "vwap"), columns[1:7]):
            frame[name] = self._decimal_values(values, exact)
        frame["trade_count"] = np.asarray(columns[7], dtype=np.int64)
        return pd.DataFrame(frame)

    def _decimal_columns(self, columns: list[sa.Column], exact: bool) -> list:
        if exact:
            return columns
        if self.dialect == "postgresql":  # numeric -> float8 is correctly rounded (strtod)
            return [
                sa.cast(sa.type_coerce(col, sa.Numeric), sa.Double).label(col.name)
                for col in columns
            ]
        return [sa.type_coerce(col, sa.Text).label(col.name) for col in columns]

    def _decimal_values(self, values: Sequence, exact: bool) -> pd.Series | np.ndarray:
        if exact:
            return pd.Series(list(values), dtype=object)
        if self.dialect == "postgresql":
            return np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
        return np.fromiter(
            (math.nan if v is None else float(v) for v in values),
            dtype=np.float64,
            count=len(values),
        )

    def trade_ids(
        self, exchange: str, symbol: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> np.ndarray:
        """Stored trade ids of a market in [start, end), ascending (for gap checks on id sequences)."""
        c = tables.trades.c
        statement = (
            sa.select(c.trade_id)
            .where(
                c.exchange == exchange, c.symbol == symbol, *_in_range(c.time_ns, start_ns, end_ns)
            )
            .order_by(c.trade_id)
        )
        with self._engine.connect() as conn:
            return np.asarray(conn.execute(statement).scalars().all(), dtype=np.int64)

    # --- feature rows -------------------------------------------------------------------------

    def register_feature_set(self, version: str, names: list[str], spec: dict) -> None:
        """Record ``version`` with its ordered feature ``names`` and ``spec``; create its table.

        Registering the same version again with the same names is a no-op; with other names
        it is an error (a version is a hash of names and parameters).
        """
        try:
            names = tables.validate_feature_names(names)
            table_name = tables.feature_table_name(version)
        except ValueError as error:
            raise InputError(str(error)) from None
        fs = tables.feature_sets
        with self.begin_write() as conn:
            if self.dialect == "postgresql":  # two writers registering at once: one creates
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": tables.FEATURE_SET_LOCK}
                )
            existing = conn.execute(
                sa.select(fs.c.names).where(fs.c.version == version)
            ).scalar_one_or_none()
            if existing is not None:
                if list(existing) != names:
                    raise InputError(
                        f"feature_set_version {version!r} is registered with features {list(existing)}, not {names}"
                    )
                return
            clash = conn.execute(
                sa.select(fs.c.version).where(fs.c.table_name == table_name)
            ).scalar_one_or_none()
            if clash is not None:
                raise InputError(
                    f"feature_set_version {version!r} maps to table {table_name} already used by {clash!r}"
                )
            table = tables.feature_table(table_name, names)
            tables.create_tables(table)(conn)
            conn.execute(
                fs.insert().values(
                    version=version,
                    table_name=table_name,
                    names=names,
                    spec=spec,
                    created_at=datetime.now(UTC),
                )
            )
        self._feature_tables[version] = (table, names)

    def feature_set_versions(self) -> list[dict]:
        fs = tables.feature_sets
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(fs.c.version, fs.c.names, fs.c.spec, fs.c.created_at).order_by(
                    fs.c.created_at, fs.c.version
                )
            ).all()
        return [
            {"version": v, "names": list(n), "spec": s, "created_at": _aware(t)}
            for v, n, s, t in rows
        ]

    def _feature_table(self, version: str) -> tuple[sa.Table, list[str]]:
        if version not in self._feature_tables:
            fs = tables.feature_sets
            with self._engine.connect() as conn:
                row = conn.execute(
                    sa.select(fs.c.table_name, fs.c.names).where(fs.c.version == version)
                ).first()
            if row is None:
                raise InputError(
                    f"feature_set_version {version!r} is not registered (register_feature_set first)"
                )
            self._feature_tables[version] = (
                tables.feature_table(row.table_name, row.names),
                list(row.names),
            )
        return self._feature_tables[version]

    def write_features(
        self,
        frame: pd.DataFrame,
        *,
        exchange: str,
        symbol: str,
        timeframe: str,
        feature_set_version: str,
    ) -> int:
        table, names = self._feature_table(feature_set_version)
        times, values = _feature_matrix(frame, names, exchange, symbol, timeframe)
        with self.begin_write() as conn:
            return self._upsert_features(
                conn, table, names, (exchange, symbol, timeframe), times, values
            )

    def _upsert_features(
        self,
        conn: Connection,
        table: sa.Table,
        names: list[str],
        market: tuple[str, str, str],
        times: np.ndarray,
        values: np.ndarray,
    ) -> int:
        """Upsert a float matrix; on PostgreSQL through binary COPY built by numpy."""
        if self.dialect == "sqlite":
            cells = values.astype(object)
            cells[np.isnan(values)] = None
            rows = ((*market, t, *row) for t, row in zip(times.tolist(), cells.tolist()))
            return self._upsert(conn, table.name, tables.FEATURE_KEY_COLUMNS, names, rows)
        q = self._quote
        features = ", ".join(q(name) for name in names)
        stage = q("_rtml_stage")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS "
            f"SELECT 0::bigint AS _seq, time_ns, {features} FROM {q(table.name)} WITH NO DATA"
        )
        key = ", ".join(q(c) for c in tables.FEATURE_KEY_COLUMNS)
        conflict = self._on_conflict(table.name, tables.FEATURE_KEY_COLUMNS, names)
        nan_as_null = ", ".join(f"NULLIF({q(n)}, 'NaN')" for n in names)
        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy(f"COPY {stage} FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(_pg_binary_copy(times, values))
            cursor.execute(
                f"INSERT INTO {q(table.name)} ({key}, {features}) "
                f"SELECT %s, %s, %s, time_ns, {nan_as_null} "
                f"FROM (SELECT DISTINCT ON (time_ns) * FROM {stage} ORDER BY time_ns, _seq DESC) s "
                f"{conflict}",
                market,
            )
            written = cursor.rowcount
            cursor.execute(f"DROP TABLE {stage}")
        return max(written, 0)

    def replace_features(
        self,
        frame: pd.DataFrame,
        *,
        exchange: str,
        symbol: str,
        timeframe: str,
        feature_set_version: str,
        start_ns: int,
        end_ns: int,
    ) -> int:
        """Re-materialize one range of one version: delete [start, end), insert ``frame``."""
        _check_range(start_ns, end_ns)
        table, names = self._feature_table(feature_set_version)
        times, values = _feature_matrix(
            frame, names, exchange, symbol, timeframe, start_ns=start_ns, end_ns=end_ns
        )
        c = table.c
        with self.begin_write() as conn:
            conn.execute(
                table.delete().where(
                    c.exchange == exchange,
                    c.symbol == symbol,
                    c.timeframe == timeframe,
                    c.time_ns >= start_ns,
                    c.time_ns < end_ns,
                )
            )
            return self._upsert_features(
                conn, table, names, (exchange, symbol, timeframe), times, values
            )

    def read_features(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        feature_set_version: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        table, names = self._feature_table(feature_set_version)
        c = table.c
        statement = (
            sa.select(c.time_ns, *(c[name] for name in names))
            .where(
                c.exchange == exchange,
                c.symbol == symbol,
                c.timeframe == timeframe,
                *_in_range(c.time_ns, start_ns, end_ns),
            )
            .order_by(c.time_ns)
        )
        with self._engine.connect() as conn:
            if self.dialect == "postgresql":
                times, values = _pg_read_matrix(conn, statement, len(names))
            else:
                rows = conn.execute(statement).all()
                times = np.asarray([row[0] for row in rows], dtype=np.int64)
                values = np.array([row[1:] for row in rows], dtype=np.float64).reshape(
                    len(rows), len(names)
                )
        frame = {"time": _ns_to_time(times)}
        for position, name in enumerate(names):
            frame[name] = values[:, position]
        return pd.DataFrame(frame)

    # --- inventory ----------------------------------------------------------------------------

    def markets(self) -> pd.DataFrame:
        """One row per stored series: kind (trades/candles/features), its keys, first, last, rows."""
        t, c, fs = tables.trades, tables.candles, tables.feature_sets
        records: list[tuple] = []
        with self._engine.connect() as conn:
            for exchange, symbol, first, last, count in conn.execute(
                sa.select(
                    t.c.exchange,
                    t.c.symbol,
                    sa.func.min(t.c.time_ns),
                    sa.func.max(t.c.time_ns),
                    sa.func.count(),
                ).group_by(t.c.exchange, t.c.symbol)
            ):
                records.append(("trades", exchange, symbol, None, None, first, last, count))
            for exchange, symbol, timeframe, first, last, count in conn.execute(
                sa.select(
                    c.c.exchange,
                    c.c.symbol,
                    c.c.timeframe,
                    sa.func.min(c.c.start_ns),
                    sa.func.max(c.c.start_ns),
                    sa.func.count(),
                ).group_by(c.c.exchange, c.c.symbol, c.c.timeframe)
            ):
                records.append(("candles", exchange, symbol, timeframe, None, first, last, count))
            has_feature_sets = sa.inspect(conn).has_table("feature_sets")
            registered = (
                conn.execute(sa.select(fs.c.version, fs.c.table_name, fs.c.names)).all()
                if has_feature_sets
                else []
            )
            for version, table_name, names in registered:
                ft = tables.feature_table(table_name, names)
                for exchange, symbol, timeframe, first, last, count in conn.execute(
                    sa.select(
                        ft.c.exchange,
                        ft.c.symbol,
                        ft.c.timeframe,
                        sa.func.min(ft.c.time_ns),
                        sa.func.max(ft.c.time_ns),
                        sa.func.count(),
                    ).group_by(ft.c.exchange, ft.c.symbol, ft.c.timeframe)
                ):
                    records.append(
                        ("features", exchange, symbol, timeframe, version, first, last, count)
                    )
        frame = pd.DataFrame(
            records,
            columns=[
                "kind",
                "exchange",
                "symbol",
                "timeframe",
                "feature_set_version",
                "first",
                "last",
                "rows",
            ],
        )
        frame["first"] = _ns_to_time(frame["first"].to_numpy(dtype=np.int64, na_value=0))
        frame["last"] = _ns_to_time(frame["last"].to_numpy(dtype=np.int64, na_value=0))
        frame["rows"] = frame["rows"].astype(np.int64)
        return frame.sort_values(
            ["kind", "exchange", "symbol", "timeframe", "feature_set_version"],
            na_position="first",
            ignore_index=True,
        )


# --- pure helpers -------------------------------------------------------------------------------


def _same(value):
    return value


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} {value!r} must be a non-empty string")
    return value


def _int64(value: object, what: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} {value!r} is not an integer") from None
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError(f"{what} {number} does not fit in 64 bits")
    return number


def _describe(item: object) -> str:
    keys = ("exchange", "symbol", "timeframe", "trade_id", "start_ns", "time_ns")
    return (
        ", ".join(f"{k}={getattr(item, k)!r}" for k in keys if hasattr(item, k)) or repr(item)[:80]
    )


def _check_range(start_ns: int, end_ns: int) -> None:
    if not isinstance(start_ns, int) or not isinstance(end_ns, int) or start_ns >= end_ns:
        raise InputError(f"range [{start_ns}, {end_ns}) is empty or not integer nanoseconds")


def _in_range(column, start_ns: int | None, end_ns: int | None) -> list:
    clauses = []
    if start_ns is not None:
        clauses.append(column >= start_ns)
    if end_ns is not None:
        clauses.append(column < end_ns)
    return clauses


def _columns(rows: Sequence[tuple], width: int) -> list[tuple]:
    return list(zip(*rows)) if rows else [()] * width


def _ns_to_time(ns: Sequence[int] | np.ndarray) -> pd.DatetimeIndex:
    """Integer nanoseconds -> ``datetime64[ns, UTC]``."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("datetime64[ns]")).tz_localize(
        "UTC"
    )


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def frame_times_ns(frame: pd.DataFrame) -> np.ndarray:
    """The ``time`` column of a feature frame as int64 ns: tz-aware datetimes or integer ns."""
    if "time" not in frame.columns:
        raise InputError("the frame has no 'time' column")
    time = frame["time"]
    if pd.api.types.is_integer_dtype(time.dtype):
        return time.to_numpy(dtype=np.int64)
    if not isinstance(time.dtype, pd.DatetimeTZDtype):
        raise InputError(
            f"'time' must be timezone-aware datetimes (UTC) or integer ns, not {time.dtype}"
        )
    if time.isna().any():
        raise InputError(
            f"'time' is missing on row {int(np.flatnonzero(time.isna().to_numpy())[0])}"
        )
    return pd.DatetimeIndex(time).as_unit("ns").asi8


def _feature_matrix(
    frame: pd.DataFrame,
    names: list[str],
    exchange: str,
    symbol: str,
    timeframe: str,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a feature frame; return its times (int64 ns) and values (float64, rows x names)."""
    try:
        _name(exchange, "exchange"), _name(symbol, "symbol")
    except ValueError as error:
        raise InputError(str(error)) from None
    timeframe_seconds(timeframe)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise InputError(f"the frame lacks feature columns {missing}")
    times = frame_times_ns(frame)
    if start_ns is not None and len(times):
        outside = np.flatnonzero((times < start_ns) | (times >= end_ns))
        if len(outside):
            raise InputError(
                f"row {int(outside[0])}: time {int(times[outside[0]])} is outside the replaced range [{start_ns}, {end_ns})"
            )
    values = np.empty((len(frame), len(names)), dtype=np.float64)
    for position, name in enumerate(names):
        try:
            values[:, position] = pd.to_numeric(frame[name], errors="raise").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        except (TypeError, ValueError) as error:
            raise InputError(f"feature column {name!r} is not numeric: {error}") from None
    return times, values


_PG_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PG_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def _pg_row_dtype(floats: int, *, with_seq: bool) -> np.dtype:
    """One row of PostgreSQL binary COPY: field count, then (length, value) per field."""
    fields = [("count", ">i2")]
    if with_seq:
        fields += [("seq_len", ">i4"), ("seq", ">i8")]
    fields += [("time_len", ">i4"), ("time_ns", ">i8")]
    for position in range(floats):
        fields += [(f"len_{position}", ">i4"), (f"v_{position}", ">f8")]
    return np.dtype(fields)


def _pg_binary_copy(times: np.ndarray, values: np.ndarray) -> bytes:
    """``_seq, time_ns, floats...`` rows as a PostgreSQL binary COPY stream (NaN stays NaN)."""
    rows, floats = values.shape
    data = np.empty(rows, dtype=_pg_row_dtype(floats, with_seq=True))
    data["count"] = 2 + floats
    data["seq_len"] = 8
    data["seq"] = np.arange(rows)
    data["time_len"] = 8
    data["time_ns"] = times
    for position in range(floats):
        data[f"len_{position}"] = 8
        data[f"v_{position}"] = values[:, position]
    return _PG_COPY_HEADER + data.tobytes() + _PG_COPY_TRAILER


def _pg_read_matrix(
    conn: Connection, statement: sa.Select, floats: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run a ``time_ns, floats...`` select through binary COPY (NULL read as NaN)."""
    selected = statement.subquery()
    columns = list(selected.c)
    no_nulls = sa.select(
        columns[0],
        *(sa.func.coalesce(c, sa.literal_column("'NaN'::float8")) for c in columns[1:]),
    ).order_by(columns[0])
    compiled = no_nulls.compile(dialect=conn.dialect)  # pyformat: %(name)s placeholders
    buffer = bytearray()
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(
            f"COPY ({compiled.string}) TO STDOUT (FORMAT BINARY)", compiled.params
        ) as copy:
            for chunk in copy:
                buffer += chunk
    body = memoryview(buffer)[len(_PG_COPY_HEADER) : len(buffer) - len(_PG_COPY_TRAILER)]
    data = np.frombuffer(body, dtype=_pg_row_dtype(floats, with_seq=False))
    values = np.empty((len(data), floats), dtype=np.float64)
    for position in range(floats):
        values[:, position] = data[f"v_{position}"]
    return data["time_ns"].astype(np.int64), values
