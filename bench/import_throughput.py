"""Offline-store import throughput on 500,000 real E-mini S&P 500 ticks.

    python -m bench.import_throughput            # all 500,000 ticks, batches of 50,000
    python -m bench.import_throughput --quick    # 50,000 ticks

Writes the ticks as Trades (exchange "cme", symbol "ES-USD", trade_id = row number, side by
the tick rule) with ``SqlOfflineStore.write_trades`` to a throwaway PostgreSQL database
(dropped afterwards; admin URL from RTML_BENCH_PG_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres) and to a temporary SQLite file, then
imports the same batches again (every row a conflict). The peer, measured in the same run on
the same backend, is ``pandas.DataFrame.to_sql(method="multi")`` (and its default executemany)
with the same exact column types, on the first ``--peer-rows`` ticks (default 100,000: its
rate per row does not depend on the count); it appends (no key, no upsert), so its re-import
duplicates every row.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from rtml_core.schemas import Trade
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.offline_tables import ExactDecimal

TICKS = Path(__file__).resolve().parents[1] / "data" / "es_futures_ticks_2013-09.csv.gz"
PG_ADMIN_URL = os.environ.get(
    "RTML_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SQL_VARIABLE_LIMIT = {"sqlite": 32_766, "postgresql": 65_535}


def load_ticks(rows: int) -> tuple[list[Trade], pd.DataFrame]:
    """The first ``rows`` ticks as Trades (exact decimals) and as the peer's frame."""
    raw = pd.read_csv(TICKS, nrows=rows, dtype=str)
    times = pd.to_datetime(raw["DateTime"], format="%Y-%m-%d %H:%M:%S.%f").dt.tz_localize("UTC")
    time_ns = pd.DatetimeIndex(times).as_unit("ns").asi8
    prices = [Decimal(p) for p in raw["Price"]]
    sizes = [Decimal(v) for v in raw["Volume"]]
    moves = np.sign(np.diff(raw["Price"].astype(float).to_numpy(), prepend=np.nan))
    ticks = pd.Series(moves).replace(0.0, np.nan).ffill().fillna(0.0).to_numpy()
    sides = np.where(ticks > 0, "buy", np.where(ticks < 0, "sell", "unknown")).tolist()
    trades = [
        Trade("cme", "ES-USD", index, int(ns), price, size, side)
        for index, (ns, price, size, side) in enumerate(zip(time_ns.tolist(), prices, sizes, sides))
    ]
    frame = pd.DataFrame(
        {
            "exchange": "cme",
            "symbol": "ES-USD",
            "trade_id": np.arange(len(trades), dtype=np.int64),
            "time_ns": time_ns,
            "price": pd.Series(prices, dtype=object),
            "size": pd.Series(sizes, dtype=object),
            "side": sides,
        }
    )
    return trades, frame


def batches(items: Sequence, size: int) -> list:
    return [items[start : start + size] for start in range(0, len(items), size)]


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    written = run()
    return time.perf_counter() - start, written


def measure_backend(
    name: str, url: str, trades: list[Trade], frame: pd.DataFrame, batch: int, peer_rows: int
) -> list[dict]:
    results = []
    store = open_offline_store(url)
    try:
        trade_batches = batches(trades, batch)
        seconds, written = timed(lambda: sum(store.write_trades(b) for b in trade_batches))
        results.append(
            {
                "backend": name,
                "writer": "rtml write_trades (upsert)",
                "pass": "import",
                "rows": len(trades),
                "written": written,
                "seconds": seconds,
            }
        )
        seconds, written = timed(lambda: sum(store.write_trades(b) for b in trade_batches))
        results.append(
            {
                "backend": name,
                "writer": "rtml write_trades (upsert)",
                "pass": "re-import",
                "rows": len(trades),
                "written": written,
                "seconds": seconds,
            }
        )
        stored = store.markets().query("kind == 'trades'")["rows"].sum()

        chunk = SQL_VARIABLE_LIMIT[store.dialect] // len(frame.columns)
        types = {
            "price": ExactDecimal(),
            "size": ExactDecimal(),
            "trade_id": sa.BigInteger(),
            "time_ns": sa.BigInteger(),
        }

        peer_frame = frame.iloc[:peer_rows]
        for method, label in (
            ("multi", 'pandas to_sql(method="multi")'),
            (None, "pandas to_sql(executemany)"),
        ):
            table = f"peer_{method or 'executemany'}"

            def peer(table: str = table, method: str | None = method) -> int:
                for part in batches(peer_frame, batch):
                    part.to_sql(
                        table,
                        store.engine,
                        if_exists="append",
                        index=False,
                        method=method,
                        chunksize=chunk if method else None,
                        dtype=types,
                    )
                return len(peer_frame)

            for pass_ in ("import", "re-import"):
                seconds, written = timed(peer)
                results.append(
                    {
                        "backend": name,
                        "writer": label,
                        "pass": pass_,
                        "rows": len(peer_frame),
                        "written": written,
                        "seconds": seconds,
                    }
                )
            with store.engine.connect() as conn:
                peer_stored = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for row in results:
                if row["writer"] == label:
                    row["stored after"] = peer_stored
        for row in results:
            if row["writer"].startswith("rtml"):
                row["stored after"] = stored
    finally:
        store.close()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50,000 ticks instead of 500,000")
    parser.add_argument("--rows", type=int, default=None, help="ticks to import (default 500,000)")
    parser.add_argument(
        "--batch", type=int, default=50_000, help="rows per write (one transaction each)"
    )
    parser.add_argument(
        "--peer-rows",
        type=int,
        default=100_000,
        help="rows the pandas peers write (their rate per row is flat; the multi-row peer is slow)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    rows = args.rows or (50_000 if args.quick else 500_000)

    trades, frame = load_ticks(rows)
    print(f"{len(trades):,} real ES ticks from {TICKS.name}, batches of {args.batch:,}")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        results += measure_backend(
            "sqlite",
            f"sqlite:///{folder}/bench.sqlite",
            trades,
            frame,
            args.batch,
            min(args.peer_rows, rows),
        )
    if not args.skip_postgres:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        database = f"rtml_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
        try:
            url = admin.url.set(database=database).render_as_string(hide_password=False)
            results += measure_backend(
                "postgresql", url, trades, frame, args.batch, min(args.peer_rows, rows)
            )
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.dispose()

    table = pd.DataFrame(results)
    table["rows/s"] = (table["rows"] / table["seconds"]).round(0).astype(int)
    table["seconds"] = table["seconds"].round(2)
    columns = ["backend", "writer", "pass", "rows", "seconds", "rows/s", "written", "stored after"]
    print(table[columns].to_string(index=False))
    print(
        "written: rows inserted or changed (rtml) / rows appended (pandas); the peer keeps no key, so its re-import duplicates."
    )


if __name__ == "__main__":
    main()
