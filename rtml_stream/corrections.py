"""Late trades recorded as corrections in the offline store, gaps too long to fill, and the
sidecar's offline log sink.

A trade later than the allowed lateness is never folded into a candle that was already served
online and never silently dropped: it lands in ``trade_corrections`` (one row per timeframe
whose window had closed). When the pipeline still holds that closed window (its last
``keep_closed`` ones), the late trade is also applied offline: the corrected candle replaces
the stored one and the feature rows from that candle on are rebuilt in batch
(``compute_features`` over the market's stored candles), once everything the stream logged
before it is stored.
A gap longer than ``RTML_STREAM_MAX_FILL_CANDLES`` lands in ``candle_gaps``.
The tables (``rtml_core.stores.stream_tables``) belong to the ``stream`` component of the offline
store's migration mechanism.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence

from rtml_core.features import DEFAULT_FEATURE_SET, FeatureSet, compute_features
from rtml_core.features.microstructure import is_microstructure_version
from rtml_core.schemas import Candle
from rtml_core.stores.offline_base import OfflineStore
from rtml_core.stores.stream_tables import (
    STREAM_COMPONENT,
    STREAM_MIGRATIONS,
    candle_gaps,
    insert_new,
    read_market_rows,
    trade_corrections,
)
from rtml_stream.pipeline import Correction, Gap, Output
from rtml_stream.sinks import OfflineLogSink, _OfflineBatch


def migrate_stream_tables(store: OfflineStore) -> list[int]:
    """Create or upgrade the sidecar's own tables in an offline store (idempotent)."""
    return store.apply_migrations(STREAM_COMPONENT, STREAM_MIGRATIONS)


def write_corrections(store: OfflineStore, corrections: Sequence[Correction], recorded_at_ns: int | None = None) -> int:
    """Insert corrections once each (a retry or a replay writes nothing twice); return rows inserted."""
    if not corrections:
        return 0
    now = time.time_ns() if recorded_at_ns is None else recorded_at_ns
    rows = [
        {
            "exchange": c.trade.exchange, "symbol": c.trade.symbol, "timeframe": c.timeframe,
            "trade_id": c.trade.trade_id, "time_ns": c.trade.time_ns, "price": c.trade.price,
            "size": c.trade.size, "side": c.trade.side, "window_start_ns": c.window_start_ns,
            "watermark_ns": c.watermark_ns if c.watermark_ns is not None else c.window_start_ns,
            "recorded_at_ns": now,
        }
        for c in corrections
    ]
    return insert_new(store, trade_corrections, rows, ("exchange", "symbol", "timeframe", "trade_id"))


def write_gaps(store: OfflineStore, gaps: Sequence[Gap], recorded_at_ns: int | None = None) -> int:
    """Insert gaps once each; return rows inserted."""
    if not gaps:
        return 0
    now = time.time_ns() if recorded_at_ns is None else recorded_at_ns
    rows = [{"exchange": g.exchange, "symbol": g.symbol, "timeframe": g.timeframe, "from_ns": g.from_ns,
             "to_ns": g.to_ns, "candles": g.candles, "recorded_at_ns": now} for g in gaps]
    return insert_new(store, candle_gaps, rows, ("exchange", "symbol", "timeframe", "from_ns"))


def read_gaps(store: OfflineStore, exchange: str | None = None, symbol: str | None = None) -> list[dict]:
    """Recorded gaps (oldest first) as plain dicts."""
    return read_market_rows(store, candle_gaps, [candle_gaps.c.from_ns], exchange, symbol)


def read_corrections(store: OfflineStore, exchange: str | None = None, symbol: str | None = None) -> list[dict]:
    """Recorded corrections (oldest trade first) as plain dicts."""
    c = trade_corrections.c
    return read_market_rows(store, trade_corrections, [c.time_ns, c.trade_id], exchange, symbol)


def apply_corrected(store: OfflineStore, candles: Sequence[Candle], feature_set: FeatureSet, version: str) -> int:
    """Rewrite corrected candles and rebuild the feature rows from the earliest of each market's
    on (batch values over the stored candles); return the feature rows rewritten."""
    if not candles:
        return 0
    store.write_candles(candles)  # an upsert: the corrected candle replaces the stored one
    first: dict[tuple[str, str, str], int] = {}
    for candle in candles:
        key = (candle.exchange, candle.symbol, candle.timeframe)
        first[key] = min(first.get(key, candle.start_ns), candle.start_ns)
    rewritten = 0
    for (exchange, symbol, timeframe), start_ns in first.items():
        stored = store.read_candles(exchange, symbol, timeframe)
        if stored.empty:
            continue
        features = compute_features(stored, feature_set)
        starts = features["time"].astype("int64")
        part = features[starts >= start_ns].reset_index(drop=True)
        if part.empty:
            continue
        end_ns = int(part["time"].iloc[-1].value) + 1
        rewritten += store.replace_features(part, exchange=exchange, symbol=symbol, timeframe=timeframe,
                                            feature_set_version=version, start_ns=start_ns, end_ns=end_ns)
    return rewritten


class StreamOfflineSink(OfflineLogSink):
    """``OfflineLogSink`` plus corrections, corrected candles and gaps: candles, feature rows, late
    trades, candles a late trade changed (rewritten, rows rebuilt) and gaps too long to fill,
    batched and retried. ``feature_set`` is the pipeline's (for the rebuilt rows)."""

    def __init__(self, offline_store, *, feature_set: FeatureSet = DEFAULT_FEATURE_SET, **options) -> None:
        super().__init__(offline_store, **options)
        self.feature_set = feature_set
        self._corrections: deque[Correction] = deque()
        self._gaps: deque[Gap] = deque()
        self._corrected: deque[Candle] = deque()
        self._migrated = False
        self.rows_rebuilt = 0

    @property
    def pending(self) -> int:
        return super().pending + len(self._corrections) + len(self._gaps) + len(self._corrected)

    def add_output(self, out: Output) -> None:
        """Everything a pipeline drain logs offline: candles, feature and microstructure rows,
        corrections, gaps and the closed candles a late trade changed."""
        if out.candles:
            self.add_candles(out.candles)
        if out.rows:
            self.add_rows(out.rows)
        if out.microstructure:
            self.add_rows(out.microstructure)
        if out.corrections:
            self.add_corrections(out.corrections)
        if out.gaps:
            self.add_gaps(out.gaps)
        if out.corrected:
            self.add_corrected(out.corrected)

    def add_corrected(self, candles: Iterable[Candle]) -> None:
        before = len(self._corrected)
        self._corrected.extend(candles)
        self._added(len(self._corrected) - before, "corrected")

    def add_corrections(self, corrections: Iterable[Correction]) -> None:
        before = len(self._corrections)
        self._corrections.extend(corrections)
        self._added(len(self._corrections) - before, "corrections")

    def add_gaps(self, gaps: Iterable[Gap]) -> None:
        before = len(self._gaps)
        self._gaps.extend(gaps)
        self._added(len(self._gaps) - before, "gaps")

    def _take(self, now: float):
        due = self.next_due()
        if due is None or now < due:
            return None
        corrections = [self._corrections.popleft() for _ in range(min(self.max_batch, len(self._corrections)))]
        gaps = [self._gaps.popleft() for _ in range(min(self.max_batch, len(self._gaps)))]
        if super().pending:
            inner = super()._take(now)
        else:
            inner = _OfflineBatch([], [])
        corrected: list[Candle] = []
        if not self._candles and not self._rows:  # written after everything logged before them
            corrected = list(self._corrected)
            self._corrected.clear()
        if not self.pending:
            self._first_pending_at = None
        return inner, corrections, gaps, corrected

    def _write(self, batch) -> None:
        inner, corrections, gaps, corrected = batch
        if self.store is None:
            self.store = self._open_store()
        if (corrections or gaps) and not self._migrated:
            migrate_stream_tables(self.store)
            self._migrated = True
        if corrections:
            write_corrections(self.store, corrections)
            self.stats.count_written("corrections", len(corrections))
            corrections.clear()
        if gaps:
            write_gaps(self.store, gaps)
            self.stats.count_written("gaps", len(gaps))
            gaps.clear()
        super()._write(inner)
        if corrected:
            versions = [v for v in self.feature_specs if not is_microstructure_version(v)] or [self.feature_set.version]
            for version in versions:
                self.rows_rebuilt += apply_corrected(self.store, corrected, self.feature_set, version)
            self.stats.count_written("corrected", len(corrected))
            corrected.clear()

    def _size(self, batch) -> int:
        inner, corrections, gaps, corrected = batch
        return super()._size(inner) + len(corrections) + len(gaps) + len(corrected)

    def _queued(self) -> dict[str, int]:
        return {**super()._queued(), "corrections": len(self._corrections), "gaps": len(self._gaps),
                "corrected": len(self._corrected)}

    def _kinds(self, batch) -> dict[str, int]:
        inner, corrections, gaps, corrected = batch
        return {**super()._kinds(inner), "corrections": len(corrections), "gaps": len(gaps),
                "corrected": len(corrected)}

    def _requeue(self, batch) -> None:
        inner, corrections, gaps, corrected = batch
        self._corrections.extendleft(reversed(corrections))
        self._gaps.extendleft(reversed(gaps))
        self._corrected.extendleft(reversed(corrected))
        super()._requeue(inner)
        if self.pending:
            self._first_pending_at = float("-inf")

    def _rejected(self, batch, error) -> None:
        if isinstance(batch, tuple):
            inner, corrections, gaps, corrected = batch
            self.stats.count_dropped("rejected", len(corrections) + len(gaps) + len(corrected))
            batch = inner
        super()._rejected(batch, error)

    def _enforce_bound(self) -> None:
        while self.pending > self.max_buffer:
            if self._rows or self._candles:
                self._drop_one_logged()
            elif self._corrections:
                self._corrections.popleft()
                self.stats.count_dropped("corrections")
            elif self._corrected:
                self._corrected.popleft()
                self.stats.count_dropped("corrected")
            else:
                self._gaps.popleft()
                self.stats.count_dropped("gaps")

