"""Parity checks shared by the feature tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtml_core.features import DEFAULT_FEATURE_SET, FeatureEngine
from rtml_core.features.batch import prepare_candles

REL = 1e-9
ABS = 1e-12


def mismatches(expected: np.ndarray, actual: np.ndarray, absolute: float = ABS) -> np.ndarray:
    """Rows where the two differ: NaN in one only, or beyond 1e-9 relative and ``absolute``."""
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    nan_e, nan_a = np.isnan(expected), np.isnan(actual)
    with np.errstate(invalid="ignore"):
        gap = np.abs(expected - actual)
        tolerance = np.maximum(REL * np.maximum(np.abs(expected), np.abs(actual)), absolute)
        bad = (nan_e != nan_a) | (~nan_e & ~nan_a & ~(gap <= tolerance))
    return np.flatnonzero(bad)


def assert_frames_match(
    expected: pd.DataFrame, actual: pd.DataFrame, names, label: str = "", scaled: frozenset = frozenset()
) -> None:
    """Every feature within the parity tolerance; those in ``scaled`` within 1e-9 of their own
    scale (median absolute value) where they are near zero."""
    problems = []
    for name in names:
        absolute = ABS
        if name in scaled:
            absolute = max(ABS, REL * float(np.nanmedian(np.abs(expected[name].to_numpy(dtype=float)))))
        rows = mismatches(expected[name].to_numpy(), actual[name].to_numpy(), absolute)
        if len(rows):
            row = rows[0]
            problems.append(
                f"{name}: {len(rows)} rows differ, first row {row}: "
                f"expected {expected[name].iloc[row]!r}, got {actual[name].iloc[row]!r}"
            )
    assert not problems, f"{label}\n" + "\n".join(problems)


def candle_rows(frame: pd.DataFrame) -> list[tuple]:
    columns = prepare_candles(frame)
    return list(
        zip(
            columns["time_ns"].tolist(),
            columns["open"].tolist(),
            columns["high"].tolist(),
            columns["low"].tolist(),
            columns["close"].tolist(),
            columns["volume"].tolist(),
            columns["vwap"].tolist(),
        )
    )


def stream_frame(frame: pd.DataFrame, engine: FeatureEngine | None = None) -> pd.DataFrame:
    """The incremental engine over every row of ``frame``, as a frame of feature columns."""
    engine = engine or FeatureEngine(DEFAULT_FEATURE_SET)
    return pd.DataFrame(engine.run(candle_rows(frame)), columns=list(engine.names))


def assert_frames_identical(expected: pd.DataFrame, actual: pd.DataFrame, names, label: str = "") -> None:
    """Bit for bit (NaN where NaN)."""
    differ = [
        name for name in names
        if not np.array_equal(expected[name].to_numpy(float), actual[name].to_numpy(float), equal_nan=True)
    ]
    assert not differ, f"{label}: not bit-identical: {differ}"
