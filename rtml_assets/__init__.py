"""rtml's Dagster code location: ``rtml_assets.definitions`` wires the domain folders."""
