"""One ``CandleBuilder`` per timeframe over the same trades: the reference the tests compare with."""

from __future__ import annotations

from collections.abc import Iterable

from rtml_core.candles import CandleBuilder
from rtml_core.schemas import Candle, Trade


def candles_of_each_timeframe(trades: Iterable[Trade], exchange: str, symbol: str, timeframes: Iterable[str], *,
                              flush: bool, **builder_options) -> tuple[list[Candle], int]:
    """The candles every builder closed trade by trade (then flushed, with ``flush``) and the late trades."""
    builders = [CandleBuilder(exchange, symbol, tf, **builder_options) for tf in timeframes]
    out = [candle for trade in trades for builder in builders for candle in builder.add(trade) or ()]
    if flush:
        out += [candle for builder in builders for candle in builder.flush()]
    return out, sum(builder.late for builder in builders)
