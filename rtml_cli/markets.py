"""``rtml markets list``: the configured markets, where their history comes from, the last day stored."""

from __future__ import annotations

import datetime as dt

import click


def source_label(market) -> str:
    """``kraken-rest`` (with its URL when overridden), or the file's name and format."""
    if market.is_rest:
        return f"{market.source} ({market.rest_url})" if market.rest_url else str(market.source)
    return f"{market.source.name} ({market.format})"


def last_stored_days(inventory, markets) -> dict[str, dt.date | None]:
    """Each market's last day with stored candles, from the offline store's inventory."""
    candles = inventory[inventory["kind"] == "candles"]
    out: dict[str, dt.date | None] = {}
    for market in markets:
        rows = candles[(candles["exchange"] == market.exchange) & (candles["symbol"] == market.symbol)
                       & (candles["timeframe"] == market.timeframe)]
        out[market.key] = rows["last"].max().date() if len(rows) else None
    return out


def market_rows(markets, last_stored: dict[str, dt.date | None], now: dt.datetime | None = None) -> list[dict]:
    """One row per market: the table ``rtml markets list`` prints (pure)."""
    rows = []
    for market in markets:
        days = f"{market.first_day}..{market.last_day if market.last_day else 'open'}"
        rows.append({
            "market": market.key, "exchange": market.exchange, "symbol": market.symbol,
            "timeframe": market.timeframe, "source": source_label(market), "days": days,
            "last_day": str(market.last_day_at(now)), "last_stored_day": str(last_stored.get(market.key) or "-"),
            "stream": "yes" if market.stream else "no",
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain fixed-width table with a header."""
    if not rows:
        return "(none)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


@click.group("markets")
def markets() -> None:
    """The market catalog (RTML_MARKETS_FILE, or the bundled demo markets)."""


@markets.command("list")
def list_markets() -> None:
    """Configured markets: source, days, last day with history, last day stored in the offline store."""
    from rtml_assets.definitions import market_catalog
    from rtml_core.settings import Settings
    from rtml_core.stores.offline import open_offline_store

    settings = Settings()
    catalog = market_catalog(settings)
    store = open_offline_store(settings.resolved_offline_url)
    try:
        last_stored = last_stored_days(store.markets(), catalog)
    finally:
        store.close()
    click.echo(format_table(market_rows(catalog, last_stored)))
