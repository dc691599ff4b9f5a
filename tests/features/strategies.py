"""Hypothesis strategies: candle series with flat stretches, repeated prices and zero volume."""

from __future__ import annotations

import pandas as pd
from hypothesis import strategies as st

MINUTE_NS = 60_000_000_000


@st.composite
def candle_frames(draw, min_size: int = 1, max_size: int = 160) -> pd.DataFrame:
    """Candles on a price grid: moves of whole ticks (often zero, so prices repeat and whole
    stretches are flat), wicks of whole ticks, volume often exactly zero."""
    size = draw(st.integers(min_size, max_size))
    tick = draw(st.sampled_from([0.0001, 0.01, 0.5, 25.0]))
    start_ticks = draw(st.integers(50, 100_000))
    move = st.one_of(st.just(0), st.integers(-40, 40), st.integers(-3, 3))
    wick = st.one_of(st.just(0), st.integers(0, 20))
    volume = st.one_of(st.just(0.0), st.floats(0.001, 5_000.0, allow_nan=False, allow_infinity=False))
    flat_from = draw(st.integers(0, size))
    flat_to = draw(st.integers(flat_from, size))
    level = start_ticks
    rows = []
    for i in range(size):
        open_level = level
        if not flat_from <= i < flat_to:
            level = max(1, level + draw(move))
        up = 0 if flat_from <= i < flat_to else draw(wick)
        down = 0 if flat_from <= i < flat_to else draw(wick)
        high = max(open_level, level) + up
        low = max(1, min(open_level, level) - down)
        rows.append(
            {
                "time": i * MINUTE_NS,
                "open": round(open_level * tick, 8),
                "high": round(high * tick, 8),
                "low": round(low * tick, 8),
                "close": round(level * tick, 8),
                "volume": draw(volume),
            }
        )
    frame = pd.DataFrame(rows)
    if draw(st.booleans()):  # candles that carry their own vwap (NaN for an empty candle)
        inside = st.floats(0.0, 1.0, allow_nan=False)
        frame["vwap"] = [
            float("nan") if row["volume"] == 0 else round(row["low"] + draw(inside) * (row["high"] - row["low"]), 10)
            for row in rows
        ]
    return frame
