"""Symbols inside rtml are BASE-QUOTE (BTC-USD); exchange spellings are mapped at the edge."""

from __future__ import annotations

import re
from collections.abc import Iterable

from rtml_core.errors import InputError

_ASSET_ALIASES = {"XBT": "BTC", "XXBT": "BTC", "XETH": "ETH", "ZUSD": "USD", "ZEUR": "EUR", "XDG": "DOGE"}
_KNOWN_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "TUSD", "DAI", "USD", "EUR", "GBP", "JPY", "CAD",
                 "AUD", "CHF", "BTC", "XBT", "ETH", "BNB", "TRY", "BRL")
_ASSET = re.compile(r"^[A-Z0-9]{1,12}$")
_CANONICAL = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")


def _asset(code: str) -> str:
    code = code.upper()
    return _ASSET_ALIASES.get(code, code)


class PairTable:
    """One exchange's pair list: every spelling it uses -> ``BASE-QUOTE``, and ``BASE-QUOTE`` ->
    the name its REST API takes (Kraken's ``altname``, Binance's ``symbol``)."""

    def __init__(self, exchange: str, pairs: Iterable[tuple[str, str, Iterable[str]]] = ()):
        """``pairs``: (REST name, canonical symbol, other spellings) per pair."""
        self.exchange = exchange
        self._canonical: dict[str, str] = {}
        self._rest: dict[str, str] = {}
        for rest_name, canonical, spellings in pairs:
            self._rest.setdefault(canonical, rest_name)
            for spelling in (rest_name, canonical, *spellings):
                self._canonical.setdefault(spelling.upper(), canonical)

    def __len__(self) -> int:
        return len(self._rest)

    def canonical(self, raw: str) -> str | None:
        """``BASE-QUOTE`` of one of the exchange's spellings, None when the list does not name it."""
        return self._canonical.get(raw.strip().upper())

    def rest_name(self, symbol: str) -> str | None:
        """The REST API's name of a canonical symbol, None when the list does not have the pair."""
        return self._rest.get(symbol)

    @classmethod
    def kraken(cls, entries: Iterable[tuple[str, str, str]]) -> PairTable:
        """From AssetPairs entries (key, ``altname``, ``wsname``); assets from ``wsname`` (XBT/USD)."""
        rows = []
        for key, altname, wsname in entries:
            base, _, quote = wsname.partition("/")
            if base and quote:
                rows.append((altname, f"{_asset(base)}-{_asset(quote)}", (key, wsname, base + quote)))
        return cls("kraken", rows)

    @classmethod
    def binance(cls, entries: Iterable[tuple[str, str, str]]) -> PairTable:
        """From exchangeInfo entries (``symbol``, ``baseAsset``, ``quoteAsset``)."""
        return cls("binance", [(symbol, f"{_asset(base)}-{_asset(quote)}", ())
                               for symbol, base, quote in entries])


_KRAKEN_PAIRS = """
XXBTZUSD XBTUSD XBT/USD
XBTUSDT XBTUSDT XBT/USDT
XBTUSDC XBTUSDC XBT/USDC
XXBTZEUR XBTEUR XBT/EUR
XXBTZGBP XBTGBP XBT/GBP
XETHZUSD ETHUSD ETH/USD
ETHUSDT ETHUSDT ETH/USDT
XETHZEUR ETHEUR ETH/EUR
XETHXXBT ETHXBT ETH/XBT
SOLUSD SOLUSD SOL/USD
XDGUSD XDGUSD XDG/USD
XXRPZUSD XRPUSD XRP/USD
XLTCZUSD LTCUSD LTC/USD
ADAUSD ADAUSD ADA/USD
USDTZUSD USDTUSD USDT/USD
USDCUSD USDCUSD USDC/USD
TUSDUSD TUSDUSD TUSD/USD
"""
"""Kraken AssetPairs entries (key, altname, wsname) as Kraken lists them: the offline fallback."""

_BINANCE_PAIRS = """
BTCUSDT BTC USDT
ETHUSDT ETH USDT
BNBUSDT BNB USDT
SOLUSDT SOL USDT
XRPUSDT XRP USDT
DOGEUSDT DOGE USDT
ADAUSDT ADA USDT
LTCUSDT LTC USDT
BTCUSDC BTC USDC
ETHUSDC ETH USDC
USDCUSDT USDC USDT
BTCFDUSD BTC FDUSD
BTCTUSD BTC TUSD
TUSDUSDT TUSD USDT
BTCEUR BTC EUR
ETHEUR ETH EUR
ETHBTC ETH BTC
BNBBTC BNB BTC
"""
"""Binance exchangeInfo entries (symbol, baseAsset, quoteAsset): the offline fallback."""


def _rows(text: str) -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in text.strip().splitlines()]  # type: ignore[misc]


BUNDLED_PAIRS: dict[str, PairTable] = {
    "kraken": PairTable.kraken(_rows(_KRAKEN_PAIRS)),
    "binance": PairTable.binance(_rows(_BINANCE_PAIRS)),
}
"""Real pairs of each exchange, used when its own pair list cannot be fetched (offline)."""


def bundled_pairs(exchange: str) -> PairTable:
    """The bundled pair list of ``exchange`` (empty for an exchange that spells BASE-QUOTE)."""
    return BUNDLED_PAIRS.get(exchange, PairTable(exchange))


def normalize_symbol(raw: str, pairs: PairTable | None = None) -> str:
    """Map an exchange spelling (``XBT/USD``, ``BTCUSDT``, ``btc-usd``, ``XXBTZUSD``) to ``BTC-USD``.

    A spelling without a separator is looked up in ``pairs`` (an exchange's own list) or else in
    every bundled list (``XBTUSD`` is BTC-USD, not XB-TUSD), before splitting on a known quote.
    """
    text = raw.strip().upper()
    tables = [pairs] if pairs is not None else list(BUNDLED_PAIRS.values())
    for table in tables:
        found = table.canonical(text)
        if found is not None:
            return found
    for sep in ("/", "-", "_", ":"):
        if sep in text:
            base, _, quote = text.partition(sep)
            return _checked(_asset(base), _asset(quote), raw)
    if len(text) == 8 and text[0] in "XZ" and text[4] in "XZ":  # Kraken legacy XXBTZUSD
        return _checked(_asset(text[:4]), _asset(text[4:]), raw)
    for quote in _KNOWN_QUOTES:
        if text.endswith(quote) and len(text) > len(quote):
            return _checked(_asset(text[: -len(quote)]), _asset(quote), raw)
    raise InputError(f"cannot split symbol {raw!r} into BASE-QUOTE")


def _checked(base: str, quote: str, raw: str) -> str:
    if not (_ASSET.match(base) and _ASSET.match(quote)):
        raise InputError(f"symbol {raw!r} has characters other than letters and digits")
    return f"{base}-{quote}"


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` if it is canonical BASE-QUOTE, else raise a clear error."""
    if not _CANONICAL.match(symbol):
        raise InputError(f"symbol {symbol!r} is not BASE-QUOTE in upper-case letters and digits")
    return symbol


def to_exchange_symbol(exchange: str, symbol: str) -> str:
    """The spelling an exchange's API expects for a canonical symbol."""
    base, quote = validate_symbol(symbol).split("-")
    if exchange == "kraken":  # WebSocket v2 and REST accept BTC/USD; REST pairs also take XBTUSD
        return f"{base}/{quote}"
    if exchange == "binance":
        return f"{base}{quote}"
    if exchange == "coinbase":
        return f"{base}-{quote}"
    return symbol
