"""The broker's wire format: subjects, message ids and msgpack payloads of normalized events.

One JetStream message carries the trades of one market from one exchange message
(``TradeBatch``) or one book snapshot/diff (``BookUpdate``), msgpack-encoded with msgspec
(Decimals as their exact strings). Subjects are ``rtml.trades.<exchange>.<symbol>`` and
``rtml.book.<exchange>.<symbol>`` (``rtml`` is ``RTML_BROKER_SUBJECT_PREFIX``: streams on one server
cannot share subjects); the ``Nats-Msg-Id`` of a trade batch is built from the
exchange, symbol and its first and last trade ids, so publishing the same trades again (a
retry, a reconnect) is dropped by JetStream's duplicate window.
"""

from __future__ import annotations

import zlib

import msgspec

from rtml_core.errors import InputError
from rtml_core.schemas import BookUpdate, Trade

SUBJECT_ROOT = "rtml"
_FORBIDDEN = set(" .*>\t\r\n")


class TradeBatch(msgspec.Struct, frozen=True, array_like=True):
    """The trades of one market from one exchange message, in id order.

    ``published_ns`` is the ingestor's wall clock when it handed the batch to JetStream (the
    consumer measures the broker's added lag from it). A tick carries no trades and
    ``advance_ns``: the exchange feed was quiet up to then, so candles may close on it (event
    time in the stream itself: a replay closes them at the same place)."""

    exchange: str
    symbol: str
    published_ns: int
    trades: list[Trade]
    advance_ns: int | None = None  # a tick (no trades): the feed's clock reached this time


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(TradeBatch)
_book_decoder = msgspec.msgpack.Decoder(BookUpdate)


def _token(value: str, what: str) -> str:
    if not value or _FORBIDDEN & set(value):
        raise InputError(f"{what} {value!r} cannot be a NATS subject token (no spaces, '.', '*' or '>')")
    return value


def trade_subject(exchange: str, symbol: str, root: str = SUBJECT_ROOT) -> str:
    return f"{root}.trades.{_token(exchange, 'exchange')}.{_token(symbol, 'symbol')}"


def tick_subject(exchange: str, symbol: str, root: str = SUBJECT_ROOT) -> str:
    """The feed's clock while it is quiet (a ``TradeBatch`` with no trades and ``advance_ns``)."""
    return f"{root}.tick.{_token(exchange, 'exchange')}.{_token(symbol, 'symbol')}"


def book_subject(exchange: str, symbol: str, root: str = SUBJECT_ROOT) -> str:
    return f"{root}.book.{_token(exchange, 'exchange')}.{_token(symbol, 'symbol')}"


def market_subjects(exchange: str, symbol: str, root: str = SUBJECT_ROOT) -> str:
    """The subject filter of every message of one market (trades and book)."""
    return f"{root}.*.{_token(exchange, 'exchange')}.{_token(symbol, 'symbol')}"


def stream_subjects(root: str = SUBJECT_ROOT) -> list[str]:
    """One wildcard over trades and book: a market's consumer filters both (``rtml.*.<exchange>.<symbol>``),
    which JetStream before 2.10 accepts only as a subset of a single stream subject."""
    return [f"{_token(root, 'subject prefix')}.>"]


def trade_msg_id(exchange: str, symbol: str, first_id: int, last_id: int) -> str:
    return f"t:{exchange}:{symbol}:{first_id}-{last_id}"


def book_msg_id(update: BookUpdate, payload: bytes) -> str:
    marker = update.sequence if update.sequence is not None else zlib.crc32(payload)
    return f"b:{update.exchange}:{update.symbol}:{update.time_ns}:{marker}"


def encode_trades(exchange: str, symbol: str, trades: list[Trade], published_ns: int) -> bytes:
    return _encoder.encode(TradeBatch(exchange, symbol, published_ns, trades))


def encode_tick(exchange: str, symbol: str, advance_ns: int, published_ns: int) -> bytes:
    return _encoder.encode(TradeBatch(exchange, symbol, published_ns, [], advance_ns))


def tick_msg_id(exchange: str, symbol: str, advance_ns: int) -> str:
    return f"a:{exchange}:{symbol}:{advance_ns}"


def encode_book(update: BookUpdate) -> bytes:
    return _encoder.encode(update)


def decode_trades(payload: bytes) -> TradeBatch:
    try:
        return _batch_decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise InputError(f"not an rtml trade batch: {error}", source="broker") from error


def decode_book(payload: bytes) -> BookUpdate:
    try:
        return _book_decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise InputError(f"not an rtml book update: {error}", source="broker") from error


def is_trade_subject(subject: str) -> bool:
    """Trades or a tick (both ``TradeBatch``); else a book update."""
    return subject.split(".", 2)[1:2] in (["trades"], ["tick"])
