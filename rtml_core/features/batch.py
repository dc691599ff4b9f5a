"""Batch engine: the whole feature set over a candle frame with pandas-ta (the definition)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.features.definitions import DEFAULT_FEATURE_SET, FeatureSet
from rtml_core.features.indicators import KINDS

REQUIRED_COLUMNS = ("time", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")


def _where(source: str | None, line_offset: int | None, row: int) -> dict:
    """InputError location for data row ``row`` (0-based): a file line, or the row in the text."""
    if line_offset is None:
        return {"source": source}
    return {"source": source, "line": row + line_offset}


def _row_label(line_offset: int | None, row: int) -> str:
    return "" if line_offset is not None else f"row {row}: "


def time_ns_of(times: pd.Series) -> np.ndarray:
    """Candle times as int64 nanoseconds: datetimes as they are, numbers as nanoseconds,
    text as ISO dates (UTC unless it says otherwise)."""
    if isinstance(times.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(times):
        values = times.dt.tz_localize("UTC") if getattr(times.dt, "tz", None) is None else times.dt.tz_convert("UTC")
        return values.dt.as_unit("ns").astype("int64").to_numpy()
    if pd.api.types.is_numeric_dtype(times):
        return times.to_numpy(dtype="int64")
    numeric = pd.to_numeric(times, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(dtype="int64")
    return pd.to_datetime(times, utc=True, format="mixed").dt.as_unit("ns").astype("int64").to_numpy()


def prepare_candles(
    candles: pd.DataFrame, *, source: str | None = "candles", line_offset: int | None = None
) -> dict[str, np.ndarray]:
    """Check a candle frame and return its columns as float arrays (``vwap`` resolved).

    Raises ``InputError`` naming the first bad row for: missing columns, values that are not
    finite numbers, prices <= 0, negative volume, and times that repeat or go backwards.
    ``line_offset`` maps data row ``i`` to file line ``i + line_offset`` (CSV with a header: 2).
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in candles.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}", source=source)
    columns: dict[str, np.ndarray] = {}
    for name in (*PRICE_COLUMNS, "volume"):
        raw = candles[name]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(
                f"{_row_label(line_offset, row)}{name} is not a finite number: {raw.iloc[row]!r}",
                **_where(source, line_offset, row),
            )
        limit_bad = values <= 0 if name in PRICE_COLUMNS else values < 0
        if limit_bad.any():
            row = int(np.argmax(limit_bad))
            what = "must be positive" if name in PRICE_COLUMNS else "must not be negative"
            raise InputError(
                f"{_row_label(line_offset, row)}{name} {what}: {values[row]!r}", **_where(source, line_offset, row)
            )
        columns[name] = values
    hlc3 = (columns["high"] + columns["low"] + columns["close"]) / 3.0
    if "vwap" in candles.columns:
        raw = candles["vwap"]
        vwap = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        unparsed = np.isnan(vwap) & raw.notna().to_numpy() & (raw.astype(str).str.strip() != "").to_numpy()
        if unparsed.any():
            row = int(np.argmax(unparsed))
            raise InputError(
                f"{_row_label(line_offset, row)}vwap is not a number: {raw.iloc[row]!r}", **_where(source, line_offset, row)
            )
        usable = np.isfinite(vwap) & (vwap > 0)
        columns["vwap"] = np.where(usable, vwap, hlc3)
    else:
        columns["vwap"] = hlc3
    try:
        times = time_ns_of(candles["time"])
    except (ValueError, TypeError, OverflowError) as error:
        raise InputError(f"time column cannot be read as times: {error}", source=source) from error
    if len(times) > 1:
        steps = np.diff(times)
        bad = steps <= 0
        if bad.any():
            row = int(np.argmax(bad)) + 1
            what = "repeats the previous time" if steps[row - 1] == 0 else "is earlier than the previous row"
            raise InputError(
                f"{_row_label(line_offset, row)}time {candles['time'].iloc[row]!r} {what} (times must strictly increase)",
                **_where(source, line_offset, row),
            )
    columns["time_ns"] = times
    return columns


def compute_features(candles: pd.DataFrame, feature_set: FeatureSet = DEFAULT_FEATURE_SET) -> pd.DataFrame:
    """``time`` plus one float column per feature, same rows in the same order.

    Input columns: time, open, high, low, close, volume and optionally vwap (others ignored).
    Values are pandas-ta's (``talib=True``) for each feature's parameters.
    """
    columns = prepare_candles(candles)
    return features_from_columns(columns, candles["time"].reset_index(drop=True), feature_set)


def features_from_columns(
    columns: dict[str, np.ndarray], time: pd.Series, feature_set: FeatureSet = DEFAULT_FEATURE_SET
) -> pd.DataFrame:
    """The batch computation on already checked columns (see ``prepare_candles``)."""
    index = pd.RangeIndex(len(time))
    series = {name: pd.Series(values, index=index) for name, values in columns.items() if name != "time_ns"}
    results: dict[tuple, dict[str, pd.Series]] = {}
    out: dict[str, object] = {"time": time.reset_index(drop=True)}
    for spec in feature_set:
        key = spec.node_key
        if key not in results:
            kind = KINDS[spec.indicator]
            if len(index) <= spec.warmup:  # all warm-up: NaN by definition (pandas-ta would warn)
                results[key] = {output: pd.Series(np.nan, index=index) for output in kind.outputs}
            else:
                results[key] = kind.batch(series, **spec.params)
        out[spec.name] = results[key][spec.output].to_numpy(dtype=float)
    return pd.DataFrame(out)
