"""POST /v1/predict, POST /v1/predict/batch and the WebSocket /v1/predictions/stream."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from litestar import Controller, WebSocket, post, websocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect

from api.errors import ERROR_RESPONSES, ApiError
from api.schemas import (
    BatchItemError, BatchPredictRequest, BatchPrediction, ErrorBody, Prediction, PredictRequest,
)
from api.serving import PredictionService
from api.shared import shared_store
from api.sockets import SocketGate, SocketRefused, UpdateHub, socket_client

log = logging.getLogger(__name__)
_FATAL_FOR_BATCH = {"online_store_unavailable", "no_champion"}


class PredictController(Controller):
    path = "/v1/predict"
    tags = ["predictions"]

    @post(status_code=200, summary="Predict one symbol from its freshest online features",
          responses=ERROR_RESPONSES)
    async def predict(self, data: PredictRequest, state: State) -> Prediction:
        service: PredictionService = state.service
        return await service.predict(data.symbol, data.exchange, data.timeframe)

    @post("/batch", status_code=200, summary="Predict several symbols; per-symbol errors are listed",
          responses=ERROR_RESPONSES)
    async def predict_batch(self, data: BatchPredictRequest, state: State) -> BatchPrediction:
        service: PredictionService = state.service
        limit = service.settings.api_max_batch
        if len(data.symbols) > limit:
            raise ApiError(400, "batch_too_large", f"at most {limit} symbols per batch, got "
                           f"{len(data.symbols)}")
        predictions: list[Prediction] = []
        errors: list[BatchItemError] = []
        answers = await asyncio.gather(
            *(service.predict(symbol, data.exchange, data.timeframe, "batch") for symbol in data.symbols),
            return_exceptions=True,
        )
        for symbol, answer in zip(data.symbols, answers):
            if isinstance(answer, ApiError):
                if answer.kind in _FATAL_FOR_BATCH:
                    raise answer
                service.metrics.errors.labels(answer.kind).inc()
                errors.append(BatchItemError(symbol, answer.status_code, answer.kind, answer.detail))
            elif isinstance(answer, BaseException):
                raise answer
            else:
                predictions.append(answer)
        return BatchPrediction(predictions=predictions, errors=errors)


async def _until_disconnect(socket: WebSocket) -> None:
    try:
        while True:
            await socket.receive_data(mode="text")
    except WebSocketDisconnect:
        return


@websocket("/v1/predictions/stream", name="prediction_stream")
async def prediction_stream(socket: WebSocket, symbol: str = "", exchange: str | None = None,
                            timeframe: str | None = None) -> None:
    """Push a prediction each time the sidecar publishes features for ``symbol``.

    The first message is the prediction from the current row; errors arrive as ErrorBody
    messages (the stream continues) except for a bad request (a missing symbol included), which
    closes with code 1008. Refused sockets are closed at once: 4429 (connects per second),
    1008 (sockets per key), 1013 (sockets per worker).
    """
    service: PredictionService = socket.app.state.service
    gate: SocketGate = socket.app.state.sockets
    client = socket_client(socket.scope)
    encoder = msgspec.json.Encoder()
    await socket.accept()
    try:
        await gate.admit(client, shared_store(socket.scope))
    except SocketRefused as refused:
        await socket.close(code=refused.code, reason=refused.reason)
        return
    try:
        await _stream(socket, service, socket.app.state.hub, encoder, symbol, exchange, timeframe)
    finally:
        gate.release(client)


async def _stream(socket: WebSocket, service: PredictionService, hub: UpdateHub, encoder, symbol: str,
                  exchange: str | None, timeframe: str | None) -> None:
    try:
        exchange, symbol, timeframe = service.target(service.holder.current, symbol, exchange, timeframe)
    except ApiError as error:
        await socket.send_data(encoder.encode(ErrorBody(error.status_code, error.kind, error.detail)).decode())
        await socket.close(code=1008, reason=error.kind)
        return
    watcher = asyncio.create_task(_until_disconnect(socket))

    async def send(row=None) -> None:
        try:
            if row is None:
                message = await service.predict(symbol, exchange, timeframe, "stream")
            else:
                market = await service.read_market(exchange, symbol, timeframe)  # live spread/price
                model = service.market_champion(service.champion(), exchange, symbol, timeframe)
                message = service.predict_row(model, row, market.live, "stream")
        except ApiError as error:
            message = ErrorBody(error.status_code, error.kind, error.detail)
        await socket.send_data(encoder.encode(message).decode())

    async def pump() -> None:
        # one subscription per market per worker; listening before the first answer, so no
        # update falls between it and the stream
        async with hub.watch(exchange, symbol, timeframe) as updates:
            await send()
            while True:
                row = await updates.get()
                if isinstance(row, BaseException):
                    raise row
                await send(row)

    pumping = asyncio.create_task(pump())
    try:
        done, _ = await asyncio.wait({watcher, pumping}, return_when=asyncio.FIRST_COMPLETED)
        if pumping in done and pumping.exception() is not None and not watcher.done():
            log.warning("prediction stream ended: %r", pumping.exception())
            await socket.send_data(encoder.encode(ErrorBody(
                503, "online_store_unavailable", "the feature subscription ended")).decode())
            await socket.close(code=1011, reason="subscription ended")
    finally:
        for task in (watcher, pumping):
            task.cancel()
        await asyncio.gather(watcher, pumping, return_exceptions=True)
