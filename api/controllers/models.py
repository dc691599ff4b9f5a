"""GET /v1/models and GET /v1/models/champion, each optionally for one market."""

from __future__ import annotations

import asyncio

from litestar import Controller, get
from litestar.datastructures import State

from api.errors import ERROR_RESPONSES, ApiError
from api.schemas import ChampionInfo, ModelInfo, ModelList
from api.serving import PredictionService, canonical_symbol, checked_exchange, iso_time


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get(summary="Every registered model version (baselines included) with its market and metrics; "
                 "which ones are served", responses=ERROR_RESPONSES)
    async def list_models(self, state: State, exchange: str | None = None, symbol: str | None = None,
                          timeframe: str | None = None) -> ModelList:
        service: PredictionService = state.service
        exchange = checked_exchange(exchange) if exchange else None
        symbol = canonical_symbol(symbol) if symbol else None
        if timeframe:
            service.timeframe_s(timeframe)
        try:
            rows = await asyncio.to_thread(state.champion_source.list_models, exchange, symbol, timeframe or None)
        except Exception as error:  # noqa: BLE001 - the registry is down: a clear 503
            raise ApiError(503, "registry_unavailable",
                           f"the model registry is unreachable ({type(error).__name__})") from None
        served = service.holder.current
        champion = served.version if served else None
        if served is not None and (exchange or symbol or timeframe):
            matching = [m for key, m in served.markets.items()
                        if (exchange or key[0], symbol or key[1], timeframe or key[2]) == key]
            champion = matching[-1].version if len(matching) == 1 else None
        models = [ModelInfo(**row) for row in rows]
        return ModelList(champion=champion, models=models)

    @get("/champion", summary="The champion of a market (default: the most recently promoted one): version, "
                              "market, metrics, features, calibration, inference path",
         responses=ERROR_RESPONSES)
    async def champion(self, state: State, exchange: str | None = None, symbol: str | None = None,
                       timeframe: str | None = None) -> ChampionInfo:
        service: PredictionService = state.service
        model = service.champion()
        if symbol or exchange or timeframe:
            if not symbol:
                raise ApiError(400, "invalid_request", "name the market's symbol (with exchange and timeframe)")
            market = service.target(model, symbol, exchange, timeframe)
            model = service.market_champion(model, *market)
        described = model.describe()
        described["loaded_at"] = iso_time(described.pop("loaded_at_ns"))
        return ChampionInfo(**described)
