"""The Litestar app: ``create_app(settings, *, online_store=None, registry=None)``.

The lifespan owns the clients it opens (online store, registry) and the champion poller.
Passed-in clients stay the caller's to close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig

from api.auth import ApiKeyMiddleware, check_auth_config, parse_keys
from api.bodylimit import BodyLimitMiddleware
from api.champion import ChampionHolder, ChampionSource, RegistryChampionSource, poll_champion, refresh_champion
from api.controllers.features import FeaturesController
from api.controllers.health import health, metrics, ready
from api.controllers.models import ModelsController
from api.controllers.predict import PredictController, prediction_stream
from api.errors import ApiError, api_error_handler, http_error_handler, internal_error_handler
from api.metrics import ApiMetrics, MetricsMiddleware
from api.ratelimit import rate_limit_config
from api.readiness import GuardedChampionSource
from api.serving import PredictionService
from api.sockets import SocketGate, UpdateHub
from rtml_core.settings import Settings

log = logging.getLogger(__name__)


def _champion_source(registry) -> ChampionSource:
    if isinstance(registry, ChampionSource):
        return registry
    return RegistryChampionSource(registry)


async def _open_prediction_log(offline_url: str, *, quiet: bool = False):
    """The prediction log on the offline store, or None while the store cannot be opened."""
    try:
        from rtml_core.prediction_log import PredictionLog
        from rtml_core.stores.offline import open_offline_store

        def open_log() -> PredictionLog:
            return PredictionLog(open_offline_store(offline_url), owns_store=True)

        return await asyncio.to_thread(open_log)
    except Exception as error:  # noqa: BLE001 - serving matters more than logging
        if not quiet:
            log.warning("predictions are not logged until the offline store answers: %s: %s",
                        type(error).__name__, error)
        return None


def create_app(settings: Settings, *, online_store=None, registry=None, prediction_log=None) -> Litestar:
    """Build the API. ``registry``: a ``ModelRegistry`` or any ``ChampionSource``; None opens them.

    ``prediction_log``: a ``rtml_core.prediction_log.PredictionLog``; None opens one on the offline
    store when ``settings.api_log_predictions`` (a failure to open it is logged, never fatal).
    """
    keys = parse_keys(settings.api_keys)
    check_auth_config(keys, settings.api_auth_disabled)
    metrics_ = ApiMetrics()
    holder = ChampionHolder()

    def on_swap(previous, current) -> None:
        metrics_.serving(current and current.version, current and current.kind,
                         current and current.predictor.path)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned: list = []
        owned_log = None
        store = online_store
        if store is None:
            from rtml_core.stores.online import open_online_store

            store = open_online_store(settings.resolved_online_url, settings.online_prefix)
            owned.append(store)
        if registry is None:
            def open_source() -> ChampionSource:  # retried by the poller until the database answers
                from rtml_core.registry import ModelRegistry
                from rtml_core.stores.offline import open_offline_store

                return _champion_source(ModelRegistry(open_offline_store(settings.resolved_offline_url),
                                                      settings.resolved_artifacts_dir, owns_store=True))
        else:
            def open_source() -> ChampionSource:
                return _champion_source(registry)
        source = GuardedChampionSource(
            open_source, on_load_failure=metrics_.champion_load_failed,
            served_marker=lambda: holder.current.marker if holder.current is not None else None)
        if registry is None:
            owned.append(source)
        app.state.champion_source = source
        predictions = prediction_log
        log_opener = None
        if predictions is None and settings.api_log_predictions:
            predictions = owned_log = await _open_prediction_log(settings.resolved_offline_url)
        app.state.service = PredictionService(settings, store, holder, metrics_, predictions)
        if predictions is None and settings.api_log_predictions:  # the offline store is down: retry
            async def open_later() -> None:
                nonlocal owned_log
                attempt = 0
                while owned_log is None:
                    attempt += 1
                    await asyncio.sleep(min(30.0, settings.api_model_poll_s * 2 ** min(attempt, 4)))
                    owned_log = await _open_prediction_log(settings.resolved_offline_url, quiet=True)
                app.state.service.prediction_log = owned_log
                log.info("predictions are logged from now on (the offline store answers)")

            log_opener = asyncio.create_task(open_later())
        app.state.hub = UpdateHub(store)
        try:
            await refresh_champion(holder, source, on_swap)
        except Exception as error:  # noqa: BLE001 - serve 503s and keep polling; /ready says why
            holder.last_error = f"{type(error).__name__}: {error}"[:300]
            log.warning("no champion at start: %s", holder.last_error)
        poller = asyncio.create_task(poll_champion(holder, source, settings.api_model_poll_s, on_swap))
        gc.freeze()  # what start-up loaded lives as long as the process: keep it out of every GC pass
        try:
            yield
        finally:
            for task in (poller, log_opener):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (poller, log_opener) if t is not None), return_exceptions=True)
            await app.state.hub.aclose()
            app.state.service.flush_log()
            await store.aclose()
            if owned_log is not None:
                await owned_log.aclose()
            for client in owned:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                    log.exception("closing %r", client)
            metrics_.worker_exited()

    # outermost first: metrics count every answer (413, 401, 429 too); an oversized body is
    # refused before anything reads it
    middleware: list = [MetricsMiddleware, DefineMiddleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)]
    if keys and not settings.api_auth_disabled:
        middleware.append(DefineMiddleware(ApiKeyMiddleware, keys=keys, failed_limit=settings.api_failed_key_limit))
    if settings.api_rate_limit > 0:
        middleware.append(rate_limit_config(settings.api_rate_limit).middleware)
    sockets = SocketGate(max_open=settings.api_max_ws, max_open_per_client=settings.api_max_ws_per_key,
                         connects_per_s=settings.api_ws_connect_rate)

    return Litestar(
        route_handlers=[PredictController, FeaturesController, ModelsController, prediction_stream,
                        health, ready, metrics],
        lifespan=[lifespan],
        middleware=middleware,
        state=State({"metrics": metrics_, "holder": holder, "settings": settings, "sockets": sockets}),
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        request_max_body_size=settings.api_max_body_bytes,
        openapi_config=OpenAPIConfig(title="rtml prediction API", version="1.0.0", path="/schema"),
        debug=False,
    )


def app_from_environment() -> Litestar:
    """Entry point for servers (``rtml serve``, ``uvicorn --factory``): Settings from RTML_*."""
    return create_app(Settings())
