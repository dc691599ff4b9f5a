"""The tuned peer: FastAPI as a careful engineer writes it, with rtml's model path.

Async redis-py (hiredis parser, one pooled client, the feature hash and the live hash in one
pipelined round trip), the same ONNX model rtml serves (onnxruntime, one thread), and orjson
responses without response-model validation. What is left between it and rtml is the
framework and the request path, not the model. Configured like the textbook peer, plus
PEER_ONNX_PATH (the ONNX file bench/api.py converts from the same booster).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import onnxruntime
import redis.asyncio
from fastapi import FastAPI, HTTPException
from fastapi.responses import ORJSONResponse

from bench.peers.config import FEATURES, HORIZON_S, PREFIX, REDIS_URL, RESIDUAL_STD, TIMEFRAME, PredictRequest

app = FastAPI(default_response_class=ORJSONResponse)
r = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True, max_connections=64)
_options = onnxruntime.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(os.environ["PEER_ONNX_PATH"], _options, providers=["CPUExecutionProvider"])
OUTPUT = [session.get_outputs()[0].name]
INPUT = session.get_inputs()[0].name
from bench.peers.config import FEATURES, HORIZON_S, PREFIX, REDIS_URL, RESIDUAL_STD, TIMEFRAME, PredictRequest

app = FastAPI(default_response_class=ORJSONResponse)
r = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True, max_connections=64)
@app.post("/v1/predict")
async def predict(req: PredictRequest):
    timeframe = req.timeframe or TIMEFRAME
    tag = f"{{{req.exchange}:{req.symbol}}}"
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(f"{PREFIX}:features:{tag}:{timeframe}")
        pipe.hgetall(f"{PREFIX}:live:{tag}")
        row, live = await pipe.execute()
    if not row:
        raise HTTPException(status_code=404, detail="unknown symbol")
    x = np.array([[float(row[name]) for name in FEATURES]], dtype=np.float32)
    predicted_return = float(session.run(OUTPUT, {INPUT: x})[0].reshape(-1)[0])
    price = float(row["close"])
    event_time_ns = int(row["event_time"])
    return {
        "symbol": req.symbol, "exchange": req.exchange, "timeframe": timeframe, "model_version": "peer",
        "feature_set_version": row["feature_set_version"], "feature_event_time": row["event_time_iso"],
        "feature_age_ms": (time.time_ns() - event_time_ns) / 1e6, "price": price,
        "predicted_price": price * math.exp(predicted_return), "predicted_return": predicted_return,
        "prob_up": 0.5 * (1 + math.erf(predicted_return / (RESIDUAL_STD * math.sqrt(2)))),
        "horizon_s": HORIZON_S, "spread_bps": float(live["book_spread_bps"]) if "book_spread_bps" in live else None,
    }
