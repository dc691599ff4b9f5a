"""Prometheus metrics of the broker processes (``rtml_broker_*``), in an injected registry.

The ingest, feature-service and archive processes each register the ones they move; all
share these names so one dashboard covers the layout.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class BrokerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.published = Counter("rtml_broker_published", "Messages JetStream acknowledged (stored).",
                                 ["kind"], registry=r)
        self.published_trades = Counter("rtml_broker_published_trades", "Trades in stored messages.", registry=r)
        self.duplicates = Counter("rtml_broker_publish_duplicates",
                                  "Publishes JetStream dropped as duplicates (same Nats-Msg-Id).", registry=r)
        self.publish_errors = Counter("rtml_broker_publish_errors", "Failed publish attempts (retried).", registry=r)
        self.buffered = Gauge("rtml_broker_buffered", "Messages waiting to be published (broker slow or down).",
                              registry=r)
        self.dropped = Counter("rtml_broker_dropped", "Messages lost: the publish buffer was full.", ["kind"],
                               registry=r)
        self.dropped_trades = Counter("rtml_broker_dropped_trades", "Trades in messages lost to a full buffer.",
                                      registry=r)
        self.connected = Gauge("rtml_broker_connected", "1 while connected to NATS.", registry=r)
        self.consumed = Counter("rtml_broker_consumed", "Messages received from JetStream.", ["consumer"],
                                registry=r)
        self.acknowledged = Counter("rtml_broker_acknowledged", "Messages acknowledged (durably processed).",
                                    ["consumer"], registry=r)
        self.redelivered = Counter("rtml_broker_redelivered",
                                   "Messages received again (redelivered after a restart, failover or ack wait).",
                                   ["consumer"], registry=r)
        self.consumer_lag = Gauge("rtml_broker_consumer_lag", "Messages of the stream the consumer has not "
                                  "received yet (JetStream num_pending).", ["consumer"], registry=r)
        self.ack_pending = Gauge("rtml_broker_ack_pending", "Messages received, not yet acknowledged.",
                                 ["consumer"], registry=r)
        self.added_lag = Histogram("rtml_broker_added_lag_seconds",
                                   "From the ingestor's publish to the consumer having processed the batch.",
                                   buckets=_LAG_BUCKETS, registry=r)
        self.owned_markets = Gauge("rtml_broker_owned_markets", "Markets this feature service holds the lease of.",
                                   registry=r)
        self.lease_changes = Counter("rtml_broker_lease_changes", "Market leases taken or given up.", ["change"],
                                     registry=r)
        self.archived_trades = Counter("rtml_broker_archived_trades", "Trades written to the offline store.",
                                       registry=r)
