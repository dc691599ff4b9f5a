"""One contract for the offline store, run on embedded SQLite and on real PostgreSQL.

Data: real Kraken XBTUSDT trades and real BTC/USD 30-minute candles bundled in data/.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from rtml_core.errors import InputError, RtmlError, UnsupportedOperation
from rtml_core.schemas import Candle, Trade
from rtml_core.stores.offline import SqlOfflineStore, open_offline_store
from rtml_core.stores.offline_base import OfflineStore
from rtml_core.stores.offline_tables import CORE_MIGRATIONS, Migration, add_columns, create_tables
from tests.conftest import DATA

NS = 1_000_000_000
MARKET = ("kraken", "BTC-USDT")


def kraken_trades(limit: int = 400) -> list[Trade]:
    """The first ``limit`` trades of the real Kraken REST reply, parsed exactly."""
    reply = json.loads((DATA / "kraken_xbtusdt_trades_rest.json").read_text())
    trades = []
    for price, volume, time, side, _ordertype, _misc, trade_id in reply["result"]["XBTUSDT"][
        :limit
    ]:
        time_ns = int(Decimal(str(time)) * NS)
        trades.append(
            Trade(
                *MARKET,
                trade_id,
                time_ns,
                Decimal(price),
                Decimal(volume),
                "buy" if side == "b" else "sell",
            )
        )
    return trades


def real_candles(limit: int = 200) -> list[Candle]:
    """Real 30m BTC/USD candles (columns Date, open, close, high, low, volume)."""
    candles = []
    with gzip.open(DATA / "btc_usd_30m_2017-2019.csv.gz", "rt", newline="") as handle:
        for row in list(csv.DictReader(handle))[:limit]:
            start = datetime.strptime(row["Date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            close = Decimal(row["BTC.close"])
            candles.append(
                Candle(
                    "poloniex",
                    "BTC-USDT",
                    "30m",
                    int(start.timestamp()) * NS,
                    Decimal(row["BTC.open"]),
                    Decimal(row["BTC.high"]),
                    Decimal(row["BTC.low"]),
                    close,
                    Decimal(row["BTC.volume"]),
                    close if len(candles) % 3 else None,
                    len(candles) % 7,
                )
            )
    return candles


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> SqlOfflineStore:
    """A fresh store: a SQLite file, or a schema of its own in the session's PostgreSQL database.

    (A schema per test is as isolated as ``offline_url``'s database per test and much
    quicker to make; the crash and migration tests below use ``offline_url`` itself.)
    """
    if request.param == "sqlite":
        opened = open_offline_store(f"sqlite:///{tmp_path / 'offline.sqlite'}")
        yield opened
        opened.close()
        return
    database = sa.make_url(request.getfixturevalue("postgres_url"))
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    opened = open_offline_store(
        database.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    )
    yield opened
    opened.close()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


def with_(trade: Trade, **changes) -> Trade:
    fields = {name: getattr(trade, name) for name in trade.__struct_fields__}
    return Trade(**{**fields, **changes})


# --- trades ----------------------------------------------------------------------------------


def test_trades_round_trip_exactly(store: SqlOfflineStore) -> None:
    trades = kraken_trades()
    assert store.write_trades(trades) == len(trades)

    exact = store.read_trades(*MARKET, exact=True)
    assert [str(p) for p in exact["price"]] == [
        str(t.price) for t in trades
    ]  # scale kept: 105433.60000
    assert list(exact["size"]) == [t.size for t in trades]
    assert exact["time"].dtype == "datetime64[ns, UTC]"
    assert exact["time"].astype("int64").tolist() == [
        t.time_ns for t in trades
    ]  # 100 ns digits kept
    assert exact["trade_id"].tolist() == [t.trade_id for t in trades]
    assert exact["side"].tolist() == [t.side for t in trades]

    floats = store.read_trades(*MARKET)
    assert floats["price"].dtype == np.float64
    assert floats["price"].tolist() == [float(t.price) for t in trades]
    assert floats["size"].tolist() == [float(t.size) for t in trades]
    assert list(floats.columns) == ["time", "trade_id", "price", "size", "side"]


def test_time_column_for_sql_users_is_microsecond_timestamp(store: SqlOfflineStore) -> None:
    trade = kraken_trades(1)[0]  # 1762795433.9717445 s
    store.write_trades([trade])
    with store.engine.connect() as conn:
        time = conn.execute(sa.text("SELECT time FROM trades")).scalar_one()
    if store.dialect == "postgresql":
        assert time == datetime(2025, 11, 10, 17, 23, 53, 971744, tzinfo=UTC)
    else:
        assert time == "2025-11-10T17:23:53.972Z"


def test_reimporting_the_same_batch_changes_nothing(store: SqlOfflineStore) -> None:
    trades = kraken_trades()
    store.write_trades(trades)
    before = store.read_trades(*MARKET, exact=True)
    assert store.write_trades(trades) == 0
    assert store.write_trades(reversed(trades)) == 0
    pd.testing.assert_frame_equal(store.read_trades(*MARKET, exact=True), before)


def test_upsert_updates_changed_rows_and_last_duplicate_in_a_batch_wins(
    store: SqlOfflineStore,
) -> None:
    trades = kraken_trades(50)
    store.write_trades(trades)
    corrected = with_(trades[10], size=Decimal("1.50000000"), side="sell")
    twice = with_(trades[20], price=Decimal("1")), with_(trades[20], price=Decimal("99999.9"))
    assert store.write_trades([trades[0], corrected]) == 1  # only the changed row is written
    store.write_trades(twice)  # (SQLite counts both writes of the repeated key, PostgreSQL one)
    frame = store.read_trades(*MARKET, exact=True).set_index("trade_id")
    assert frame.loc[trades[10].trade_id, "size"] == Decimal("1.5")
    assert frame.loc[trades[10].trade_id, "side"] == "sell"
    assert frame.loc[trades[20].trade_id, "price"] == Decimal("99999.9")
    assert len(frame) == 50


def test_bad_row_after_good_rows_stores_nothing_of_that_batch(store: SqlOfflineStore) -> None:
    trades = kraken_trades(300)
    store.write_trades(trades[:100])

    def batch():
        yield from (with_(t, size=t.size * 2) for t in trades[:100])  # updates of stored rows
        yield from trades[100:299]  # new rows, already sent to the database
        yield with_(trades[299], price=float(trades[299].price))  # a float: refused

    with pytest.raises(InputError, match=r"trade 299 of the batch .*float"):
        store.write_trades(batch())
    stored = store.read_trades(*MARKET, exact=True)
    assert stored["trade_id"].tolist() == [t.trade_id for t in trades[:100]]
    assert list(stored["size"]) == [t.size for t in trades[:100]]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"price": Decimal("-1")}, "not positive"),
        ({"price": Decimal("NaN")}, "not a finite"),
        ({"size": "abc"}, "not a decimal"),
        ({"side": "b"}, "side"),
        ({"symbol": ""}, "symbol"),
        ({"trade_id": 2**63}, "64 bits"),
    ],
)
def test_bad_trades_are_named(store: SqlOfflineStore, change: dict, problem: str) -> None:
    trades = kraken_trades(3)
    with pytest.raises(InputError, match=problem) as raised:
        store.write_trades([trades[0], trades[1], with_(trades[2], **change)])
    assert "trade 2 of the batch" in str(raised.value)
    assert store.read_trades(*MARKET).empty


CRASH_SCRIPT = """
import os, signal, sys
from tests.contract.test_offline_store import kraken_trades, with_
from rtml_core.stores.offline import open_offline_store
store = open_offline_store(sys.argv[1])
trades = kraken_trades(1000)
def batch():
    for round_ in range(20):
        for index, trade in enumerate(trades):
            if round_ == 19 and index == 500:
                os.kill(os.getpid(), signal.SIGKILL)  # the process dies mid-batch
            yield with_(trade, trade_id=trade.trade_id + round_ * 10**6)
store.write_trades(batch())
"""


def test_a_crash_mid_batch_leaves_no_half_batch(offline_url: str) -> None:
    store = open_offline_store(offline_url)
    earlier = kraken_trades(10)
    store.write_trades(earlier)
    store.close()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, offline_url],
        cwd=root,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    store = open_offline_store(offline_url)
    try:
        assert store.read_trades(*MARKET)["trade_id"].tolist() == [t.trade_id for t in earlier]
    finally:
        store.close()


def test_range_reads_are_half_open(store: SqlOfflineStore) -> None:
    trades = kraken_trades()
    store.write_trades(trades)
    start, end = trades[100].time_ns, trades[200].time_ns
    frame = store.read_trades(*MARKET, start_ns=start, end_ns=end)
    expected = [
        t.trade_id
        for t in sorted(trades, key=lambda t: (t.time_ns, t.trade_id))
        if start <= t.time_ns < end
    ]
    assert frame["trade_id"].tolist() == expected
    assert frame["time"].min().value == start and frame["time"].max().value < end
    assert store.read_trades(*MARKET, start_ns=trades[-1].time_ns + 1).empty
    assert store.read_trades("kraken", "ETH-USDT").empty
    assert store.trade_ids(*MARKET, start_ns=start, end_ns=end).tolist() == sorted(expected)


# --- candles ---------------------------------------------------------------------------------


def test_candles_round_trip_exactly(store: SqlOfflineStore) -> None:
    candles = real_candles()
    assert store.write_candles(candles) == len(candles)
    assert store.write_candles(candles) == 0
    exact = store.read_candles("poloniex", "BTC-USDT", "30m", exact=True)
    assert list(exact.columns) == [
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "vwap",
        "trade_count",
    ]
    assert exact["time"].astype("int64").tolist() == [c.start_ns for c in candles]
    for name in ("open", "high", "low", "close", "volume", "vwap"):
        assert list(exact[name]) == [getattr(c, name) for c in candles], name
    floats = store.read_candles("poloniex", "BTC-USDT", "30m")
    assert floats["volume"].tolist() == [float(c.volume) for c in candles]
    assert [None if math.isnan(v) else v for v in floats["vwap"]] == [
        None if c.vwap is None else float(c.vwap) for c in candles
    ]
    assert floats["trade_count"].tolist() == [c.trade_count for c in candles]
    assert store.read_candles("poloniex", "BTC-USDT", "1h").empty


def test_replace_candles_is_idempotent_and_only_touches_its_range(store: SqlOfflineStore) -> None:
    candles = real_candles(144)  # three days of 30m candles
    store.write_candles(candles)
    day = 86400 * NS
    first = candles[0].start_ns
    start, end = first + day, first + 2 * day
    middle = [c for c in candles if start <= c.start_ns < end]
    key = {
        "exchange": "poloniex",
        "symbol": "BTC-USDT",
        "timeframe": "30m",
        "start_ns": start,
        "end_ns": end,
    }

    assert store.replace_candles(middle[:-5], **key) == 43  # a shorter re-materialization
    assert len(store.read_candles("poloniex", "BTC-USDT", "30m")) == 139
    assert store.replace_candles(middle, **key) == 48
    assert store.replace_candles(middle, **key) == 48  # again: same rows, no duplicates
    frame = store.read_candles("poloniex", "BTC-USDT", "30m", exact=True)
    assert frame["time"].astype("int64").tolist() == [c.start_ns for c in candles]
    assert list(frame["close"]) == [c.close for c in candles]

    outside = Candle(
        **{**{f: getattr(middle[0], f) for f in Candle.__struct_fields__}, "start_ns": end}
    )
    with pytest.raises(InputError, match="outside the replaced range"):
        store.replace_candles([*middle[:10], outside], **key)
    assert (
        len(store.read_candles("poloniex", "BTC-USDT", "30m")) == 144
    )  # the delete rolled back too


# --- features --------------------------------------------------------------------------------


def feature_frame(rows: int, seed: int) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    start = pd.Timestamp("2025-11-10 17:00", tz="UTC")
    frame = pd.DataFrame({"time": pd.date_range(start, periods=rows, freq="1min").as_unit("ns")})
    frame["rsi_14"] = generator.uniform(0, 100, rows)
    frame["log_return_1"] = generator.normal(0, 1e-3, rows)
    frame["sma_10"] = generator.uniform(1e4, 1e5, rows)
    frame.loc[:9, "rsi_14"] = np.nan  # warm-up rows
    return frame


def test_features_round_trip_bit_for_bit(store: SqlOfflineStore) -> None:
    names = ["rsi_14", "log_return_1", "sma_10"]
    store.register_feature_set("fs_a1b2", names, {"rsi_14": {"length": 14}})
    store.register_feature_set("fs_a1b2", names, {"rsi_14": {"length": 14}})  # idempotent
    frame = feature_frame(300, seed=1)
    assert (
        store.write_features(
            frame,
            exchange="kraken",
            symbol="BTC-USD",
            timeframe="1m",
            feature_set_version="fs_a1b2",
        )
        == 300
    )
    assert (
        store.write_features(
            frame,
            exchange="kraken",
            symbol="BTC-USD",
            timeframe="1m",
            feature_set_version="fs_a1b2",
        )
        == 0
    )
    back = store.read_features("kraken", "BTC-USD", "1m", "fs_a1b2")
    assert list(back.columns) == ["time", *names]
    pd.testing.assert_frame_equal(back, frame[["time", *names]], check_exact=True)
    window = store.read_features(
        "kraken",
        "BTC-USD",
        "1m",
        "fs_a1b2",
        start_ns=frame["time"][5].value,
        end_ns=frame["time"][15].value,
    )
    assert window["time"].tolist() == frame["time"][5:15].tolist()
    with store.engine.connect() as conn:  # warm-up NaN is SQL NULL for people querying
        nulls = conn.execute(sa.text("SELECT count(*) FROM features_fs_a1b2 WHERE rsi_14 IS NULL"))
        assert nulls.scalar_one() == 10
    twice = pd.concat(
        [frame[:3].assign(sma_10=1.0), frame[:3].assign(sma_10=2.0)], ignore_index=True
    )
    key = {"exchange": "kraken", "symbol": "BTC-USD", "timeframe": "1m"}
    store.write_features(twice, feature_set_version="fs_a1b2", **key)  # last row of a time wins
    assert store.read_features(**key, feature_set_version="fs_a1b2")["sma_10"][:4].tolist() == [
        2.0,
        2.0,
        2.0,
        frame["sma_10"][3],
    ]
    [registered] = store.feature_set_versions()
    assert registered["version"] == "fs_a1b2" and registered["names"] == names
    assert registered["spec"] == {"rsi_14": {"length": 14}}
    assert registered["created_at"].tzinfo is not None


def test_feature_versions_are_isolated_and_old_ones_stay_readable(store: SqlOfflineStore) -> None:
    key = {"exchange": "kraken", "symbol": "BTC-USD", "timeframe": "1m"}
    store.register_feature_set("v1", ["rsi_14", "sma_10"], {})
    store.register_feature_set("v2", ["rsi_14", "log_return_1", "sma_10"], {"changed": True})
    old, new = feature_frame(100, seed=2), feature_frame(100, seed=3)
    store.write_features(old, feature_set_version="v1", **key)
    store.write_features(new, feature_set_version="v2", **key)
    pd.testing.assert_frame_equal(
        store.read_features(**key, feature_set_version="v1"), old[["time", "rsi_14", "sma_10"]]
    )
    pd.testing.assert_frame_equal(
        store.read_features(**key, feature_set_version="v2"),
        new[["time", "rsi_14", "log_return_1", "sma_10"]],
    )
    assert [v["version"] for v in store.feature_set_versions()] == ["v1", "v2"]
    with pytest.raises(InputError, match="registered with features"):
        store.register_feature_set("v1", ["rsi_14"], {})
    with pytest.raises(InputError, match="not registered"):
        store.read_features(**key, feature_set_version="v3")


def test_replace_features_is_idempotent_per_range(store: SqlOfflineStore) -> None:
    key = {
        "exchange": "kraken",
        "symbol": "BTC-USD",
        "timeframe": "1m",
        "feature_set_version": "v1",
    }
    store.register_feature_set("v1", ["rsi_14", "log_return_1", "sma_10"], {})
    frame = feature_frame(120, seed=4)
    store.write_features(frame, **key)
    start, end = frame["time"][60].value, frame["time"][119].value + 60 * NS
    recomputed = feature_frame(120, seed=5)[60:]
    assert store.replace_features(recomputed, **key, start_ns=start, end_ns=end) == 60
    assert store.replace_features(recomputed, **key, start_ns=start, end_ns=end) == 60
    back = store.read_features("kraken", "BTC-USD", "1m", "v1")
    expected = pd.concat([frame[:60], recomputed], ignore_index=True)
    pd.testing.assert_frame_equal(back, expected)
    with pytest.raises(InputError, match="outside the replaced range"):
        store.replace_features(frame, **key, start_ns=start, end_ns=end)


@pytest.mark.parametrize(
    ("version", "names"),
    [
        ("v1", ["rsi_14; DROP TABLE trades"]),
        ("v1", ["RSI"]),
        ("v1", ["time"]),
        ("v1", ["sma_10", "sma_10"]),
        ("v1; DROP TABLE trades", ["sma_10"]),
    ],
)
def test_unsafe_feature_names_and_versions_are_refused(
    store: SqlOfflineStore, version: str, names: list[str]
) -> None:
    with pytest.raises(InputError):
        store.register_feature_set(version, names, {})
    assert store.feature_set_versions() == []


def test_bad_feature_frames_are_named(store: SqlOfflineStore) -> None:
    key = {
        "exchange": "kraken",
        "symbol": "BTC-USD",
        "timeframe": "1m",
        "feature_set_version": "v1",
    }
    store.register_feature_set("v1", ["rsi_14", "sma_10"], {})
    frame = feature_frame(10, seed=6)
    with pytest.raises(InputError, match="lacks feature columns .*sma_10"):
        store.write_features(frame.drop(columns="sma_10"), **key)
    with pytest.raises(InputError, match="'rsi_14' is not numeric"):
        store.write_features(frame.assign(rsi_14="high"), **key)
    with pytest.raises(InputError, match="timezone-aware"):
        store.write_features(frame.assign(time=frame["time"].dt.tz_localize(None)), **key)


# --- inventory and schema --------------------------------------------------------------------


def test_markets_lists_every_stored_series(store: SqlOfflineStore) -> None:
    trades, candles = kraken_trades(), real_candles(10)
    store.write_trades(trades)
    store.write_candles(candles)
    store.register_feature_set("v1", ["rsi_14", "sma_10"], {})
    store.write_features(
        feature_frame(7, seed=7),
        exchange="kraken",
        symbol="BTC-USD",
        timeframe="1m",
        feature_set_version="v1",
    )
    markets = store.markets()
    assert markets[["kind", "exchange", "symbol", "rows"]].values.tolist() == [
        ["candles", "poloniex", "BTC-USDT", 10],
        ["features", "kraken", "BTC-USD", 7],
        ["trades", "kraken", "BTC-USDT", len(trades)],
    ]
    trade_row = markets[markets["kind"] == "trades"].iloc[0]
    assert trade_row["first"].value == min(t.time_ns for t in trades)
    assert trade_row["last"].value == max(t.time_ns for t in trades)
    assert markets.loc[markets["kind"] == "features", "feature_set_version"].item() == "v1"


def test_an_old_store_is_upgraded_in_place_and_keeps_its_rows(offline_url: str) -> None:
    old = open_offline_store(offline_url, migrate=False)
    assert old.migrate(target=1) == [1]  # the schema of the first release
    trades, candles = kraken_trades(), real_candles(20)
    old.write_trades(trades)
    old.write_candles(candles)
    assert old.schema_versions() == {"core": 1}
    old.close()

    store = open_offline_store(offline_url)  # a newer rtml opens it
    assert store.schema_versions() == {"core": len(CORE_MIGRATIONS)}
    assert store.read_trades(*MARKET, exact=True)["price"].tolist() == [t.price for t in trades]
    assert len(store.read_candles("poloniex", "BTC-USDT", "30m")) == 20
    store.register_feature_set("v1", ["rsi_14"], {})  # a table step 2 added
    assert store.migrate() == []  # nothing left to do

    # A component's later steps (a new table, then a new column) apply in place too.
    notes = sa.Table(
        "notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text),
    )
    steps = [Migration(1, "notes", create_tables(notes))]
    assert store.apply_migrations("notes", steps) == [1]
    with store.begin_write() as conn:
        conn.execute(notes.insert().values(id=1, text="kept"))
    steps.append(
        Migration(
            2, "note author", add_columns("notes", sa.Column("author", sa.Text, nullable=True))
        )
    )
    assert store.apply_migrations("notes", steps) == [2]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, text, author FROM notes")).all() == [
            (1, "kept", None)
        ]
    assert store.schema_versions() == {"core": len(CORE_MIGRATIONS), "notes": 2}
    with pytest.raises(RtmlError, match="newer than this rtml"):
        store.apply_migrations("notes", steps[:1])
    store.close()


def test_packages_keep_their_own_tables_through_the_store_interface(store: SqlOfflineStore) -> None:
    """What the registry, the prediction log and the stream use: migrations, transactions, upserts."""
    assert isinstance(store, OfflineStore)
    assert store.dialect == store.engine.dialect.name and store.dialect in ("sqlite", "postgresql")
    marks = sa.Table(
        "contract_marks",
        sa.MetaData(),
        sa.Column("market", sa.Text, primary_key=True),
        sa.Column("price", sa.Float, nullable=False),
    )
    assert store.apply_migrations("contract_marks", [Migration(1, "marks", create_tables(marks))]) == [1]
    once = store.insert(marks).on_conflict_do_nothing(index_elements=["market"])
    with store.begin_write() as conn:
        conn.execute(once, {"market": "BTC-USD", "price": 1.0})
    with store.begin_write() as conn:  # the same key again: kept as it was
        conn.execute(once, {"market": "BTC-USD", "price": 2.0})
    with store.connect() as conn:
        assert conn.execute(sa.select(marks.c.price)).scalars().all() == [1.0]
    statement = store.insert(marks)
    update = statement.on_conflict_do_update(index_elements=["market"], set_={"price": statement.excluded.price})
    with store.begin_write() as conn:
        conn.execute(update, [{"market": "BTC-USD", "price": 3.0}, {"market": "ETH-USD", "price": 4.0}])
    with pytest.raises(ZeroDivisionError):  # an error inside the transaction rolls all of it back
        with store.begin_write() as conn:
            conn.execute(marks.delete())
            1 / 0
    with store.connect() as conn:
        rows = conn.execute(sa.select(marks).order_by(marks.c.market)).all()
    assert [tuple(row) for row in rows] == [("BTC-USD", 3.0), ("ETH-USD", 4.0)]
    store.close()


def test_insert_new_counts_only_the_rows_it_stored(store: SqlOfflineStore) -> None:
    """The stream's gap and correction writers report what they wrote (PostgreSQL's executemany too)."""
    from rtml_core.stores.stream_tables import STREAM_MIGRATIONS, candle_gaps, insert_new

    store.apply_migrations("stream", STREAM_MIGRATIONS)
    key = ("exchange", "symbol", "timeframe", "from_ns")

    def gaps(starts: range) -> list[dict]:
        return [{"exchange": "kraken", "symbol": "BTC-USD", "timeframe": "1m", "from_ns": start,
                 "to_ns": start + 60, "candles": 1, "recorded_at_ns": 0} for start in starts]

    assert insert_new(store, candle_gaps, gaps(range(0, 3)), key) == 3
    assert insert_new(store, candle_gaps, gaps(range(2, 6)), key) == 3  # 2 was stored already
    assert insert_new(store, candle_gaps, gaps(range(0, 6)), key) == 0
    store.close()


@pytest.mark.parametrize(
    "url", ["mysql+pymysql://user@host/db", "postgresql+psycopg2://postgres@127.0.0.1/db"]
)
def test_unsupported_backends_fail_loudly(url: str) -> None:
    with pytest.raises(UnsupportedOperation, match="offline store"):
        open_offline_store(url)


def test_concurrent_openers_and_writers_share_one_store(offline_url: str) -> None:
    """Processes opening a new store at once migrate it once; their writes all land."""
    trades = kraken_trades(1000)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(part: int) -> None:
        try:
            barrier.wait()
            store = open_offline_store(offline_url)  # all four migrate the empty store at once
            try:
                for batch in range(5):
                    start = part * 250 + batch * 50
                    store.write_trades(trades[start : start + 50])
            finally:
                store.close()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    store = open_offline_store(offline_url)
    try:
        assert store.trade_ids(*MARKET).tolist() == sorted(t.trade_id for t in trades)
        assert store.schema_versions() == {"core": len(CORE_MIGRATIONS)}
        with store.engine.connect() as conn:
            steps = conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar_one()
        assert steps == len(CORE_MIGRATIONS)
    finally:
        store.close()
