"""The textbook peer: FastAPI + redis-py + XGBoost's own predict + a pydantic response.

Same work as rtml's /v1/predict (one Redis hash read, the same model, the same response
fields), written the way tutorials write it. Configured by environment variables that
bench/api.py sets: PEER_REDIS_URL, PEER_FEATURES_KEY_PREFIX, PEER_MODEL_PATH,
PEER_FEATURE_NAMES (comma-separated), PEER_RESIDUAL_STD, PEER_HORIZON_S, PEER_TIMEFRAME.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import redis
import xgboost as xgb
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from bench.peers.config import FEATURES, HORIZON_S, PREFIX, REDIS_URL, RESIDUAL_STD, TIMEFRAME, PredictRequest

app = FastAPI()
r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
model = xgb.XGBRegressor()
model.load_model(os.environ["PEER_MODEL_PATH"])


class PredictResponse(BaseModel):
    symbol: str
    exchange: str
    timeframe: str
    model_version: str
    feature_set_version: str
    feature_event_time: str
    feature_age_ms: float
    price: float
    predicted_price: float
    predicted_return: float
    prob_up: float
    horizon_s: int


@app.post("/v1/predict", response_model=PredictResponse)
def predict(req: PredictRequest):
    timeframe = req.timeframe or TIMEFRAME
    row = r.hgetall(f"{PREFIX}:features:{{{req.exchange}:{req.symbol}}}:{timeframe}")
    if not row:
        raise HTTPException(status_code=404, detail="unknown symbol")
    x = np.array([[float(row[name]) for name in FEATURES]])
    predicted_return = float(model.predict(x)[0])
    price = float(row["close"])
    event_time_ns = int(row["event_time"])
    return PredictResponse(
        symbol=req.symbol, exchange=req.exchange, timeframe=timeframe, model_version="peer",
        feature_set_version=row["feature_set_version"], feature_event_time=row["event_time_iso"],
        feature_age_ms=(time.time_ns() - event_time_ns) / 1e6, price=price,
        predicted_price=price * math.exp(predicted_return), predicted_return=predicted_return,
        prob_up=0.5 * (1 + math.erf(predicted_return / (RESIDUAL_STD * math.sqrt(2)))),
        horizon_s=HORIZON_S,
    )
