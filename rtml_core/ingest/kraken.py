"""Kraken REST replies: ``/0/public/Trades`` -> Trade, ``/0/public/OHLC`` -> Candle.

AssetPairs reply: ``{"error": [], "result": {"XXBTZUSD": {"altname": "XBTUSD", "wsname":
"XBT/USD", ...}, ...}}``: every spelling of a pair, for mapping pair names to BASE-QUOTE.

Trades reply: ``{"error": [], "result": {"XBTUSDT": [[price, volume, time, side, ordertype,
misc, trade_id], ...], "last": "1762820035982277754"}}``; ``side`` ``b``/``s`` is the
taker's side; ``last`` is the nanosecond cursor for the next ``since``.

OHLC reply: ``{"error": [], "result": {"XXBTZUSD": [[time, open, high, low, close, vwap,
volume, count], ...], "last": 1688672160}}``; the last row is the current, not yet
committed interval and is left out unless ``include_open=True``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from rtml_core.errors import InputError
from rtml_core.ingest.formats import (
    NS_PER_S,
    canonical_timeframe,
    checked_symbol,
    parse_decimal,
    read_text,
)
from rtml_core.schemas import Candle, Trade
from rtml_core.symbols import PairTable
from rtml_core.timeframes import timeframe_ns

_PRICES = ("open", "high", "low", "close")
EXCHANGE = "kraken"
_SIDES = {"b": "buy", "s": "sell"}


@dataclass(frozen=True)
class KrakenTradesPage:
    """One parsed Trades reply: the pair as Kraken spelled it, the trades, the cursor."""

    pair: str
    trades: list[Trade]
    last: int | None


def decode_reply(text: str | bytes, source: str) -> dict:
    """Decode a Kraken reply with exact numbers; InputError on bad JSON or a non-reply."""
    try:
        reply = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON: {error.msg}", source=source, line=error.lineno) from None
    if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
        raise InputError(
            "not a Kraken REST reply (no 'result' or 'error' key)", source=source, line=1
        )
    return reply


def reply_result(reply: dict, source: str) -> dict:
    """The reply's ``result``; InputError when Kraken answered with an error list."""
    errors = reply.get("error") or []
    if errors:
        raise InputError(
            f"Kraken replied with an error: {', '.join(map(str, errors))}", source=source
        )
    result = reply.get("result")
    if not isinstance(result, dict):
        raise InputError("'result' is not an object", source=source, line=1)
    return result


def _rows_of(result: dict, source: str) -> tuple[str, list]:
    pairs = [key for key in result if key != "last"]
    if len(pairs) != 1 or not isinstance(result[pairs[0]], list):
        raise InputError(
            f"expected one pair's list in 'result', found keys {sorted(result)}", source=source
        )
    return pairs[0], result[pairs[0]]


class _Lines:
    """Line numbers of a reply's rows, worked out only when an error needs one."""

    def __init__(self, text: str | bytes, pair: str):
        self.text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        self.pair = pair
        self._starts: list[int] | None = None

    def of(self, index: int) -> int | None:
        if self._starts is None:
            self._starts = self._element_starts()
        if index < len(self._starts):
            return self.text.count("\n", 0, self._starts[index]) + 1
        return None

    def _element_starts(self) -> list[int]:
        text = self.text
        at = text.find(f'"{self.pair}"')
        at = text.find("[", at)
        if at < 0:
            return []
        decoder = json.JSONDecoder()
        starts: list[int] = []
        pos = at + 1
        while pos < len(text):
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                break
            starts.append(pos)
            try:
                _, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break
        return starts


def parse_asset_pairs(text: str | bytes, source: str) -> PairTable:
    """An ``/0/public/AssetPairs`` reply -> the pair list (key, ``altname``, ``wsname`` of each)."""
    result = reply_result(decode_reply(text, source), source)
    entries = [(key, info["altname"], info["wsname"]) for key, info in result.items()
               if isinstance(info, dict) and isinstance(info.get("altname"), str)
               and isinstance(info.get("wsname"), str)]
    if not entries:
        raise InputError("no pair with an altname and a wsname in the AssetPairs reply", source=source)
    return PairTable.kraken(entries)


def parse_trades_reply(
    text: str | bytes, source: str, *, symbol: str | None = None, reply: dict | None = None
) -> KrakenTradesPage:
    """Parse one Trades reply into Trades (symbol normalized from the pair unless given).

    ``reply`` is the already decoded ``text`` when the caller has it (the REST client).
    """
    result = reply_result(reply if reply is not None else decode_reply(text, source), source)
    pair, rows = _rows_of(result, source)
    lines = _Lines(text, pair)
    canonical = checked_symbol(symbol, source) if symbol else checked_symbol(pair, source, 1)
    trades: list[Trade] = []
    for index, row in enumerate(rows):
        try:
            trades.append(_trade(row, canonical, source))
        except InputError as error:
            raise InputError(
                f"trade {index + 1}: {error.problem}", source=source, line=lines.of(index)
            ) from None
    last = result.get("last")
    try:
        cursor = int(last) if last is not None else None
    except (TypeError, ValueError):
        raise InputError(f"'last' {last!r} is not an integer cursor", source=source) from None
    return KrakenTradesPage(pair, trades, cursor)


def _trade(row: object, symbol: str, source: str) -> Trade:
    if not isinstance(row, list) or len(row) < 7:
        raise InputError(
            "expected [price, volume, time, side, ordertype, misc, trade_id]", source=source
        )
    price_text, size_text, time_value, side, _ordertype, _misc, trade_id = row[:7]
    price = parse_decimal(str(price_text), "price", source, None, positive=True)
    size = parse_decimal(str(size_text), "volume", source, None)
    if not isinstance(time_value, (Decimal, int)) or isinstance(time_value, bool) or time_value < 0:
        raise InputError(f"time {time_value!r} is not a number of seconds", source=source)
    if side not in _SIDES:
        raise InputError(f"side {side!r} is not 'b' or 's'", source=source)
    if not isinstance(trade_id, int) or isinstance(trade_id, bool):
        raise InputError(f"trade_id {trade_id!r} is not an integer", source=source)
    return Trade(EXCHANGE, symbol, trade_id, int(time_value * NS_PER_S), price, size, _SIDES[side])


def read_kraken_trades(path: str | Path, *, symbol: str | None = None) -> Iterator[Trade]:
    """Trades from a saved Kraken REST ``Trades`` reply (a JSON document is read whole)."""
    source = str(path)
    yield from parse_trades_reply(read_text(path), source, symbol=symbol).trades


def parse_ohlc_reply(
    text: str | bytes,
    source: str,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    include_open: bool = False,
) -> list[Candle]:
    """Parse one OHLC reply into Candles (timeframe from the row spacing unless given)."""
    result = reply_result(decode_reply(text, source), source)
    pair, rows = _rows_of(result, source)
    lines = _Lines(text, pair)
    canonical = checked_symbol(symbol, source) if symbol else checked_symbol(pair, source, 1)
    if not include_open and rows:
        rows = rows[:-1]
    starts: list[int] = []
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 8 or not isinstance(row[0], int):
            raise InputError(
                f"row {index + 1}: expected [time, open, high, low, close, vwap, volume, count]",
                source=source,
                line=lines.of(index),
            )
        starts.append(row[0])
    if timeframe is None:
        steps = [b - a for a, b in zip(starts, starts[1:]) if b > a]
        if not steps:
            raise InputError(
                "cannot tell the interval from fewer than two rows: pass a timeframe", source=source
            )
        timeframe = canonical_timeframe(min(steps))
    tf = timeframe_ns(timeframe)
    candles: list[Candle] = []
    for index, row in enumerate(rows):
        try:
            candles.append(_ohlc_candle(row, canonical, timeframe, tf, source))
        except InputError as error:
            raise InputError(
                f"row {index + 1}: {error.problem}", source=source, line=lines.of(index)
            ) from None
    return candles


def _ohlc_candle(row: list, symbol: str, timeframe: str, tf: int, source: str) -> Candle:
    start = row[0] * NS_PER_S
    if start % tf:
        raise InputError(f"time {row[0]} is not on a {timeframe} boundary", source=source)
    o, h, low, c, vwap, volume = (
        parse_decimal(str(v), name, source, None, positive=name in _PRICES)
        for v, name in zip(row[1:7], ("open", "high", "low", "close", "vwap", "volume"))
    )
    count = row[7]
    if not isinstance(count, int) or count < 0:
        raise InputError(f"count {count!r} is not a whole number", source=source)
    return Candle(
        EXCHANGE, symbol, timeframe, start, o, h, low, c, volume, vwap if volume else None, count
    )


def read_kraken_ohlc(
    path: str | Path,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    include_open: bool = False,
) -> Iterator[Candle]:
    """Candles from a saved Kraken REST ``OHLC`` reply."""
    yield from parse_ohlc_reply(
        read_text(path), str(path), symbol=symbol, timeframe=timeframe, include_open=include_open
    )
