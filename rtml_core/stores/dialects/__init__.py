"""What differs between the offline store's backends, one small strategy per SQL dialect.

``SqlOfflineStore`` asks its ``Dialect`` for everything backend-specific (engine options,
the upsert path, decimal reads, the dialect's ``INSERT`` construct) and holds no
``if dialect == ...`` of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.sql.dml import Insert

from rtml_core.errors import UnsupportedOperation

Quote = Callable[[str], str]


class Dialect(ABC):
    """One backend's SQL: how to connect, upsert, lock and read decimals and float matrices."""

    name: str
    write_options: dict = {}  # execution options of a write transaction

    @abstractmethod
    def create_engine(self, url: URL) -> Engine:
        """A configured engine for ``url`` (already checked to be this dialect)."""

    @abstractmethod
    def insert(self, table: sa.Table) -> Insert:
        """The dialect's ``INSERT`` (with ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""

    @abstractmethod
    def exact(self, value):
        """A ``Decimal`` as this backend binds it in raw upserts."""

    @abstractmethod
    def changed(self, quote: Quote, table: str, values: Sequence[str]) -> str:
        """SQL true when a conflicting row's ``values`` differ from ``excluded``."""

    @abstractmethod
    def upsert(
        self, conn: Connection, quote: Quote, table: str, key: Sequence[str], values: Sequence[str],
        rows: Iterable[tuple],
    ) -> int:
        """Upsert tuples of key + value columns (later rows win); rows inserted or changed."""

    @abstractmethod
    def upsert_matrix(
        self, conn: Connection, quote: Quote, table: str, key: Sequence[str], names: list[str],
        market: tuple[str, str, str], times: np.ndarray, values: np.ndarray,
    ) -> int:
        """Upsert a float matrix of one market (NaN stored as NULL); rows inserted or changed."""

    @abstractmethod
    def read_matrix(self, conn: Connection, statement: sa.Select, floats: int) -> tuple[np.ndarray, np.ndarray]:
        """Run a ``time_ns, floats...`` select: int64 times and a float64 matrix (NULL as NaN)."""

    @abstractmethod
    def decimal_columns(self, columns: list[sa.Column]) -> list:
        """Select expressions reading exact decimal columns as floats."""

    @abstractmethod
    def decimal_values(self, values: Sequence) -> np.ndarray:
        """Float64 values of what ``decimal_columns`` returned (None as NaN)."""

    def lock_feature_sets(self, conn: Connection) -> None:
        """Serialise feature-set registration inside ``conn``'s transaction (default: nothing to do)."""


def on_conflict(dialect: Dialect, quote: Quote, table: str, key: Sequence[str], values: Sequence[str]) -> str:
    """``ON CONFLICT (key) DO UPDATE SET ... WHERE <a value changed>`` (or ``DO NOTHING``)."""
    key_list = ", ".join(quote(c) for c in key)
    if not values:
        return f"ON CONFLICT ({key_list}) DO NOTHING"
    assignments = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in values)
    return f"ON CONFLICT ({key_list}) DO UPDATE SET {assignments} WHERE {dialect.changed(quote, table, values)}"


def dialect_for(name: str) -> Dialect:
    """The strategy of a SQLAlchemy backend name (``sqlite`` or ``postgresql``)."""
    if name == "sqlite":
        from rtml_core.stores.dialects.sqlite import SqliteDialect

        return SqliteDialect()
    if name == "postgresql":
        from rtml_core.stores.dialects.postgresql import PostgresDialect

        return PostgresDialect()
    raise UnsupportedOperation(f"offline store backend {name!r} is not supported (sqlite or postgresql)")
