"""Prediction logging cost on the request path: ``PredictionLog.record`` (queue, batched writer
thread) beside the common way (one INSERT per served prediction, on the request's thread).

    python -m bench.prediction_log [--quick] [--pg-url postgresql+psycopg://postgres@127.0.0.1/postgres]

Per backend (embedded SQLite file, PostgreSQL when reachable): latency of one call on the
request path (p50, p99, max) and predictions per second until everything is durable.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import uuid

import numpy as np
import sqlalchemy as sa

from rtml_core.prediction_log import PredictionLog, prediction_row, predictions
from rtml_core.stores.offline import open_offline_store


def _prediction(i: int) -> dict:
    price = 90_000.0 + (i % 1000)
    return {"exchange": "kraken", "symbol": "BTC-USD", "timeframe": "1m", "model_version": "3",
            "feature_set_version": "v1", "feature_event_time": 1_762_795_440_000_000_000 + i * 60_000_000_000,
            "horizon_s": 60, "price": price, "predicted_price": price * 1.0001,
            "predicted_return": math.log(1.0001), "prob_up": 0.52, "stale": False}


def bench_log(store, n: int) -> tuple[np.ndarray, float]:
    log = PredictionLog(store, max_queue=n + 1)
    items = [_prediction(i) for i in range(n)]
    latencies = np.empty(n)
    started = time.perf_counter()
    for i, item in enumerate(items):
        t0 = time.perf_counter_ns()
        log.record(item)
        latencies[i] = time.perf_counter_ns() - t0
    log.close()
    total = time.perf_counter() - started
    assert log.written == n, (log.written, log.dropped)
    return latencies, n / total


def bench_insert_per_request(store, n: int) -> tuple[np.ndarray, float]:
    engine = store.engine
    items = [_prediction(i) for i in range(n)]
    latencies = np.empty(n)
    started = time.perf_counter()
    for i, item in enumerate(items):
        t0 = time.perf_counter_ns()
        with engine.begin() as conn:
            conn.execute(predictions.insert(), [prediction_row(item, time.time_ns())])
        latencies[i] = time.perf_counter_ns() - t0
    return latencies, n / (time.perf_counter() - started)


def _row(backend: str, way: str, latencies: np.ndarray, rate: float) -> str:
    p50, p99 = np.percentile(latencies, [50, 99]) / 1e3
    return f"| {backend} | {way} | {len(latencies):,} | {p50:,.1f} | {p99:,.1f} | {latencies.max() / 1e3:,.0f} | {rate:,.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    n_log, n_insert = (2_000, 200) if args.quick else (100_000, 3_000)
    backends = []
    tmp = tempfile.mkdtemp(prefix="rtml-bench-")
    backends.append(("sqlite", f"sqlite:///{tmp}/offline.sqlite", None))
    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    name = f"rtml_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        backends.append(("postgresql", admin.url.set(database=name).render_as_string(hide_password=False), name))
    except sa.exc.OperationalError as error:
        print(f"PostgreSQL not reachable ({error.__class__.__name__}): SQLite only")
    print("| backend | way | predictions | request-path p50 (us) | p99 (us) | max (us) | predictions/s until durable |")
    print("|---|---|---|---|---|---|---|")
    try:
        for backend, url, _ in backends:
            store = open_offline_store(url)
            print(_row(backend, "PredictionLog.record (batched thread)", *bench_log(store, n_log)), flush=True)
            print(_row(backend, "INSERT per request (common way)", *bench_insert_per_request(store, n_insert)),
                  flush=True)
            store.close()
    finally:
        for _, _, database in backends:
            if database:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
