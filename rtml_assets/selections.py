"""Asset selections the command line and the tests share."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg


def without_freshness(defs: dg.Definitions, asset_names: Sequence[str]) -> dg.AssetSelection:
    """``asset_names`` with their quality checks but not their freshness checks (``*_fresh``):
    replayed or historical data is never fresh, and that is not a defect of the data."""
    keys = {dg.AssetKey(name) for name in asset_names}
    checks = [key for key in defs.resolve_asset_graph().asset_check_keys
              if key.asset_key in keys and not key.name.endswith("_fresh")]
    return dg.AssetSelection.assets(*asset_names).without_checks() | dg.AssetSelection.checks(*checks)
