"""GET /health (alive), GET /ready (champion loaded, online store reachable), GET /metrics."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST

from api.readiness import CHAMPION_LOAD_FAILED, NO_CHAMPION, ONLINE_STORE_UNAVAILABLE, REGISTRY_UNAVAILABLE
from api.schemas import HealthStatus

READY_PING_TIMEOUT_S = 2.0


@get("/health", tags=["operations"], summary="The process is alive")
async def health() -> HealthStatus:
    return HealthStatus(status="ok")


@get("/ready", tags=["operations"], summary="Champion loaded and online store reachable",
     responses=None)
async def ready(state: State) -> Response[HealthStatus]:
    """503 ``not_ready`` when predictions cannot be served (no champion, online store down);
    200 ``degraded`` when they can but the registry is down or a new champion failed to load;
    reasons are stable codes, never exception text."""
    reasons: list[str] = []
    checks: dict[str, str] = {}
    source = state.champion_source if "champion_source" in state else None
    if source is not None and getattr(source, "registry_down", False):
        reasons.append(REGISTRY_UNAVAILABLE)
    checks["registry"] = "unreachable" if REGISTRY_UNAVAILABLE in reasons else "ok"
    model = state.holder.current
    checks["champion"] = f"loaded {model.version}" if model else "not loaded"
    if model is None:
        reasons.append(NO_CHAMPION)
    if source is not None and getattr(source, "load_failed", False):
        reasons.append(CHAMPION_LOAD_FAILED)
        checks["champion"] += "; the newest champion failed to load"
    try:
        alive = await asyncio.wait_for(asyncio.to_thread(state.service.store.ping), READY_PING_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - reported as a reason, never raised
        alive = False
    checks["online_store"] = "ok" if alive else "unreachable"
    if not alive:
        reasons.append(ONLINE_STORE_UNAVAILABLE)
    serving = model is not None and alive
    status = "not_ready" if not serving else "degraded" if reasons else "ready"
    return Response(HealthStatus(status=status, checks=checks, reasons=reasons),
                    status_code=200 if serving else 503)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(state: State) -> Response[bytes]:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
