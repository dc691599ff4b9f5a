"""Request and response bodies: frozen msgspec Structs (validated on decode, in the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_BATCH_SYMBOLS = 200  # hard ceiling of the schema; RTML_API_MAX_BATCH sets the served limit

SymbolText = Annotated[
    str, Meta(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9]+([-/_:][A-Za-z0-9]+)?$",
              description="BASE-QUOTE (BTC-USD); exchange spellings like XBT/USD or BTCUSDT are mapped",
              examples=["BTC-USD"])
]
ExchangeText = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$", examples=["kraken"])]
TimeframeText = Annotated[str, Meta(min_length=2, max_length=8, pattern=r"^[1-9][0-9]*[smhd]$", examples=["1m"])]


class PredictRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    symbol: SymbolText
    exchange: ExchangeText | None = None
    timeframe: TimeframeText | None = None


class BatchPredictRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    symbols: Annotated[list[SymbolText], Meta(min_length=1, max_length=MAX_BATCH_SYMBOLS)]
    exchange: ExchangeText | None = None
    timeframe: TimeframeText | None = None


class ExecutionPayload(msgspec.Struct, frozen=True):
    """An order intent, never an order: nothing is placed on an exchange."""

    side: Literal["buy", "sell", "hold"]
    size: float
    stop_loss: float | None
    take_profit: float | None
    expected_edge_bps: float
    cost_bps: float
    spread_bps: float
    volatility_annualized: float | None
    atr: float | None
    reason: str


class Prediction(msgspec.Struct, frozen=True):
    symbol: str
    exchange: str
    timeframe: str
    model_version: str
    feature_set_version: str
    feature_event_time: str  # ISO 8601 UTC, the close of the candle the features came from
    feature_age_ms: float
    price: float
    predicted_price: float
    predicted_return: float  # log return over horizon_s
    prob_up: float  # calibrated P(log return over H > 0); a flat move counts as not-up
    horizon_s: int
    stale: bool
    execution: ExecutionPayload
    inference_path: str
    model_kind: str = ""  # baseline_zero | baseline_mean10 | lasso | xgboost: what answered


class BatchItemError(msgspec.Struct, frozen=True):
    symbol: str
    status_code: int
    error: str
    detail: str


class BatchPrediction(msgspec.Struct, frozen=True):
    predictions: list[Prediction]
    errors: list[BatchItemError]


class FeaturesResponse(msgspec.Struct, frozen=True):
    exchange: str
    symbol: str
    timeframe: str
    feature_set_version: str
    event_time: str
    event_time_ns: int
    feature_age_ms: float
    values: dict[str, float | None]  # NaN (warm-up) is sent as null
    microstructure: dict[str, float | None] = msgspec.field(default_factory=dict)
    """The order-book group's live values (``ms_*``) as of ``microstructure_close``; empty without them."""
    microstructure_close: str | None = None


class ModelInfo(msgspec.Struct, frozen=True):
    version: str
    kind: str | None = None
    champion: bool = False
    feature_set_version: str | None = None
    feature_names: list[str] | None = None
    horizon_s: int | None = None
    timeframe: str | None = None
    residual_std: float | None = None
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    exchange: str | None = None
    symbol: str | None = None


class ChampionInfo(msgspec.Struct, frozen=True):
    version: str
    kind: str
    feature_set_version: str
    feature_names: list[str]
    horizon_s: int
    timeframe: str
    residual_std: float
    metrics: dict[str, Any]
    inference_path: str
    inference_max_abs_diff: float | None
    loaded_at: str
    exchange: str | None = None  # the champion's market: exchange, symbol, timeframe and horizon_s
    symbol: str | None = None
    calibration: dict[str, Any] | None = None  # the prob_up calibrator (None: Normal(predicted, residual_std))
    served_fit: str | None = None  # which fit the served artifact is, against its holdout metrics


class ModelList(msgspec.Struct, frozen=True):
    champion: str | None
    models: list[ModelInfo]


class HealthStatus(msgspec.Struct, frozen=True):
    status: str  # ok (/health); ready, degraded or not_ready (/ready)
    checks: dict[str, str] = {}
    reasons: list[str] = []  # registry_unavailable, online_store_unavailable, no_champion, champion_load_failed


class ErrorBody(msgspec.Struct, frozen=True):
    status_code: int
    error: str  # a stable machine-readable kind: unknown_symbol, stale_features, ...
    detail: str
