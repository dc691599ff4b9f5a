"""The offline store on SQLAlchemy: an embedded SQLite file or a real PostgreSQL database.

Every write is one transaction: rows stream into the database as they are validated, and a
bad row (or a crash) anywhere in the batch rolls the whole batch back. Writes are upserts on
the natural keys and count only rows that were inserted or really changed, so importing the
same data twice writes 0 rows.

What differs between SQLite and PostgreSQL lives in ``stores/dialects/`` (one strategy per
backend); row validation in ``stores/rows.py``; the binary COPY codec in ``stores/pg_copy.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.dml import Insert

from rtml_core.errors import InputError, UnsupportedOperation
from rtml_core.schemas import Candle, Trade
from rtml_core.stores import offline_tables as tables
from rtml_core.stores import rows
from rtml_core.stores.dialects import dialect_for
from rtml_core.stores.offline_base import OfflineStore
from rtml_core.stores.offline_tables import CORE_COMPONENT, CORE_MIGRATIONS, METADATA, Migration
from rtml_core.timeframes import timeframe_seconds

_TRADE_KEY = ("exchange", "symbol", "trade_id")
_TRADE_VALUES = ("time_ns", "price", "size", "side")
_CANDLE_KEY = ("exchange", "symbol", "timeframe", "start_ns")
_CANDLE_VALUES = ("open", "high", "low", "close", "volume", "vwap", "trade_count")


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
    store = SqlOfflineStore(dialect_for(backend).create_engine(parsed))
    if migrate:
        store.migrate()
    return store


class SqlOfflineStore(OfflineStore):
    """Trades, candles and feature rows in SQLite or PostgreSQL (see ``open_offline_store``)."""

    def __init__(self, engine: Engine):
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise UnsupportedOperation(
                f"offline store dialect {engine.dialect.name!r} is not supported"
            )
        self._engine = engine
        self._sql = dialect_for(engine.dialect.name)
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
        return self._sql.name

    @contextmanager
    def begin_write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite): commits on success, rolls back on error."""
        with self._engine.connect() as conn:
            if self._sql.write_options:
                conn.execution_options(**self._sql.write_options)
            with conn.begin():
                yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (each statement sees committed rows)."""
        with self._engine.connect() as conn:
            yield conn

    def insert(self, table: sa.Table) -> Insert:
        """The dialect's ``INSERT`` of ``table``, with ``on_conflict_do_nothing/do_update``."""
        return self._sql.insert(table)

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
        return self._sql.upsert(conn, self._quote, table, key, values, rows)

    # --- trades and candles -------------------------------------------------------------------

    def write_trades(self, trades: Iterable[Trade]) -> int:
        with self.begin_write() as conn:
            return self._upsert(conn, "trades", _TRADE_KEY, _TRADE_VALUES, rows.trade_rows(trades, self._sql.exact))

    def write_candles(self, candles: Iterable[Candle]) -> int:
        with self.begin_write() as conn:
            return self._upsert(
                conn, "candles", _CANDLE_KEY, _CANDLE_VALUES, rows.candle_rows(candles, self._sql.exact)
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
        rows.check_range(start_ns, end_ns)
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
            valid = rows.candle_rows(candles, self._sql.exact, only=(exchange, symbol, timeframe, start_ns, end_ns))
            return self._upsert(conn, "candles", _CANDLE_KEY, _CANDLE_VALUES, valid)

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
        return columns if exact else self._sql.decimal_columns(columns)

    def _decimal_values(self, values: Sequence, exact: bool) -> pd.Series | np.ndarray:
        return pd.Series(list(values), dtype=object) if exact else self._sql.decimal_values(values)

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
            self._sql.lock_feature_sets(conn)
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
        times, values = rows.feature_matrix(frame, names, exchange, symbol, timeframe)
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
        """Upsert a float matrix (on PostgreSQL through binary COPY built by numpy)."""
        return self._sql.upsert_matrix(
            conn, self._quote, table.name, tables.FEATURE_KEY_COLUMNS, names, market, times, values
        )

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
        rows.check_range(start_ns, end_ns)
        table, names = self._feature_table(feature_set_version)
        times, values = rows.feature_matrix(
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
            times, values = self._sql.read_matrix(conn, statement, len(names))
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
            for exchange, symbol, first, last, count in _series(conn, [t.c.exchange, t.c.symbol], t.c.time_ns):
                records.append(("trades", exchange, symbol, None, None, first, last, count))
            for exchange, symbol, timeframe, first, last, count in _series(
                conn, [c.c.exchange, c.c.symbol, c.c.timeframe], c.c.start_ns
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
                for exchange, symbol, timeframe, first, last, count in _series(
                    conn, [ft.c.exchange, ft.c.symbol, ft.c.timeframe], ft.c.time_ns
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


def _series(conn: Connection, keys: list[sa.Column], time: sa.Column):
    """One row per stored series: its ``keys``, then first and last ``time`` and the row count."""
    return conn.execute(
        sa.select(*keys, sa.func.min(time), sa.func.max(time), sa.func.count()).group_by(*keys)
    )


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
