"""One prediction from the freshest online features and the champion held at request start."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping

import msgspec
import numpy as np

from api.champion import ChampionHolder, ServedModel
from api.errors import ApiError
from api.execution import ExecutionParams, execution_payload, prob_up
from api.metrics import ApiMetrics
from api.schemas import ExecutionPayload, Prediction
from rtml_core.errors import InputError
from rtml_core.features import DEFAULT_FEATURE_SET
from rtml_core.features.microstructure import (
    MICROSTRUCTURE,
    MicrostructureUnavailable,
    group_names,
    uses_microstructure,
)
from rtml_core.schemas import FeatureRow
from rtml_core.settings import Settings
from rtml_core.stores.online_base import MarketSnapshot, OnlineStoreUnavailable
from rtml_core.symbols import normalize_symbol
from rtml_core.timeframes import timeframe_seconds
from rtml_core.times import iso_from_ns

PRICE_KEYS = ("close", "price")
"""Where the current price is read from the feature row, first match wins (then the live microprice)."""
LIVE_PRICE_KEYS = ("book_microprice", "microprice")
SPREAD_KEYS = ("book_spread_bps", "spread_bps")
VOLATILITY_FEATURE, ATR_FEATURE = DEFAULT_FEATURE_SET.roles["realized_vol"], DEFAULT_FEATURE_SET.roles["atr"]
"""The feature set's features that size execution (its ``realized_vol`` and ``atr`` roles)."""
EXCHANGE_PATTERN = re.compile(r"[a-z0-9_]{1,32}")
"""An exchange name as requests may give it (the same rule as the request bodies' ``exchange``)."""
TIMEFRAME_PATTERN = re.compile(r"[1-9][0-9]{0,6}[smhd]")
STORE_RETRY_AFTER_S = 1.0
"""After a failed online-store call, answer 503 at once for this long before trying again."""


CACHE_LIMIT = 4096
"""Most entries in each per-process lookup cache (targets, event times); cleared when full."""


def iso_time(time_ns: int) -> str:
    """The API's times: ISO 8601 UTC with milliseconds (``rtml_core.times``, style ``ms``)."""
    return iso_from_ns(time_ns, "ms")


def _remember(cache: dict, key, value):
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


class LoggedPrediction(msgspec.Struct, frozen=True, gc=False):
    """What ``PredictionLog.record`` stores of a ``Prediction``: its fields, with the feature time
    as the integer ``feature_time_ns`` (the ISO text truncated to the millisecond, as served),
    so the log's writer thread never parses a date."""

    exchange: str
    symbol: str
    timeframe: str
    model_version: str
    feature_set_version: str
    feature_time_ns: int
    horizon_s: int
    price: float
    predicted_price: float
    predicted_return: float
    prob_up: float
    stale: bool
    execution: ExecutionPayload
    inference_path: str


def canonical_symbol(raw: str) -> str:
    try:
        symbol = normalize_symbol(raw)
    except InputError as error:
        raise ApiError(400, "invalid_symbol", str(error)) from None
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise ApiError(400, "invalid_symbol", f"symbol {raw[:40]!r} is not BASE-QUOTE of letters and digits")
    return symbol


SYMBOL_PATTERN = re.compile(r"[A-Z0-9]{1,16}-[A-Z0-9]{1,16}")


def checked_exchange(exchange: str) -> str:
    if not EXCHANGE_PATTERN.fullmatch(exchange):
        raise ApiError(400, "invalid_exchange", f"exchange {exchange[:40]!r} is not a name of lowercase "
                       "letters, digits and underscores (at most 32), e.g. kraken")
    return exchange


class PredictionService:
    """Reads the online store, checks version and freshness, predicts, builds the order intent."""

    def __init__(self, settings: Settings, store, holder: ChampionHolder, metrics: ApiMetrics,
                 prediction_log=None) -> None:
        self.settings = settings
        self.prediction_log = prediction_log  # PredictionLog: record() is O(1) and never blocks
        self.store = store
        self.holder = holder
        self.metrics = metrics
        self.params = ExecutionParams(
            max_position=settings.exec_max_position, fee_bps=settings.exec_fee_bps,
            spread_bps=settings.exec_spread_bps, vol_target=settings.exec_vol_target,
            atr_stop_mult=settings.exec_atr_stop_mult, atr_take_mult=settings.exec_atr_take_mult,
        )
        self._store_down_until = 0.0
        self._unlogged: list[LoggedPrediction] = []
        self._targets: dict[tuple, tuple[str, str, str]] = {}  # request -> (exchange, symbol, timeframe)
        self._timeframe_s: dict[str, int] = {}
        self._iso_times: dict[int, tuple[str, int]] = {}  # event_time_ns -> (ISO text, its ns to the ms)

    # -- resolution ---------------------------------------------------------------------
    def champion(self) -> ServedModel:
        model = self.holder.current
        if model is None:
            raise ApiError(503, "no_champion", "no champion model is loaded yet (registry empty or "
                           "unreachable); /ready reports why")
        return model

    def target(self, model: ServedModel | None, symbol: str, exchange: str | None,
               timeframe: str | None) -> tuple[str, str, str]:
        """(exchange, symbol, timeframe) of a request; without a timeframe, the timeframe of the
        champion of that exchange and symbol, or else the one timeframe every champion shares
        (RTML_API_DEFAULT_TIMEFRAME when that is ambiguous)."""
        key = (symbol, exchange, timeframe, model.marker if model else None)
        resolved = self._targets.get(key)
        if resolved is not None:
            return resolved
        exchange = checked_exchange(exchange or self.settings.api_default_exchange)
        symbol = canonical_symbol(symbol)
        if not timeframe:  # the symbol's one served timeframe, else the one all champions share
            markets = model.markets if model else {}
            served = {tf for (ex, sym, tf) in markets if (ex, sym) == (exchange, symbol)} or {tf for *_, tf in markets}
            timeframe = served.pop() if len(served) == 1 else self.settings.api_default_timeframe
        self.timeframe_s(timeframe)
        return _remember(self._targets, key, (exchange, symbol, timeframe))

    def market_champion(self, served: ServedModel, exchange: str, symbol: str, timeframe: str) -> ServedModel:
        """The champion of exchange/symbol/timeframe in the bundle read at request start; 404
        ``no_model_for_market`` when that market has none (never another market's model)."""
        model = served.for_market(exchange, symbol, timeframe)
        if model is None:
            raise ApiError(404, "no_model_for_market",
                           f"no model is trained for {exchange} {symbol} {timeframe}: train it with "
                           f"rtml train --exchange {exchange} --symbol {symbol} --timeframe {timeframe}")
        return model

    def timeframe_s(self, timeframe: str) -> int:
        seconds = self._timeframe_s.get(timeframe)
        if seconds is None:
            if not TIMEFRAME_PATTERN.fullmatch(timeframe):
                raise ApiError(400, "invalid_timeframe", f"timeframe {timeframe[:20]!r} is not a whole number "
                               "of s, m, h or d (e.g. 1m, 5m, 1h)")
            try:
                seconds = _remember(self._timeframe_s, timeframe, timeframe_seconds(timeframe))
            except InputError as error:
                raise ApiError(400, "invalid_timeframe", str(error)) from None
        return seconds

    def max_age_ms(self, timeframe: str) -> float:
        configured = self.settings.api_max_feature_age_ms
        if configured is not None:
            return float(configured)
        return 2_000.0 * self.timeframe_s(timeframe) + 10_000.0

    def event_time(self, event_time_ns: int) -> tuple[str, int]:
        """The ISO text of an event time (as served) and that time truncated to the millisecond."""
        cached = self._iso_times.get(event_time_ns)
        if cached is None:
            cached = _remember(self._iso_times, event_time_ns,
                               (iso_time(event_time_ns), event_time_ns // 1_000_000 * 1_000_000))
        return cached

    # -- the store, guarded -------------------------------------------------------------
    async def read_market(self, exchange: str, symbol: str, timeframe: str) -> MarketSnapshot:
        """The latest feature row (404 when none) and the live values, in one round trip.

        Only a store failure (connection, timeout, protocol) answers 503 and holds further reads
        off for ``STORE_RETRY_AFTER_S``; a name the store cannot use is the request's 400.
        """
        if time.monotonic() < self._store_down_until:
            raise ApiError(503, "online_store_unavailable", "the online store is unreachable; retry shortly")
        try:
            market = await self.store.aread_market(exchange, symbol, timeframe)
        except OnlineStoreUnavailable:
            self._store_down_until = time.monotonic() + STORE_RETRY_AFTER_S
            raise ApiError(503, "online_store_unavailable", "the online store is unreachable") from None
        except InputError as error:
            raise ApiError(400, "invalid_request", str(error)) from None
        if market.row is None:
            raise ApiError(404, "unknown_symbol",
                           f"no online features for {exchange} {symbol} {timeframe}: the stream "
                           "sidecar does not serve this symbol (or timeframe)")
        return market

    # -- the prediction log ---------------------------------------------------------------
    def _log(self, prediction: LoggedPrediction) -> None:
        """Hand predictions to the log at the end of the event-loop iteration, all together.

        One wake-up of the log's writer thread per iteration instead of one per prediction.
        """
        if not self._unlogged:
            try:
                asyncio.get_running_loop().call_soon(self.flush_log)
            except RuntimeError:  # called outside the event loop: record at once
                self.prediction_log.record(prediction)
                return
        self._unlogged.append(prediction)

    def flush_log(self) -> None:
        unlogged, self._unlogged = self._unlogged, []
        if not unlogged:
            return
        record = self.prediction_log.record
        for prediction in unlogged:
            record(prediction)

    # -- the prediction -----------------------------------------------------------------
    async def predict(self, symbol: str, exchange: str | None = None, timeframe: str | None = None,
                      source: str = "http") -> Prediction:
        served = self.champion()
        exchange, symbol, timeframe = self.target(served, symbol, exchange, timeframe)
        market = await self.read_market(exchange, symbol, timeframe)  # 404 unknown_symbol first
        model = self.market_champion(served, exchange, symbol, timeframe)
        return self.predict_row(model, market.row, market.live, source)  # the bundle read at the start

    def predict_row(self, model: ServedModel, row: FeatureRow, live: Mapping[str, float] | None = None,
                    source: str = "http") -> Prediction:
        """Checks version, freshness and warm-up, then predicts with ``model`` (read once by the caller)."""
        if model.feature_names and row.feature_set_version != model.feature_set_version:
            raise ApiError(409, "feature_set_mismatch",
                           f"model {model.version} needs feature set {model.feature_set_version}; "
                           f"the online row for {row.symbol} is {row.feature_set_version}")
        age_ms = (time.time_ns() - row.event_time_ns) / 1e6
        self.metrics.feature_age_child(row.exchange, row.symbol, row.timeframe).set(age_ms / 1e3)
        limit = self.max_age_ms(row.timeframe)
        stale = age_ms > limit
        if stale and not self.settings.api_serve_stale:
            raise ApiError(503, "stale_features",
                           f"newest {row.exchange} {row.symbol} {row.timeframe} features are "
                           f"{age_ms:.0f} ms old (limit {limit:.0f} ms): is the stream sidecar running?")
        values = row.values
        if uses_microstructure(model.feature_names):  # the order-book group: live values as of the row's close
            try:
                values = {**values, **MICROSTRUCTURE.for_row(
                    live or {}, row.event_time_ns, self.timeframe_s(row.timeframe) * 1_000_000_000,
                    group_names(model.feature_names))}
            except MicrostructureUnavailable as error:
                raise ApiError(409, "microstructure_unavailable",
                               f"model {model.version} uses order-book features of {row.symbol}: {error}") from None
        predictor = model.predictor
        try:
            x = np.array([[values[name] for name in model.feature_names]], dtype=predictor.dtype)
        except KeyError:
            missing = [name for name in model.feature_names if name not in values]
            raise ApiError(409, "feature_set_mismatch",
                           f"online row for {row.symbol} lacks features {missing[:10]} that model "
                           f"{model.version} needs") from None
        if not np.isfinite(x).all():
            warming = [n for n, v in zip(model.feature_names, x[0]) if not math.isfinite(v)]
            raise ApiError(503, "features_warming_up",
                           f"features {warming[:10]} of {row.symbol} are not defined yet (indicator "
                           "warm-up)")
        live = live or {}
        price = next((values[key] for key in PRICE_KEYS if key in values), None)
        if price is None:  # a feature set without the close: the live book's microprice
            price = next((live[key] for key in LIVE_PRICE_KEYS if key in live), None)
        if price is None or not math.isfinite(price) or price <= 0:
            raise ApiError(409, "no_price", f"neither the online row nor the live values of {row.symbol} "
                           "carry a price (close or book_microprice)")
        spread = next((live[key] for key in SPREAD_KEYS if key in live), None)
        predicted_return = predictor.predict(x)
        execution = execution_payload(
            price=price, predicted_return=predicted_return,
            realized_vol=values.get(VOLATILITY_FEATURE), atr=values.get(ATR_FEATURE),
            timeframe_s=self.timeframe_s(row.timeframe), params=self.params,
            live_spread_bps=spread, model_kind=model.kind,
        )
        self.metrics.prediction_counter(source).inc()
        event_time, event_time_ms_ns = self.event_time(row.event_time_ns)
        payload = ExecutionPayload(
            execution.side, execution.size, execution.stop_loss, execution.take_profit,
            execution.expected_edge_bps, execution.cost_bps, execution.spread_bps,
            execution.volatility_annualized, execution.atr, execution.reason,
        )
        calibrator = model.calibrator
        if calibrator is not None:  # fitted on the validation folds; flat counts as not-up
            up = calibrator.prob_up(predicted_return, values.get(calibrator.activity) if calibrator.activity else None)
        else:  # a version registered before calibration: Normal(predicted, residual_std)
            up = prob_up(predicted_return, model.residual_std)
        predicted_price = price * math.exp(predicted_return)
        prediction = Prediction(
            symbol=row.symbol, exchange=row.exchange, timeframe=row.timeframe,
            model_version=model.version, feature_set_version=model.feature_set_version,
            feature_event_time=event_time, feature_age_ms=round(age_ms, 3),
            price=price, predicted_price=predicted_price, predicted_return=predicted_return,
            prob_up=up, horizon_s=model.horizon_s, stale=stale, execution=payload,
            inference_path=predictor.path, model_kind=model.kind,
        )
        if self.prediction_log is not None:
            self._log(LoggedPrediction(
                row.exchange, row.symbol, row.timeframe, model.version, model.feature_set_version,
                event_time_ms_ns, model.horizon_s, price, predicted_price, predicted_return, up, stale,
                payload, predictor.path,
            ))
        return prediction
