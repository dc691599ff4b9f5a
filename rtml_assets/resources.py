"""Dagster resources: thin ConfigurableResource wrappers over the rtml_core stores."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from rtml_core.stores.offline_base import OfflineStore


class OfflineStoreResource(dg.ConfigurableResource):
    """The offline store (SQLite file or PostgreSQL) at ``url``, opened once per step."""

    url: str = Field(description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db")

    _store: OfflineStore | None = PrivateAttr(default=None)

    def get_store(self) -> OfflineStore:
        """The open store (schema migrated), created on first use within the step."""
        if self._store is None:
            from rtml_core.stores.offline import open_offline_store

            self._store = open_offline_store(self.url)
        return self._store

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
