"""The embedded Dagster instance: SQLite run and event storage under RTML_HOME/dagster_home.

``rtml demo --record-runs`` records its runs there, so ``DAGSTER_HOME=.rtml/dagster_home
dagster dev -w workspace.yaml`` shows them afterwards. Deployments use the repository's dagster.yaml
(PostgreSQL) instead.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from rtml_core.settings import Settings

EMBEDDED_DAGSTER_YAML = """\
# Written by rtml: Dagster's SQLite defaults for runs, events and schedules; no telemetry.
telemetry:
  enabled: false
"""


def embedded_dagster_home(settings: Settings) -> Path:
    """``RTML_HOME/dagster_home``, created. Its dagster.yaml only turns telemetry off, so
    Dagster's SQLite storage defaults apply (the repository's dagster.yaml is for PostgreSQL)."""
    home = (settings.home / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_DAGSTER_YAML)
    return home


def embedded_instance(settings: Settings, *, persistent: bool = False) -> dg.DagsterInstance:
    """The demo's Dagster instance (close it when done).

    ``persistent=False``: runs and events in memory (fast; the data itself is in the offline
    store either way). ``persistent=True``: SQLite files in ``embedded_dagster_home``, so the
    runs, materializations and check results show in ``dagster dev`` afterwards; every event
    is a committed SQLite transaction, which makes a 700-partition backfill minutes slower.
    """
    home = embedded_dagster_home(settings)
    if persistent:
        return dg.DagsterInstance.from_config(str(home))
    return dg.DagsterInstance.ephemeral(tempdir=str(home), settings={"telemetry": {"enabled": False}})


def recording_instance(settings: Settings) -> dg.DagsterInstance:
    """The instance a command records its runs in (close it when done): ``DAGSTER_HOME``'s when
    that is set, else the persistent embedded one that ``rtml up`` and ``dagster dev`` show."""
    import os

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return embedded_instance(settings, persistent=True)
