"""``rtml history sync`` and ``rtml history export``: market history through the Dagster assets.

``sync`` materializes ``raw_trades`` and ``validated_candles`` (with their quality checks) for
the days of each configured market that the Dagster instance has no materialization of, one
run per contiguous range, in-process and recorded in the instance (``recording_instance``:
``DAGSTER_HOME`` when set, else ``RTML_HOME/dagster_home``, the one ``rtml up`` uses). Days are UTC and both bounds are
inclusive. ``export`` writes stored candles in the ``rtml candles`` CSV columns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from rtml_core.errors import InputError, RtmlError

HISTORY_ASSETS = ("raw_trades", "validated_candles")


def parse_day(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{option} {text!r} is not a UTC day (YYYY-MM-DD)") from None


def select_markets(catalog, exchange: str | None, symbol: str | None) -> list:
    """The catalog's markets of ``exchange`` and ``symbol`` (any spelling); an error when none is."""
    from rtml_core.symbols import normalize_symbol

    wanted = normalize_symbol(symbol) if symbol else None
    picked = [m for m in catalog if (exchange is None or m.exchange == exchange)
              and (wanted is None or m.symbol == wanted)]
    if not picked:
        known = ", ".join(f"{m.exchange} {m.symbol}" for m in catalog)
        raise InputError(f"no configured market matches --exchange {exchange or '*'} --symbol "
                         f"{wanted or '*'} (configured: {known})")
    return picked


def contiguous(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted days grouped into inclusive (first, last) runs of consecutive days."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(days):
        if ranges and day == ranges[-1][1] + dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


@dataclass(frozen=True)
class SyncPlan:
    """One market's days in the asked range and the ranges of them still to materialize."""

    market: object
    days: list[dt.date]
    missing: list[tuple[dt.date, dt.date]]


def plan_sync(markets: Sequence, materialized: set[str], since: dt.date | None, until: dt.date | None,
              now: dt.datetime | None = None) -> list[SyncPlan]:
    """Per market: its days within ``since..until`` (inclusive, cut to the market's own days at
    ``now``) and the contiguous ranges whose ``validated_candles`` partition is not materialized."""
    from rtml_assets.market_history.partitions import partition_key

    plans = []
    for market in markets:
        days = [d for d in market.days(now) if (since is None or d >= since) and (until is None or d <= until)]
        missing = [d for d in days if str(partition_key(d, market)) not in materialized]
        plans.append(SyncPlan(market, days, contiguous(missing)))
    return plans


@click.group("history")
def history() -> None:
    """Market history of the configured markets: sync the missing days, export stored candles."""


@history.command("sync")
@click.option("--exchange", default=None, help="Only this exchange's markets.")
@click.option("--symbol", default=None, help="Only this symbol (BTC-USD, or the exchange's spelling).")
@click.option("--since", default=None, help="First UTC day, YYYY-MM-DD (default: each market's first_day).")
@click.option("--until", default=None, help="Last UTC day, inclusive (default: last_day, or yesterday).")
def sync(exchange: str | None, symbol: str | None, since: str | None, until: str | None) -> None:
    """Materialize raw_trades and validated_candles for every day not yet materialized."""
    import dagster as dg

    from rtml_assets.definitions import build_definitions, market_catalog
    from rtml_assets.market_history.partitions import range_tags
    from rtml_assets.selections import without_freshness
    from rtml_cli.dagster_home import recording_instance
    from rtml_core.settings import Settings

    since_day, until_day = parse_day(since, "--since"), parse_day(until, "--until")
    if since_day and until_day and until_day < since_day:
        raise InputError(f"--until {until_day} is before --since {since_day}")
    settings = Settings()
    catalog = market_catalog(settings)
    chosen = select_markets(catalog, exchange, symbol)
    defs = build_definitions(settings, catalog)
    selection = without_freshness(defs, HISTORY_ASSETS)
    instance = recording_instance(settings)
    failed: list[str] = []
    try:
        materialized = set(instance.get_materialized_partitions(dg.AssetKey("validated_candles")))
        for plan in plan_sync(chosen, materialized, since_day, until_day):
            key = plan.market.key
            todo = sum((last - first).days + 1 for first, last in plan.missing)
            click.echo(f"{key}: {len(plan.days)} days in range, {todo} to materialize")
            for first, last in plan.missing:
                result = dg.materialize(
                    [*defs.assets, *defs.asset_checks], selection=selection, resources=defs.resources,
                    instance=instance, tags=range_tags(plan.market, first, last), raise_on_error=False)
                status = "done" if result.success else "FAILED"
                click.echo(f"  {first}..{last}: run {result.run_id} {status}")
                if not result.success:
                    failed.append(f"{key} {first}..{last} (run {result.run_id})")
    finally:
        instance.dispose()
    if failed:
        raise RtmlError("history sync failed for " + "; ".join(failed) + ": see the run's events in Dagster")


@history.command("export")
@click.option("--exchange", required=True, help="Exchange name as stored (kraken, binance, ...).")
@click.option("--symbol", required=True, help="BTC-USD, or the exchange's spelling.")
@click.option("--timeframe", required=True, help="Candle timeframe: 1m, 5m, 1h, ...")
@click.option("--since", default=None, help="First UTC day, YYYY-MM-DD (default: the first stored).")
@click.option("--until", default=None, help="Last UTC day, inclusive (default: the last stored).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write: time,open,high,low,close,volume,vwap,trade_count.")
def export(exchange: str, symbol: str, timeframe: str, since: str | None, until: str | None, output: Path) -> None:
    """Write stored candles in the `rtml candles` CSV columns (atomically)."""
    from rtml_assets.market_history.partitions import day_start_ns
    from rtml_assets.market_history.sources import frame_to_candles
    from rtml_core.candles import write_candles_csv
    from rtml_core.settings import Settings
    from rtml_core.stores.offline import open_offline_store
    from rtml_core.symbols import normalize_symbol
    from rtml_core.timeframes import timeframe_seconds

    timeframe_seconds(timeframe)
    canonical = normalize_symbol(symbol)
    since_day, until_day = parse_day(since, "--since"), parse_day(until, "--until")
    if since_day and until_day and until_day < since_day:
        raise InputError(f"--until {until_day} is before --since {since_day}")
    start = day_start_ns(since_day) if since_day else None
    end = day_start_ns(until_day + dt.timedelta(days=1)) if until_day else None
    store = open_offline_store(Settings().resolved_offline_url)
    try:
        frame = store.read_candles(exchange, canonical, timeframe, start, end, exact=True)
    finally:
        store.close()
    if frame.empty:
        raise InputError(f"no stored {timeframe} candles of {exchange} {canonical} "
                         f"in {since_day or 'the first day'}..{until_day or 'the last day'}")
    rows = write_candles_csv(frame_to_candles(frame, exchange, canonical, timeframe), output)
    click.echo(f"wrote {rows} {timeframe} candles of {exchange} {canonical} to {output}")

