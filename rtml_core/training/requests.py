"""A training request for one market: checked against what is stored, then read and built.

``resolve_request`` validates a request (horizon, range, feature groups) against the store's
inventory before anything is read; ``load_training_set`` reads the rows it needs and builds
the point-in-time set. Dagster assets and the CLI only pass their config in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd

from rtml_core.errors import InputError
from rtml_core.features.microstructure import (
    FEATURE_GROUPS,
    INDICATORS,
    MICROSTRUCTURE,
    is_microstructure_version,
    join_group,
)
from rtml_core.features.microstructure import GROUP as MICROSTRUCTURE_GROUP
from rtml_core.registry import Market
from rtml_core.stores.offline_base import OfflineStore
from rtml_core.timeframes import NS, timeframe_seconds
from rtml_core.training.datasets import BASELINE_WINDOW, TrainingSet, build_training_set
from rtml_core.training.pipeline import EvaluationPlan


@dataclass(frozen=True)
class TrainingRequest:
    """A validated TrainingConfig for one market: feature set version, horizon, time range."""

    exchange: str
    symbol: str
    timeframe: str
    feature_set_version: str
    horizon_s: int
    start_ns: int
    end_ns: int
    plan: EvaluationPlan
    microstructure_version: str | None = None  # set when the config chose the microstructure group

    @property
    def market(self) -> Market:
        return Market(self.exchange, self.symbol, self.timeframe, self.horizon_s)


def _parse_time(text: str | None, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        moment = pd.Timestamp(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO 8601 time") from None
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return int(moment.value)


def default_horizon_s(timeframe: str) -> int:
    """The default horizon H: one candle of the timeframe."""
    return timeframe_seconds(timeframe)


def stored_series(inventory: pd.DataFrame, version: str | None, market: tuple[str, str, str]) -> pd.DataFrame:
    """The inventory rows of one market's stored feature tables (of ``version``; None: every version)."""
    exchange, symbol, timeframe = market
    mine = inventory[(inventory["kind"] == "features") & (inventory["exchange"] == exchange)
                     & (inventory["symbol"] == symbol) & (inventory["timeframe"] == timeframe)]
    return mine if version is None else mine[mine["feature_set_version"] == version]


def resolve_request(inventory: pd.DataFrame | None, market: tuple[str, str, str], *, feature_set_version: str,
                    plan: EvaluationPlan, horizon_s: int | None = None, start: str | None = None,
                    end: str | None = None, feature_groups: Sequence[str] = (INDICATORS,)) -> TrainingRequest:
    """Check a request against the market's stored feature series before any work; pick defaults.

    ``inventory`` is ``store.markets()``: one row per stored series with first/last/rows.
    ``horizon_s`` None: one candle; ``start``/``end`` (ISO 8601) None: the whole stored range.
    """
    exchange, symbol, timeframe = market
    version = feature_set_version
    horizon = int(horizon_s) if horizon_s is not None else default_horizon_s(timeframe)
    if horizon <= 0:
        raise InputError(f"horizon_s must be positive, got {horizon}")
    if horizon < timeframe_seconds(timeframe):
        raise InputError(
            f"horizon {horizon}s is shorter than the timeframe {timeframe}: choose a horizon of at least one candle"
        )
    series = stored_series(inventory, version, market)
    if series.empty:
        raise InputError(
            f"feature set version {version!r} has no rows for {exchange} {symbol} {timeframe}: "
            "materialize indicator_table for it first"
        )
    row = series.iloc[0]
    tf_ns = timeframe_seconds(timeframe) * NS
    first_close = int(row["first"].value) + tf_ns
    last_close = int(row["last"].value) + tf_ns
    start_ns = _parse_time(start, "start")
    end_ns = _parse_time(end, "end")
    start_ns = max(start_ns, first_close) if start_ns is not None else first_close
    end_ns = min(end_ns, last_close + 1) if end_ns is not None else last_close + 1
    candles = min((end_ns - start_ns) // tf_ns, int(row["rows"]))
    needed = 2 * plan.min_rows + BASELINE_WINDOW
    if end_ns <= start_ns:
        raise InputError(
            f"the range {start or 'start'}..{end or 'end'} holds no stored feature rows of "
            f"{exchange} {symbol} {timeframe} (stored {row['first']}..{row['last']})"
        )
    if candles < needed:
        raise InputError(
            f"too little history: {exchange} {symbol} {timeframe} has at most {candles} feature rows in the range; "
            f"at least {needed} are needed for {plan.min_rows} development and {plan.min_rows} holdout rows "
            "(widen the range or lower min_rows)"
        )
    return TrainingRequest(
        exchange=exchange, symbol=symbol, timeframe=timeframe, feature_set_version=version,
        horizon_s=horizon, start_ns=start_ns, end_ns=end_ns, plan=plan,
        microstructure_version=_microstructure_version(inventory, list(feature_groups), market),
    )


def _microstructure_version(inventory: pd.DataFrame, groups: list[str], market: tuple[str, str, str]) -> str | None:
    """The microstructure group's version when ``groups`` chose it (checked against the stored series)."""
    unknown = sorted(set(groups) - set(FEATURE_GROUPS))
    if unknown:
        raise InputError(f"feature_groups {unknown}: choose among {', '.join(FEATURE_GROUPS)}")
    if INDICATORS not in groups:
        raise InputError("feature_groups must include 'indicators' (the candle rows the other groups join to)")
    if MICROSTRUCTURE_GROUP not in groups:
        return None
    exchange, symbol, timeframe = market
    stored = sorted({v for v in stored_series(inventory, None, market)["feature_set_version"]
                     if is_microstructure_version(v)})
    if not stored:
        raise InputError(
            f"no microstructure rows for {exchange} {symbol} {timeframe}: the sidecar logs them, one per "
            "closed candle, for the markets it streams with their order book"
        )
    if MICROSTRUCTURE.version in stored:
        return MICROSTRUCTURE.version
    if len(stored) > 1:  # sidecars run with other book levels or flow windows: ambiguous
        raise InputError(f"several microstructure versions stored for {exchange} {symbol} {timeframe}: {stored}, "
                         f"none the default {MICROSTRUCTURE.version}")
    return stored[0]


def load_training_set(store: OfflineStore, request: TrainingRequest) -> TrainingSet:
    """Read the features and candles the request needs and build its point-in-time set (with its plan)."""
    tf_ns = timeframe_seconds(request.timeframe) * NS
    features = store.read_features(
        request.exchange, request.symbol, request.timeframe, request.feature_set_version,
        request.start_ns - tf_ns, request.end_ns - tf_ns,
    )
    if request.microstructure_version:  # each group as of t: the order-book row of the same candle
        group = store.read_features(
            request.exchange, request.symbol, request.timeframe, request.microstructure_version,
            request.start_ns - tf_ns, request.end_ns - tf_ns,
        )
        features = join_group(features, group, timeframe_ns=tf_ns, max_lag_candles=MICROSTRUCTURE.max_lag_candles)
    prices = store.read_candles(
        request.exchange, request.symbol, request.timeframe,
        request.start_ns - (BASELINE_WINDOW + 1) * tf_ns, request.end_ns + request.horizon_s * NS,
    )
    built = build_training_set(
        features, prices, timeframe=request.timeframe, horizon_s=request.horizon_s,
        feature_set_version=request.feature_set_version, exchange=request.exchange, symbol=request.symbol,
    )
    built = replace(built, plan=request.plan, microstructure_version=request.microstructure_version)
    if built.row_count < 2 * request.plan.min_rows:
        raise InputError(
            f"too little history: only {built.row_count} usable rows in the range (after {built.dropped_for_gaps} "
            f"dropped for gaps and {built.dropped_for_warmup} for warm-up); {2 * request.plan.min_rows} are needed"
        )
    return built
