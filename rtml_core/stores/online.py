"""Open the online store a URL names: Redis (``redis://``, ``rediss://``, ``unix://``), Redis Cluster
(``redis+cluster://``, ``rediss+cluster://``) or SQLite (``sqlite:///path``)."""

from __future__ import annotations

from rtml_core.errors import InputError
from rtml_core.stores.online_base import OnlineStore


def open_online_store(url: str, prefix: str = "rtml", history: int = 100) -> OnlineStore:
    """``redis://host:6379/0`` or ``redis+cluster://seed:7000`` -> RedisOnlineStore;
    ``sqlite:///path/online.sqlite`` -> SqliteOnlineStore.

    ``prefix`` starts every Redis key (SQLite keeps one store per file and ignores it);
    ``history`` is how many newest rows per market and timeframe are kept.
    """
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from rtml_core.stores.online_redis import RedisOnlineStore

        return RedisOnlineStore(url, prefix, history)
    if scheme == "sqlite":
        from rtml_core.stores.online_sqlite import SqliteOnlineStore, sqlite_path

        return SqliteOnlineStore(sqlite_path(url), history)
    raise InputError(f"online store URL {url!r}: use redis://, rediss://, unix://, "
                     "redis+cluster:// or sqlite:///path")
