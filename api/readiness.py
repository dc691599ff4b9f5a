"""Readiness without a store: the champion source opened lazily and guarded, reasons as codes.

The API starts whether or not the registry's database answers: ``GuardedChampionSource`` opens
the registry on first use and again after every failure (the champion poller keeps calling),
and records why the last call failed. ``/ready`` reports those reasons as stable codes and
never the exception text (hosts, users, paths stay in the server log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rtml_core.errors import RtmlError

log = logging.getLogger(__name__)

REGISTRY_UNAVAILABLE = "registry_unavailable"
ONLINE_STORE_UNAVAILABLE = "online_store_unavailable"
NO_CHAMPION = "no_champion"
CHAMPION_LOAD_FAILED = "champion_load_failed"


class RegistryUnavailable(RtmlError):
    """The model registry's database did not answer (or cannot be opened)."""


class ChampionLoadFailed(RtmlError):
    """The champion the registry names could not be loaded or verified (the old one keeps serving)."""


def _is_connection_failure(error: BaseException) -> bool:
    if isinstance(error, (OSError, TimeoutError, RegistryUnavailable)):
        return True
    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return False
    return isinstance(error, DBAPIError) and error.connection_invalidated or type(error).__name__ in (
        "OperationalError", "InterfaceError")


class GuardedChampionSource:
    """A ``ChampionSource`` opened on demand that remembers why it last failed.

    ``open_source``: builds the real source (e.g. the registry over the offline database);
    called again on the next use after it failed. ``on_load_failure(True)`` is called for each
    failed load, ``on_load_failure(False)`` when loads work again (metrics); ``served_marker``
    returns the marker of the model being served.
    """

    def __init__(self, open_source: Callable[[], Any], *,
                 on_load_failure: Callable[[bool], None] | None = None,
                 served_marker: Callable[[], Any] | None = None) -> None:
        self._open = open_source
        self._served_marker = served_marker
        self._inner = None
        self._on_load_failure = on_load_failure
        self.registry_down = False
        self._load_failed = False

    @property
    def load_failed(self) -> bool:
        """True while the registry's champion fails to load (the previous one keeps serving)."""
        return self._load_failed

    @load_failed.setter
    def load_failed(self, failed: bool) -> None:
        if failed != self._load_failed or failed:
            self._load_failed = failed
            if self._on_load_failure is not None:
                self._on_load_failure(failed)

    def _source(self):
        if self._inner is None:
            try:
                self._inner = self._open()
            except Exception as error:  # noqa: BLE001 - any failure to open is "unavailable"
                self.registry_down = True
                log.warning("model registry cannot be opened: %s: %s", type(error).__name__, error)
                raise RegistryUnavailable("the model registry cannot be opened") from error
        return self._inner

    @property
    def inner(self):
        """The real source, or None while it could not be opened."""
        return self._inner

    def champion_marker(self, *args, **kwargs):
        source = self._source()
        try:
            marker = source.champion_marker(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - classified, logged, reported by /ready
            self.registry_down = True
            log.warning("model registry unreachable: %s: %s", type(error).__name__, error)
            raise RegistryUnavailable("the model registry is unreachable") from error
        self.registry_down = False
        if self.load_failed and self._served_marker is not None and marker == self._served_marker():
            self.load_failed = False  # the registry names the served model again (a rollback)
        return marker

    def load_champion(self, *args, **kwargs):
        source = self._source()
        try:
            model = source.load_champion(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - classified, logged, reported by /ready
            if _is_connection_failure(error):
                self.registry_down = True
                log.warning("model registry unreachable while loading: %s: %s", type(error).__name__, error)
                raise RegistryUnavailable("the model registry is unreachable") from error
            self.load_failed = True
            log.error("champion failed to load; the previous one keeps serving: %s: %s",
                      type(error).__name__, error)
            raise ChampionLoadFailed("the champion failed to load") from error
        if self._load_failed:
            self.load_failed = False
        return model

    def list_models(self, *args, **kwargs):
        try:
            return self._source().list_models(*args, **kwargs)
        except RegistryUnavailable:
            raise
        except Exception as error:  # noqa: BLE001
            if _is_connection_failure(error):
                self.registry_down = True
                raise RegistryUnavailable("the model registry is unreachable") from error
            raise

    def __getattr__(self, name: str):
        if name.startswith("_"):  # never open the registry for private or dunder lookups (copy, pickle)
            raise AttributeError(name)
        return getattr(self._source(), name)

    def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None and hasattr(inner, "close"):
            inner.close()
