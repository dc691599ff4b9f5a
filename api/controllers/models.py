"""GET /v1/models and GET /v1/models/champion."""

from __future__ import annotations

import asyncio

from litestar import Controller, get
from litestar.datastructures import State

from api.errors import ApiError
from api.schemas import ChampionInfo, ModelInfo, ModelList
from api.errors import ERROR_RESPONSES
from api.serving import PredictionService, iso_time


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get(summary="Every registered model version with its metrics; which one is served",
         responses=ERROR_RESPONSES)
    async def list_models(self, state: State) -> ModelList:
        service: PredictionService = state.service
        try:
            rows = await asyncio.to_thread(state.champion_source.list_models)
        except Exception as error:  # noqa: BLE001 - the registry is down: a clear 503
            raise ApiError(503, "registry_unavailable",
                           f"the model registry is unreachable ({type(error).__name__})") from None
        served = service.holder.current
        models = [ModelInfo(**row) for row in rows]
        return ModelList(champion=served.version if served else None, models=models)

    @get("/champion", summary="The model being served: version, metrics, features, inference path",
         responses=ERROR_RESPONSES)
    async def champion(self, state: State) -> ChampionInfo:
        service: PredictionService = state.service
        model = service.champion()
        described = model.describe()
        described["loaded_at"] = iso_time(described.pop("loaded_at_ns"))
        return ChampionInfo(**described)
