"""Every served prediction, logged to the offline store off the request path.

``PredictionLog.record(prediction)`` only puts the object on a bounded queue (O(1), never
blocks, never raises for a full queue: the prediction is dropped and counted in ``dropped``);
a background thread converts and writes them in batches (one transaction per batch) into the
``predictions`` table, which this module adds to the offline store through its migration
mechanism (component ``predictions``). A failed write is retried with backoff while the store
is down; what the queue cannot hold meanwhile is dropped and counted, so memory stays bounded.

    log = PredictionLog(offline_store)
    log.record(prediction)                      # msgspec Struct, dict or object with the fields
    await log.aclose()                          # or log.close(): flushes what is queued

``read_predictions(store, ...)`` reads them back as a frame for monitoring.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Self

import numpy as np
import pandas as pd
import sqlalchemy as sa

from rtml_core.stores.offline_base import OfflineStore
from rtml_core.stores.offline_tables import Migration, create_tables

log = logging.getLogger("rtml.prediction_log")

PREDICTIONS_METADATA = sa.MetaData()
predictions = sa.Table(
    "predictions",
    PREDICTIONS_METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("served_ns", sa.BigInteger, nullable=False),
    sa.Column("exchange", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("feature_set_version", sa.Text, nullable=False),
    sa.Column("feature_time_ns", sa.BigInteger, nullable=False),
    sa.Column("horizon_s", sa.Integer, nullable=False),
    sa.Column("price", sa.Double, nullable=False),
    sa.Column("predicted_price", sa.Double, nullable=False),
    sa.Column("predicted_return", sa.Double, nullable=False),
    sa.Column("prob_up", sa.Double, nullable=True),
    sa.Column("stale", sa.Boolean, nullable=False),
    sa.Column("side", sa.Text, nullable=True),
    sa.Column("inference_path", sa.Text, nullable=True),
    sa.Index("predictions_by_market", "exchange", "symbol", "timeframe", "feature_time_ns"),
    info={"time_ns": "served_ns"},
)

PREDICTIONS_COMPONENT = "predictions"
PREDICTIONS_MIGRATIONS: list[Migration] = [
    Migration(1, "served predictions", create_tables(predictions)),
]
_WAKE_S = 0.05
_FIELDS = ("exchange", "symbol", "timeframe", "model_version", "feature_set_version", "horizon_s", "price",
           "predicted_price", "predicted_return")


def migrate_predictions(store: OfflineStore) -> None:
    """Create or upgrade the ``predictions`` table in an offline store."""
    store.apply_migrations(PREDICTIONS_COMPONENT, PREDICTIONS_MIGRATIONS)


def _get(item, name: str, default=None):
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _time_ns(value) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)  # Python 3.11 reads a trailing Z
    return int(pd.Timestamp(value).as_unit("ns").value)


def prediction_row(item, served_ns: int) -> dict:
    """The table row of one served prediction (the API's ``Prediction`` or an equal dict)."""
    missing = [name for name in _FIELDS if _get(item, name) is None]
    feature_time = _get(item, "feature_event_time", _get(item, "feature_time_ns"))
    if feature_time is None:
        missing.append("feature_event_time")
    if missing:
        raise ValueError(f"prediction lacks {', '.join(missing)}")
    execution = _get(item, "execution")
    prob_up = _get(item, "prob_up")
    return {
        "served_ns": served_ns,
        "exchange": str(_get(item, "exchange")),
        "symbol": str(_get(item, "symbol")),
        "timeframe": str(_get(item, "timeframe")),
        "model_version": str(_get(item, "model_version")),
        "feature_set_version": str(_get(item, "feature_set_version")),
        "feature_time_ns": _time_ns(feature_time),
        "horizon_s": int(_get(item, "horizon_s")),
        "price": float(_get(item, "price")),
        "predicted_price": float(_get(item, "predicted_price")),
        "predicted_return": float(_get(item, "predicted_return")),
        "prob_up": None if prob_up is None else float(prob_up),
        "stale": bool(_get(item, "stale", False)),
        "side": None if execution is None else _get(execution, "side"),
        "inference_path": _get(item, "inference_path"),
    }


class PredictionLog:
    """A batching writer of served predictions (see the module docstring)."""

    def __init__(self, store: OfflineStore, *, max_queue: int = 100_000, batch_size: int = 1_000,
                 flush_interval_s: float = 1.0, retry_cap_s: float = 10.0,
                 clock: Callable[[], int] = time.time_ns, owns_store: bool = False) -> None:
        """``owns_store``: ``close()`` closes the store too."""
        self._store = store
        self._owns_store = owns_store
        migrate_predictions(store)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._retry_cap = retry_cap_s
        self._clock = clock
        self._stop = threading.Event()
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.invalid = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="rtml-prediction-log", daemon=True)
        self._thread.start()

    # --- the request path -------------------------------------------------------------------

    def record(self, prediction) -> bool:
        """Queue one served prediction; False (and counted in ``dropped``) when the queue is full or closed."""
        if self._closed:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait((self._clock(), prediction))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # --- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting, write what is queued (retrying up to ``timeout``), stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout)
        if self._owns_store:
            self._store.close()

    async def aclose(self, timeout: float | None = 30.0) -> None:
        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- the writer thread ------------------------------------------------------------------

    def _take_batch(self) -> list[dict]:
        rows: list[dict] = []
        deadline = time.monotonic() + self._interval
        while len(rows) < self._batch_size:
            wait = deadline - time.monotonic()
            try:
                if self._stop.is_set() or wait <= 0:
                    served_ns, item = self._queue.get_nowait()
                else:  # short slices, so close() is heard at once
                    served_ns, item = self._queue.get(timeout=min(wait, _WAKE_S))
            except queue.Empty:
                if self._stop.is_set() or time.monotonic() >= deadline:
                    break
                continue
            try:
                rows.append(prediction_row(item, served_ns))
            except (TypeError, ValueError) as error:
                self.invalid += 1
                log.warning("prediction not logged: %s", error)
        return rows

    def _write(self, rows: list[dict]) -> bool:
        try:
            with self._store.begin_write() as conn:
                conn.execute(predictions.insert(), rows)
        except sa.exc.SQLAlchemyError as error:
            self.write_errors += 1
            log.warning("prediction log write failed (%d rows kept for retry): %s", len(rows), error)
            return False
        self.written += len(rows)
        return True

    def _run(self) -> None:
        pending: list[dict] = []
        attempt = 0
        stop_deadline = None
        while True:
            if not pending:
                pending = self._take_batch()
            if pending:
                if self._write(pending):
                    pending, attempt = [], 0
                else:
                    attempt += 1
                    if self._stop.is_set():
                        stop_deadline = stop_deadline or time.monotonic() + self._retry_cap
                        if time.monotonic() > stop_deadline:
                            self.dropped += len(pending) + self._queue.qsize()
                            return
                    self._stop.wait(min(self._retry_cap, 0.1 * 2**attempt))
            elif self._stop.is_set() and self._queue.empty():
                return


def read_predictions(store: OfflineStore, *, exchange: str | None = None, symbol: str | None = None,
                     timeframe: str | None = None, start_ns: int | None = None,
                     end_ns: int | None = None) -> pd.DataFrame:
    """Logged predictions whose feature time is in [start, end), ordered by it.

    Columns: ``served_time`` and ``feature_time`` (UTC), then the table's columns.
    """
    c = predictions.c
    where = [column == value for column, value in
             ((c.exchange, exchange), (c.symbol, symbol), (c.timeframe, timeframe)) if value is not None]
    if start_ns is not None:
        where.append(c.feature_time_ns >= start_ns)
    if end_ns is not None:
        where.append(c.feature_time_ns < end_ns)
    columns = [col for col in predictions.columns if col.name != "id"]
    with store.connect() as conn:
        if not sa.inspect(conn).has_table("predictions"):
            rows = []
        else:
            rows = conn.execute(sa.select(*columns).where(*where).order_by(c.feature_time_ns, c.id)).all()
    frame = pd.DataFrame(rows, columns=[col.name for col in columns])
    frame.insert(0, "feature_time", pd.to_datetime(frame["feature_time_ns"].astype(np.int64), utc=True))
    frame.insert(0, "served_time", pd.to_datetime(frame["served_ns"].astype(np.int64), utc=True))
    return frame


def newest_prediction_ns(store: OfflineStore) -> int | None:
    """The newest logged feature time (ns), or None when nothing was logged."""
    with store.connect() as conn:
        if not sa.inspect(conn).has_table("predictions"):
            return None
        value = conn.execute(sa.select(sa.func.max(predictions.c.feature_time_ns))).scalar()
    return None if value is None else int(value)
