"""Symbols inside rtml are BASE-QUOTE (BTC-USD); exchange spellings are mapped at the edge."""

from __future__ import annotations

import re

from rtml_core.errors import InputError

_ASSET_ALIASES = {"XBT": "BTC", "XXBT": "BTC", "XETH": "ETH", "ZUSD": "USD", "ZEUR": "EUR", "XDG": "DOGE"}
_KNOWN_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "TUSD", "DAI", "USD", "EUR", "GBP", "JPY", "CAD",
                 "AUD", "CHF", "BTC", "XBT", "ETH", "BNB", "TRY", "BRL")
_ASSET = re.compile(r"^[A-Z0-9]{1,12}$")
_CANONICAL = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")


def _asset(code: str) -> str:
    code = code.upper()
    return _ASSET_ALIASES.get(code, code)


def normalize_symbol(raw: str) -> str:
    """Map an exchange spelling (``XBT/USD``, ``BTCUSDT``, ``btc-usd``, ``XXBTZUSD``) to ``BTC-USD``."""
    text = raw.strip().upper()
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
