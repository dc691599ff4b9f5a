"""The online features: an external asset the streaming sidecar materializes (group ``online``)."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from rtml_core import online_asset


def online_features_spec(fail_after: timedelta = online_asset.FAIL_AFTER,
                         warn_after: timedelta = online_asset.WARN_AFTER) -> dg.AssetSpec:
    """The external asset (no function: the sidecar reports it), with a time-window freshness policy."""
    return dg.AssetSpec(
        online_asset.ONLINE_FEATURES_ASSET,
        group_name=online_asset.ONLINE_GROUP,
        description=online_asset.DESCRIPTION,
        kinds=set(online_asset.KINDS),
        metadata=dict(online_asset.METADATA),
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=fail_after, warn_window=warn_after),
    )
