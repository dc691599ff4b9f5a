"""The online features as an asset: what the stream reports and the Dagster code location shows.

The sidecar materializes it (``rtml_stream.dagster_report``); ``rtml_assets.online`` declares
it as an external asset with a freshness policy. Both read the facts from here.
"""

from __future__ import annotations

from datetime import timedelta

ONLINE_FEATURES_ASSET = "online_features"
ONLINE_GROUP = "online"
DESCRIPTION = (
    "Latest feature rows per (exchange, symbol, timeframe) in the online store, written by "
    "the streaming sidecar (`rtml stream`); reported as materializations with lag and row counts."
)
KINDS = frozenset({"redis"})
METADATA = {"writer": "rtml stream", "key_schema": "{prefix}:features:{exchange:symbol}:{timeframe}"}
WARN_AFTER = timedelta(minutes=3)
"""Stale (warn) after this long without a report."""
FAIL_AFTER = timedelta(minutes=10)
"""Stale (fail) after this long without a report."""
