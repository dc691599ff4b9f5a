"""Offline-store tables and the migration mechanism that creates and upgrades them.

The schema is plain SQLAlchemy metadata (``METADATA``) plus ordered migration steps per
*component*. The ``schema_version`` table records every applied step as
``(component, version, name, applied_at)``; ``apply_migrations`` runs the missing steps of
one component in one transaction under a lock, so upgrading rtml keeps existing rows and two
processes opening the same store cannot both migrate it.

Adding a table in a later release is one new step at the end of ``CORE_MIGRATIONS``::

    predictions = sa.Table("predictions", METADATA, sa.Column(...), ..., info={"time_ns": "time_ns"})
    CORE_MIGRATIONS.append(Migration(3, "prediction log", create_tables(predictions)))

A package that owns its tables (the model registry) keeps its own list under its own
component name and calls ``store.apply_migrations("registry", REGISTRY_MIGRATIONS)``.
Never edit or reorder a released step: add a new one (``add_columns``, ``create_indexes``,
``run_sql``) instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeDecorator

from rtml_core.errors import RtmlError

METADATA = sa.MetaData()
CORE_COMPONENT = "core"
_PG_MIGRATION_LOCK = 0x72746D6C  # "rtml": pg_advisory_xact_lock key for migrations
FEATURE_SET_LOCK = 0x72746D6C + 1  # ... and for registering feature sets


class ExactDecimal(TypeDecorator):
    """A price or size kept exactly: NUMERIC on PostgreSQL, decimal TEXT on SQLite.

    Binds ``Decimal``, ``int`` or decimal strings; refuses floats (they already lost digits).
    Reads back ``Decimal`` equal to what was written.
    """

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric(asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        exact = to_decimal(value)
        return decimal_text(exact) if dialect.name == "sqlite" else exact

    def process_result_value(self, value, dialect):
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(value)


def to_decimal(value: object) -> Decimal:
    """``Decimal`` from a Decimal, int or decimal string; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, Decimal):
        exact = value
    elif isinstance(value, int) and not isinstance(value, bool):
        exact = Decimal(value)
    elif isinstance(value, str):
        try:
            exact = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise TypeError(
            f"{value!r} is a {type(value).__name__}; prices and sizes are stored exactly: "
            "pass Decimal, int or a decimal string"
        )
    if not exact.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return exact


def decimal_text(value: Decimal) -> str:
    """Plain decimal notation (no exponent) that parses back to an equal ``Decimal``."""
    return format(value, "f")


def not_null(type_, *names: str) -> list[sa.Column]:
    """Required columns of one type, in order (the key and value columns of a table)."""
    return [sa.Column(name, type_, nullable=False) for name in names]


# --- tables ------------------------------------------------------------------------------
# ``info={"time_ns": <column>}`` asks ``create_tables`` to add a derived ``time`` column a
# person querying the database can read: timestamptz (microseconds) on PostgreSQL, ISO text
# (milliseconds) on SQLite. rtml itself reads and writes the exact integer nanoseconds.

trades = sa.Table(
    "trades",
    METADATA,
    *not_null(sa.Text, "exchange", "symbol"),
    *not_null(sa.BigInteger, "trade_id", "time_ns"),
    *not_null(ExactDecimal, "price", "size"),
    sa.Column("side", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("exchange", "symbol", "trade_id", name="trades_pkey"),
    sa.CheckConstraint("side IN ('buy', 'sell', 'unknown')", name="trades_side"),
    sa.Index("trades_by_time", "exchange", "symbol", "time_ns"),
    sqlite_with_rowid=False,
    info={"time_ns": "time_ns"},
)

candles = sa.Table(
    "candles",
    METADATA,
    *not_null(sa.Text, "exchange", "symbol", "timeframe"),
    sa.Column("start_ns", sa.BigInteger, nullable=False),
    *not_null(ExactDecimal, "open", "high", "low", "close", "volume"),
    sa.Column("vwap", ExactDecimal, nullable=True),
    sa.Column("trade_count", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "start_ns", name="candles_pkey"),
    sa.CheckConstraint("trade_count >= 0", name="candles_trade_count"),
    sqlite_with_rowid=False,
    info={"time_ns": "start_ns"},
)

feature_sets = sa.Table(
    "feature_sets",
    METADATA,
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False, unique=True),
    *not_null(sa.JSON, "names", "spec"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

schema_version = sa.Table(
    "schema_version",
    sa.MetaData(),  # created by the migration runner itself, never by a step
    sa.Column("component", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("component", "version", name="schema_version_pkey"),
)

FEATURE_KEY_COLUMNS = ("exchange", "symbol", "timeframe", "time_ns")
_FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,47}$")
_RESERVED = frozenset(FEATURE_KEY_COLUMNS) | {"time"}


def validate_feature_names(names: Sequence[str]) -> list[str]:
    """Lower snake case, unique, not a key column: safe as SQL column names."""
    names = list(names)
    if not names:
        raise ValueError("a feature set needs at least one feature")
    for name in names:
        if not isinstance(name, str) or not _FEATURE_NAME.match(name):
            raise ValueError(
                f"feature name {name!r} is not lower snake case ([a-z][a-z0-9_]*, <= 63 chars)"
            )
        if name in _RESERVED:
            raise ValueError(f"feature name {name!r} is reserved for a key column")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"feature names repeat: {', '.join(duplicates)}")
    return names


def feature_table_name(version: str) -> str:
    """``features_<version>`` with the version lower-cased and ``.``/``-`` as ``_``."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(
            f"feature_set_version {version!r} must be 1-48 characters of letters, digits, _ . -"
        )
    return "features_" + re.sub(r"[.\-]", "_", version.lower())


def feature_table(table_name: str, names: Sequence[str]) -> sa.Table:
    """The wide table of one feature-set version: key columns plus one float per feature."""
    return sa.Table(
        table_name,
        sa.MetaData(),
        *not_null(sa.Text, "exchange", "symbol", "timeframe"),
        sa.Column("time_ns", sa.BigInteger, nullable=False),
        *[sa.Column(name, sa.Double, nullable=True) for name in names],
        sa.PrimaryKeyConstraint(*FEATURE_KEY_COLUMNS, name=f"{table_name}_pkey"),
        sqlite_with_rowid=False,
        info={"time_ns": "time_ns"},
    )


# --- migration steps ---------------------------------------------------------------------

Upgrade = Callable[[Connection], None]


@dataclass(frozen=True)
class Migration:
    """Step ``version`` (1, 2, 3, ...) of a component: ``upgrade`` runs inside the transaction."""

    version: int
    name: str
    upgrade: Upgrade


def _time_column_ddl(conn: Connection, table: sa.Table) -> None:
    ns_column = table.info.get("time_ns")
    if ns_column is None or "time" in _column_names(conn, table.name):
        return
    quote = conn.dialect.identifier_preparer.quote
    name, ns = quote(table.name), quote(ns_column)
    if conn.dialect.name == "postgresql":
        # to_timestamp(float8) is immutable; whole microseconds are exact in a float8 and
        # the rounding error stays far below half a microsecond, so this is exact to the us.
        expression = f"to_timestamp(({ns} / 1000)::double precision / 1000000)"
        conn.exec_driver_sql(
            f"ALTER TABLE {name} ADD COLUMN time timestamptz GENERATED ALWAYS AS ({expression}) STORED"
        )
    elif conn.dialect.name == "sqlite":
        expression = f"strftime('%Y-%m-%dT%H:%M:%fZ', {ns} / 1000000000.0, 'unixepoch')"
        conn.exec_driver_sql(
            f"ALTER TABLE {name} ADD COLUMN time TEXT GENERATED ALWAYS AS ({expression}) VIRTUAL"
        )


def _column_names(conn: Connection, table_name: str) -> set[str]:
    return {column["name"] for column in sa.inspect(conn).get_columns(table_name)}


def create_tables(*tables: sa.Table) -> Upgrade:
    """A step that creates ``tables`` (with their indexes and derived ``time`` column)."""

    def upgrade(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)
            _time_column_ddl(conn, table)

    return upgrade


def add_columns(table_name: str, *columns: sa.Column) -> Upgrade:
    """A step that adds ``columns`` to an existing table (skipping ones already there).

    Add the same column to the ``sa.Table`` definition too: a new database gets it from
    ``create_tables`` and this step then finds it present.
    """

    def upgrade(conn: Connection) -> None:
        present = _column_names(conn, table_name)
        quote = conn.dialect.identifier_preparer.quote
        for column in columns:
            if column.name in present:
                continue
            column_type = column.type.compile(dialect=conn.dialect)
            null = "" if column.nullable else " NOT NULL"
            default = ""
            if column.server_default is not None:
                default = f" DEFAULT {column.server_default.arg}"
            conn.exec_driver_sql(
                f"ALTER TABLE {quote(table_name)} ADD COLUMN {quote(column.name)} {column_type}{default}{null}"
            )

    return upgrade


def create_indexes(*indexes: sa.Index) -> Upgrade:
    """A step that creates ``indexes`` if they do not exist."""

    def upgrade(conn: Connection) -> None:
        for index in indexes:
            index.create(conn, checkfirst=True)

    return upgrade


def run_sql(*, postgresql: str | None = None, sqlite: str | None = None) -> Upgrade:
    """A step of hand-written DDL per dialect (``None``: nothing to do on that dialect)."""

    def upgrade(conn: Connection) -> None:
        statement = {"postgresql": postgresql, "sqlite": sqlite}.get(conn.dialect.name)
        if statement:
            conn.exec_driver_sql(statement)

    return upgrade


CORE_MIGRATIONS: list[Migration] = [
    Migration(1, "trades and candles", create_tables(trades, candles)),
    Migration(2, "feature set registry", create_tables(feature_sets)),
]


# --- the runner ----------------------------------------------------------------------------


def _check_steps(component: str, steps: Sequence[Migration]) -> None:
    versions = [step.version for step in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise RtmlError(
            f"migrations of {component!r} must be numbered 1..{len(steps)} in order, got {versions}"
        )


def schema_versions(engine: Engine) -> dict[str, int]:
    """Current version of every component recorded in the store (empty before the first run)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return {}
        rows = conn.execute(
            sa.select(schema_version.c.component, sa.func.max(schema_version.c.version)).group_by(
                schema_version.c.component
            )
        )
        return {component: version for component, version in rows}


def apply_migrations(
    connection_factory: Callable[[], object],
    component: str,
    steps: Sequence[Migration],
    *,
    target: int | None = None,
) -> list[int]:
    """Run the steps of ``component`` above its recorded version, up to ``target`` (default all).

    ``connection_factory()`` returns a context manager giving a ``Connection`` inside a write
    transaction. Returns the versions applied. A store newer than this code is refused.
    """
    _check_steps(component, steps)
    latest = len(steps) if target is None else target
    if not 0 <= latest <= len(steps):
        raise RtmlError(f"no migration {target} for {component!r} (latest is {len(steps)})")
    with connection_factory() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(schema_version.c.version), 0)).where(
                schema_version.c.component == component
            )
        ).scalar_one()
        if current > len(steps):
            raise RtmlError(
                f"the offline store's {component!r} schema is version {current}, newer than this "
                f"rtml knows ({len(steps)}): upgrade rtml"
            )
        applied = []
        for step in steps[current:latest]:
            step.upgrade(conn)
            conn.execute(
                schema_version.insert().values(
                    component=component,
                    version=step.version,
                    name=step.name,
                    applied_at=datetime.now(UTC),
                )
            )
            applied.append(step.version)
        return applied
