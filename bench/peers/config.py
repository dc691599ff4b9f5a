"""What both FastAPI peers read from the environment bench/api.py sets, and their request body."""

from __future__ import annotations

import os

from pydantic import BaseModel

REDIS_URL = os.environ["PEER_REDIS_URL"]
FEATURES = os.environ["PEER_FEATURE_NAMES"].split(",")
RESIDUAL_STD = float(os.environ["PEER_RESIDUAL_STD"])
HORIZON_S = int(os.environ["PEER_HORIZON_S"])
TIMEFRAME = os.environ["PEER_TIMEFRAME"]
PREFIX = os.environ["PEER_FEATURES_KEY_PREFIX"]


class PredictRequest(BaseModel):
    symbol: str
    exchange: str = "kraken"
    timeframe: str | None = None
