"""Prometheus metrics of the streaming sidecar, registered in an injected CollectorRegistry.

One ``StreamMetrics`` per process (or per test, with its own registry). Sources count what
comes in and every fault they survive; the pipeline counts what goes out.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StreamMetrics:
    """Counters, gauges and histograms of ``rtml_stream``; names start with ``rtml_stream_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # sources
        self.trades_in = Counter(
            "rtml_stream_trades_in",
            "Trades received (live and backfilled).",
            ["exchange", "symbol"],
            registry=r,
        )
        self.book_updates_in = Counter(
            "rtml_stream_book_updates_in",
            "Book snapshots and diffs applied.",
            ["exchange", "symbol"],
            registry=r,
        )
        self.messages_in = Counter(
            "rtml_stream_messages_in", "WebSocket messages received.", ["exchange"], registry=r
        )
        self.reconnects = Counter(
            "rtml_stream_reconnects",
            "Connection attempts after a drop, timeout or failure.",
            ["exchange", "reason"],
            registry=r,
        )
        self.resubscribes = Counter(
            "rtml_stream_resubscribes",
            "Channel resubscriptions for a fresh snapshot.",
            ["exchange", "reason"],
            registry=r,
        )
        self.checksum_failures = Counter(
            "rtml_stream_checksum_failures",
            "Book checksum mismatches.",
            ["exchange", "symbol"],
            registry=r,
        )
        self.sequence_gaps = Counter(
            "rtml_stream_sequence_gaps",
            "Book or message sequence gaps (resynced).",
            ["exchange", "symbol"],
            registry=r,
        )
        self.malformed_messages = Counter(
            "rtml_stream_malformed_messages",
            "Messages counted, logged and skipped as malformed or unexpected.",
            ["exchange", "reason"],
            registry=r,
        )
        self.duplicate_trades = Counter(
            "rtml_stream_duplicate_trades",
            "Trades seen before (skipped).",
            ["exchange", "symbol"],
            registry=r,
        )
        self.gaps_backfilled = Counter(
            "rtml_stream_gaps_backfilled",
            "Trade-id gaps filled from REST.",
            ["exchange", "symbol"],
            registry=r,
        )
        self.trades_backfilled = Counter(
            "rtml_stream_trades_backfilled",
            "Trades fetched from REST to fill gaps.",
            ["exchange", "symbol"],
            registry=r,
        )
        self.gaps_unfilled = Counter(
            "rtml_stream_gaps_unfilled",
            "Trade-id gaps that could not be (fully) filled.",
            ["exchange", "symbol"],
            registry=r,
        )
        self.connected = Gauge(
            "rtml_stream_connected",
            "1 while the source's WebSocket is subscribed.",
            ["exchange"],
            registry=r,
        )
        self.last_message_time = Gauge(
            "rtml_stream_last_message_time_seconds",
            "Wall-clock time of the last message received.",
            ["exchange"],
            registry=r,
        )
        self.exchange_lag = Histogram(
            "rtml_stream_exchange_lag_seconds",
            "Receive time minus the exchange's event time of trades.",
            ["exchange"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        # pipeline
        self.candles_out = Counter(
            "rtml_stream_candles_out",
            "Candles closed.",
            ["exchange", "symbol", "timeframe"],
            registry=r,
        )
        self.feature_rows_out = Counter(
            "rtml_stream_feature_rows_out",
            "Feature rows written online.",
            ["exchange", "symbol", "timeframe"],
            registry=r,
        )
        self.late_trades = Counter(
            "rtml_stream_late_trades",
            "Trades later than the allowed lateness.",
            ["exchange", "symbol"],
            registry=r,
        )
        self.online_write_lag = Histogram(
            "rtml_stream_online_write_lag_seconds",
            "Exchange event time to the online write of its feature row.",
            ["exchange"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "rtml_stream_store_errors", "Failed store writes (retried).", ["store"], registry=r
        )
        self.buffered_items = Gauge(
            "rtml_stream_buffered_items",
            "Items waiting for an unavailable store.",
            ["store"],
            registry=r,
        )
        self.healthy = Gauge(
            "rtml_stream_healthy", "1 when sources and stores are healthy.", registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge sample (0.0 when never set), e.g. for tests."""
        metric = getattr(self, name)
        sample = metric._name + ("_total" if isinstance(metric, Counter) else "")
        found = self.registry.get_sample_value(sample, labels)
        return 0.0 if found is None else found

    def total(self, name: str, **labels: str) -> float:
        """Sum of a counter over every label set matching ``labels`` (e.g. all reasons)."""
        metric = getattr(self, name)
        wanted = metric._name + ("_total" if isinstance(metric, Counter) else "")
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == wanted and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total
