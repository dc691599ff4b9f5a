"""The embedded online store: one SQLite file in WAL mode (one writer process, many readers).

Tables (all keyed by exchange, symbol[, timeframe]):

    latest   the newest row per market and timeframe (values as row JSON)
    history  the newest ``history`` rows per market and timeframe, one per event time
    live     live microstructure values per market (JSON object, merged like a Redis hash)

A batch is one ``BEGIN IMMEDIATE`` transaction, so readers (other connections, other
processes) see all of it or none of it. ``subscribe`` polls ``PRAGMA data_version`` (a counter
SQLite bumps when another connection commits) every 50 ms and reads only when it moved.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from rtml_core.errors import InputError
from rtml_core.schemas import FeatureRow
from rtml_core.stores.online_base import (
    LiveValues,
    MarketFeed,
    MarketSnapshot,
    OnlineStore,
    OnlineStoreUnavailable,
    Subscription,
    check_key_part,
    check_live,
    check_row,
    decode_row_json,
    encode_row_json,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    exchange TEXT NOT NULL, symbol TEXT NOT NULL, timeframe TEXT NOT NULL,
    event_time_ns INTEGER NOT NULL, written_at_ns INTEGER NOT NULL, row_json BLOB NOT NULL,
    PRIMARY KEY (exchange, symbol, timeframe)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    exchange TEXT NOT NULL, symbol TEXT NOT NULL, timeframe TEXT NOT NULL,
    event_time_ns INTEGER NOT NULL, row_json BLOB NOT NULL,
    PRIMARY KEY (exchange, symbol, timeframe, event_time_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live (
    exchange TEXT NOT NULL, symbol TEXT NOT NULL,
    time_ns INTEGER NOT NULL, written_at_ns INTEGER NOT NULL, values_json BLOB NOT NULL,
    PRIMARY KEY (exchange, symbol)
) WITHOUT ROWID;
"""

_UPSERT_LATEST = """
INSERT INTO latest (exchange, symbol, timeframe, event_time_ns, written_at_ns, row_json)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (exchange, symbol, timeframe) DO UPDATE SET
    event_time_ns = excluded.event_time_ns, written_at_ns = excluded.written_at_ns,
    row_json = excluded.row_json
WHERE excluded.event_time_ns >= latest.event_time_ns
"""
_UPSERT_HISTORY = "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?)"
_TRIM_HISTORY = """
DELETE FROM history WHERE exchange = ?1 AND symbol = ?2 AND timeframe = ?3 AND event_time_ns < (
    SELECT event_time_ns FROM history WHERE exchange = ?1 AND symbol = ?2 AND timeframe = ?3
    ORDER BY event_time_ns DESC LIMIT 1 OFFSET ?4)
"""

# Live values keep NaN faithfully: msgpack carries IEEE floats as they are.
_live_encoder = msgspec.msgpack.Encoder()
_live_decoder = msgspec.msgpack.Decoder(dict[str, float])

POLL_INTERVAL_S = 0.05


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/file`` or ``sqlite:////absolute/file`` -> the file's path."""
    if not url.startswith("sqlite:///"):
        raise InputError(f"online store URL {url!r} is not sqlite:///path")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        raise InputError(f"online store URL {url!r} must name a file (readers in other processes share it)")
    return Path(path)


def _connect(path: Path, *, wal: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    if wal:  # WAL is a property of the file; readers need not set it again
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteOnlineStore(OnlineStore):
    def __init__(
        self,
        path: str | Path,
        history: int = 100,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if history < 1:
            raise InputError(f"online history length must be at least 1, got {history}")
        self.path = Path(path)
        self.history = history
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = _connect(self.path)
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise OnlineStoreUnavailable(f"SQLite online store {self.path} cannot be opened: {error}") from error

    # writes ---------------------------------------------------------------------------------
    def write_batch(self, rows: Sequence[FeatureRow], live: Sequence[LiveValues] = ()) -> None:
        if not rows and not live:
            return
        now = self._clock_ns()
        for row in rows:
            check_row(row, now)
        for values in live:
            check_live(values)
        encoded = [(row, encode_row_json(row, now)) for row in sorted(rows, key=lambda r: r.event_time_ns)]
        markets = {(row.exchange, row.symbol, row.timeframe) for row in rows}
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        _UPSERT_HISTORY,
                        [(r.exchange, r.symbol, r.timeframe, r.event_time_ns, js) for r, js in encoded],
                    )
                    self._conn.executemany(
                        _UPSERT_LATEST,
                        [(r.exchange, r.symbol, r.timeframe, r.event_time_ns, now, js) for r, js in encoded],
                    )
                    self._conn.executemany(_TRIM_HISTORY, [(*m, self.history - 1) for m in markets])
                    for values in live:
                        self._merge_live(values, now)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as error:
                raise OnlineStoreUnavailable(f"SQLite online store {self.path}: {error}") from error

    def _merge_live(self, values: LiveValues, now: int) -> None:
        found = self._conn.execute(
            "SELECT values_json FROM live WHERE exchange = ? AND symbol = ?", (values.exchange, values.symbol)
        ).fetchone()
        merged = _live_decoder.decode(found[0]) if found else {}
        merged.update({name: float(value) for name, value in values.values.items()})
        self._conn.execute(
            "INSERT OR REPLACE INTO live VALUES (?, ?, ?, ?, ?)",
            (values.exchange, values.symbol, values.time_ns, now, _live_encoder.encode(merged)),
        )

    # reads ----------------------------------------------------------------------------------
    def _query_one(self, sql: str, params: tuple):
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchone()
            except sqlite3.OperationalError as error:
                raise OnlineStoreUnavailable(f"SQLite online store {self.path}: {error}") from error

    def read_latest(self, exchange: str, symbol: str, timeframe: str) -> FeatureRow | None:
        found = self._query_one(
            "SELECT row_json FROM latest WHERE exchange = ? AND symbol = ? AND timeframe = ?",
            (exchange, symbol, timeframe),
        )
        return decode_row_json(found[0]) if found else None

    def read_history(self, exchange: str, symbol: str, timeframe: str, n: int) -> list[FeatureRow]:
        if n <= 0:
            return []
        with self._lock:
            try:
                found = self._conn.execute(
                    "SELECT row_json FROM history WHERE exchange = ? AND symbol = ? AND timeframe = ? "
                    "ORDER BY event_time_ns DESC LIMIT ?",
                    (exchange, symbol, timeframe, n),
                ).fetchall()
            except sqlite3.OperationalError as error:
                raise OnlineStoreUnavailable(f"SQLite online store {self.path}: {error}") from error
        return [decode_row_json(js) for (js,) in found]

    def read_live(self, exchange: str, symbol: str) -> LiveValues | None:
        found = self._query_one(
            "SELECT time_ns, values_json FROM live WHERE exchange = ? AND symbol = ?", (exchange, symbol)
        )
        if not found:
            return None
        return LiveValues(exchange, symbol, found[0], _live_decoder.decode(found[1]))

    async def aread_market(self, exchange: str, symbol: str, timeframe: str) -> MarketSnapshot:
        # A local file in WAL mode: a read takes microseconds and never waits for the writer.
        check_key_part("exchange", exchange)
        check_key_part("symbol", symbol)
        check_key_part("timeframe", timeframe)
        return self._read_market(exchange, symbol, timeframe)

    async def aread_live(self, exchange: str, symbol: str) -> LiveValues | None:
        check_key_part("exchange", exchange)
        check_key_part("symbol", symbol)
        return self.read_live(exchange, symbol)

    def subscribe(self, exchange: str, symbol: str, timeframe: str) -> Subscription:
        return SqliteSubscription(self.path, exchange, symbol, timeframe)

    def feed(self) -> MarketFeed:
        return SqliteMarketFeed(self.path)

    def ping(self) -> bool:
        try:
            self._query_one("SELECT 1", ())
            return True
        except OnlineStoreUnavailable:
            return False

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteMarketFeed(MarketFeed):
    """Polls ``PRAGMA data_version`` on its own connection; after a commit, reads each watched
    market's rows newer than the last one delivered."""

    def __init__(self, path: Path, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        super().__init__()
        self._path = path
        self._poll_interval_s = poll_interval_s
        self._conn: sqlite3.Connection | None = None
        self._data_version: int | None = None

    async def _open(self) -> None:
        if self._conn is None:
            try:
                self._conn = _connect(self._path, wal=False)
                self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as error:
                raise OnlineStoreUnavailable(f"SQLite online store {self._path}: {error}") from error

    async def _latest_event_time(self, market: tuple[str, str, str]) -> int | None:
        found = self._conn.execute(
            "SELECT event_time_ns FROM latest WHERE exchange = ? AND symbol = ? AND timeframe = ?", market,
        ).fetchone()
        return found[0] if found else None

    def _poll(self) -> list[FeatureRow]:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return []
        self._data_version = version
        rows: list[FeatureRow] = []
        for market, last in list(self._last.items()):
            rows += (decode_row_json(js) for (js,) in self._conn.execute(
                "SELECT row_json FROM history WHERE exchange = ? AND symbol = ? AND timeframe = ? "
                "AND event_time_ns > ? ORDER BY event_time_ns", (*market, last)))
        return rows

    async def _next_rows(self) -> list[FeatureRow]:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                rows = self._poll()
            except sqlite3.OperationalError:  # locked for a moment or file being replaced: poll again
                self._data_version = None
                continue
            if rows:
                return rows

    async def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteSubscription(Subscription):
    """Polls ``PRAGMA data_version`` on its own connection (reads only); reads rows only after a commit."""

    def __init__(self, path: Path, exchange: str, symbol: str, timeframe: str,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        super().__init__(exchange, symbol, timeframe)
        self._path = path
        self._poll_interval_s = poll_interval_s
        self._conn: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._pending: deque[FeatureRow] = deque()

    async def _open(self) -> int | None:
        self._conn = _connect(self._path, wal=False)
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        found = self._conn.execute(
            "SELECT event_time_ns FROM latest WHERE exchange = ? AND symbol = ? AND timeframe = ?",
            (self.exchange, self.symbol, self.timeframe),
        ).fetchone()
        return found[0] if found else None

    def _poll(self) -> None:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        found = self._conn.execute(
            "SELECT row_json FROM history WHERE exchange = ? AND symbol = ? AND timeframe = ? "
            "AND event_time_ns > ? ORDER BY event_time_ns",
            (self.exchange, self.symbol, self.timeframe, self._last_event_time_ns),
        ).fetchall()
        self._pending.extend(decode_row_json(js) for (js,) in found)

    async def _next_row(self) -> FeatureRow:
        while not self._pending:
            await asyncio.sleep(self._poll_interval_s)
            try:
                self._poll()
            except sqlite3.OperationalError:  # locked for a moment or file being replaced: poll again
                self._data_version = None
        return self._pending.popleft()

    async def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
