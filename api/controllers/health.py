"""GET /health (alive), GET /ready (champion loaded, online store reachable), GET /metrics."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST

from api.schemas import HealthStatus

READY_PING_TIMEOUT_S = 2.0


@get("/health", tags=["operations"], summary="The process is alive")
async def health() -> HealthStatus:
    return HealthStatus(status="ok")


@get("/ready", tags=["operations"], summary="Champion loaded and online store reachable",
     responses=None)
async def ready(state: State) -> Response[HealthStatus]:
    checks: dict[str, str] = {}
    model = state.holder.current
    checks["champion"] = f"loaded {model.version}" if model else (
        f"not loaded: {state.holder.last_error}" if state.holder.last_error else "not loaded")
    try:
        alive = await asyncio.wait_for(asyncio.to_thread(state.service.store.ping), READY_PING_TIMEOUT_S)
        checks["online_store"] = "ok" if alive else "not answering"
    except Exception as error:  # noqa: BLE001 - reported, never raised
        alive = False
        checks["online_store"] = f"unreachable ({type(error).__name__})"
    ok = model is not None and alive
    return Response(HealthStatus(status="ready" if ok else "not_ready", checks=checks),
                    status_code=200 if ok else 503)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(state: State) -> Response[bytes]:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
