"""``rtml online get``: the latest online feature row of a market, as the API would read it."""

from __future__ import annotations

import json
import math
import sys
import time

import click

from rtml_core.schemas import FeatureRow
from rtml_core.settings import Settings
from rtml_core.stores.online import open_online_store
from rtml_core.stores.online_base import LiveValues
from rtml_core.times import iso_from_ns
from rtml_core.symbols import normalize_symbol
from rtml_core.timeframes import timeframe_seconds


@click.group("online")
def online() -> None:
    """The online store (RTML_ONLINE_URL, RTML_ONLINE_PREFIX): what the API serves."""


def _json_float(value: float) -> float | str | None:
    if math.isfinite(value):
        return value
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")


def row_document(row: FeatureRow, now_ns: int, live: LiveValues | None) -> dict:
    """The row as a JSON-ready dict: event time (ns and ISO), age, values (NaN as null)."""
    document = {
        "exchange": row.exchange,
        "symbol": row.symbol,
        "timeframe": row.timeframe,
        "feature_set_version": row.feature_set_version,
        "event_time_ns": row.event_time_ns,
        "event_time": iso_from_ns(row.event_time_ns),
        "age_s": round((now_ns - row.event_time_ns) / 1e9, 3),
        "values": {name: _json_float(value) for name, value in row.values.items()},
    }
    if live is not None:
        document["live"] = {
            "event_time": iso_from_ns(live.time_ns),
            "values": {name: _json_float(value) for name, value in live.values.items()},
        }
    return document


def row_text(document: dict) -> str:
    lines = [
        f"{document['exchange']} {document['symbol']} {document['timeframe']}  "
        f"feature set {document['feature_set_version']}",
        f"event time  {document['event_time']}  (age {document['age_s']:.3f} s)",
    ]
    live = document.get("live", {}).get("values", {})
    width = max([len(name) for name in [*document["values"], *live]] + [8])
    lines += [f"  {name:<{width}}  {_text(value)}" for name, value in document["values"].items()]
    if "live" in document:
        lines.append(f"live values at {document['live']['event_time']}")
        lines += [f"  {name:<{width}}  {_text(value)}" for name, value in live.items()]
    return "\n".join(lines)


def _text(value: float | str | None) -> str:
    return "nan" if value is None else str(value)


@online.command("get")
@click.option("--exchange", required=True, help="Exchange, e.g. kraken.")
@click.option("--symbol", required=True, help="Symbol, e.g. BTC-USD (BTC/USD and XBTUSD work too).")
@click.option("--timeframe", required=True, help="Timeframe of the feature row, e.g. 1m.")
@click.option("--live", "with_live", is_flag=True, help="Also show the market's live microstructure values.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (NaN as null).")
def get(exchange: str, symbol: str, timeframe: str, with_live: bool, as_json: bool) -> None:
    """Print the latest online feature row with its event time (ISO) and age."""
    timeframe_seconds(timeframe)  # a clear error for 1x or 5min
    symbol = normalize_symbol(symbol)
    settings = Settings()
    store = open_online_store(settings.resolved_online_url, prefix=settings.online_prefix)
    try:
        row = store.read_latest(exchange, symbol, timeframe)
        live = store.read_live(exchange, symbol) if with_live else None
    finally:
        store.close()
    if row is None:
        click.echo(f"error: no online feature row for {exchange} {symbol} {timeframe} in the online store "
                   f"(is `rtml stream` running for it?)", err=True)
        sys.exit(1)
    document = row_document(row, time.time_ns(), live)
    click.echo(json.dumps(document) if as_json else row_text(document))
