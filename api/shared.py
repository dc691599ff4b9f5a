"""Counters every worker shares, through the online store (Redis), when the API runs several workers.

``rtml serve --workers N`` sets ``RTML_API_WORKERS``; with N > 1 and an online store that keeps
shared counters (``OnlineStore.acount``: Redis), limits counted here hold for the whole server.
Otherwise (one worker, SQLite, Redis down) callers fall back to their per-worker counts.
"""

from __future__ import annotations

from litestar.types import Scope

from rtml_core.errors import UnsupportedOperation
from rtml_core.stores.online_base import OnlineStoreUnavailable


def shared_store(scope: Scope):
    """The online store when several workers must share counters, else None."""
    state = scope["litestar_app"].state
    settings, service = state.get("settings"), state.get("service")
    if settings is None or service is None or settings.api_workers <= 1:
        return None
    return service.store


async def count_shared(store, name: str, window_s: int) -> int | None:
    """One hit in the shared window ``name``; its count, or None when it cannot be counted."""
    if store is None:
        return None
    try:
        return await store.acount(name, window_s)
    except (UnsupportedOperation, OnlineStoreUnavailable):
        return None
