"""The broker layout: ingest -> NATS JetStream -> feature service(s) and archive (docs/broker.md).

``ingest``: sources -> ``RTML_MARKET_DATA`` (``rtml.trades.<exchange>.<symbol>``,
``rtml.book.<exchange>.<symbol>``); ``features``: durable consumers per market, leased
between processes; ``archive``: trades into the offline store. The in-process sidecar
(``rtml_stream.app``) stays the embedded default.
"""
