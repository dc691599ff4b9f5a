"""The one nanoseconds-to-ISO formatter, in each style its callers publish."""

from __future__ import annotations

import pandas as pd
import pytest

from rtml_core.times import iso_from_ns

CLOSE = 1_762_795_440_000_000_000  # 2025-11-10T17:24:00Z, a real candle close of the fixtures
TICK = 1_378_054_800_083_000_000  # 2013-09-01T17:00:00.083Z, a real ES tick time


@pytest.mark.parametrize(("time_ns", "style", "text"), [
    (CLOSE, "ns", "2025-11-10T17:24:00Z"),
    (TICK, "ns", "2013-09-01T17:00:00.083000000Z"),
    (TICK, "trim", "2013-09-01T17:00:00.083Z"),
    (CLOSE, "trim", "2025-11-10T17:24:00Z"),
    (TICK + 456_789, "ms", "2013-09-01T17:00:00.083Z"),
    (CLOSE, "ms", "2025-11-10T17:24:00.000Z"),
    (CLOSE, "offset", "2025-11-10T17:24:00+00:00"),
    (TICK, "offset", "2013-09-01T17:00:00.083000+00:00"),
    (TICK + 7, "offset", "2013-09-01T17:00:00.083000007+00:00"),
])
def test_each_style(time_ns: int, style: str, text: str) -> None:
    assert iso_from_ns(time_ns, style) == text


def test_offset_style_is_what_pandas_writes() -> None:
    for time_ns in (CLOSE, TICK, TICK + 7, TICK + 1_000):
        assert iso_from_ns(time_ns, "offset") == pd.Timestamp(time_ns, unit="ns", tz="UTC").isoformat()
