"""GET /v1/features/{symbol}: the online feature row the API would predict from."""

from __future__ import annotations

import math
import time

from litestar import Controller, get
from litestar.datastructures import State

from api.schemas import FeaturesResponse
from api.errors import ERROR_RESPONSES
from api.serving import PredictionService, iso_time
from rtml_core.features.microstructure import CLOSE_FIELD, PREFIX


class FeaturesController(Controller):
    path = "/v1/features"
    tags = ["features"]

    @get("/{symbol:str}", summary="The latest online feature row of a symbol, with its event time",
         responses=ERROR_RESPONSES)
    async def latest(self, symbol: str, state: State, exchange: str | None = None,
                     timeframe: str | None = None) -> FeaturesResponse:
        service: PredictionService = state.service
        exchange, symbol, timeframe = service.target(service.holder.current, symbol, exchange, timeframe)
        market = await service.read_market(exchange, symbol, timeframe)
        row = market.row
        close_s = market.live.get(CLOSE_FIELD)
        return FeaturesResponse(
            exchange=row.exchange, symbol=row.symbol, timeframe=row.timeframe,
            feature_set_version=row.feature_set_version, event_time=iso_time(row.event_time_ns),
            event_time_ns=row.event_time_ns,
            feature_age_ms=round((time.time_ns() - row.event_time_ns) / 1e6, 3),
            values={k: (v if v is not None and math.isfinite(v) else None) for k, v in row.values.items()},
            microstructure={k: (v if math.isfinite(v) else None) for k, v in market.live.items()
                            if k.startswith(PREFIX) and k != CLOSE_FIELD},
            microstructure_close=iso_time(int(close_s) * 1_000_000_000) if close_s is not None else None,
        )
