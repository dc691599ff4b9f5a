"""Small parsing steps shared by the importers: opening files, times, decimals, sides."""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

from rtml_core.errors import InputError
from rtml_core.symbols import normalize_symbol

NS_PER_S = 1_000_000_000


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, gunzipping it when it is gzip (by magic bytes)."""
    file = Path(path)
    try:
        handle = open(file, "rb")
    except OSError as error:
        raise InputError(
            f"cannot read the file: {error.strerror or error}", source=str(path)
        ) from None
    if handle.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


def open_text(path: str | Path) -> IO[str]:
    """Open a text file (UTF-8) for reading, gunzipping it when it is gzip."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="")


class CsvRows:
    """``csv.reader`` over a (gzipped) UTF-8 file; read, decode and CSV errors become an
    InputError naming the file and the line. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = path
        self.source = str(path)
        self._handle = open_text(path)
        self._reader = csv.reader(self._lines())

    def __enter__(self) -> CsvRows:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._handle.close()
        if exc_type is not None and issubclass(exc_type, csv.Error):
            raise InputError(
                f"not valid CSV: {exc}", source=self.source, line=self._reader.line_num
            ) from None

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def _lines(self) -> Iterator[str]:
        try:
            yield from self._handle
        except UnicodeDecodeError as error:
            raise InputError(
                f"not UTF-8 text: {error.reason}",
                source=self.source,
                line=_first_undecodable_line(self.path),
            ) from None
        except (EOFError, OSError, zlib.error) as error:
            raise InputError(
                f"cannot read the file: {error}", source=self.source, line=self._reader.line_num + 1
            ) from None

    def __iter__(self) -> Iterator[list[str]]:
        return self._reader  # the C reader itself: no Python call per row


def _first_undecodable_line(path: str | Path) -> int | None:
    """The 1-based line holding the first byte that is not UTF-8 (only on the error path:
    text-mode reading decodes in blocks and cannot say)."""
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def read_text(path: str | Path) -> str:
    with open_text(path) as handle:
        try:
            return handle.read()
        except (UnicodeDecodeError, OSError, EOFError) as error:
            raise InputError(f"the file is not readable text: {error}", source=str(path)) from None


def parse_decimal(
    text: str,
    what: str,
    source: str,
    line: int | None,
    *,
    positive: bool = False,
    allow_zero: bool = True,
) -> Decimal:
    """An exact Decimal from an exchange's decimal string; finite and not negative."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        raise InputError(
            f"{what} {text!r} is not a decimal number", source=source, line=line
        ) from None
    if (
        not value.is_finite()
        or value < 0
        or (positive and not value)
        or (not allow_zero and not value)
    ):
        raise InputError(
            f"{what} {text!r} must be a finite number >= 0" + (" and > 0" if positive else ""),
            source=source,
            line=line,
        )
    return value


def checked_symbol(raw: str, source: str, line: int | None = None) -> str:
    """``normalize_symbol`` with the file and line in the error."""
    try:
        return normalize_symbol(raw)
    except InputError as error:
        raise InputError(error.problem, source=source, line=line) from None


def epoch_to_ns(value: int) -> int:
    """Seconds, milliseconds, microseconds or nanoseconds since the epoch -> ns, by size.

    Valid for dates between 1973 and 2286 in every unit (the ranges do not overlap there).
    """
    magnitude = abs(value)
    if magnitude < 10**11:
        return value * NS_PER_S
    if magnitude < 10**14:
        return value * 1_000_000
    if magnitude < 10**17:
        return value * 1_000
    return value


def canonical_timeframe(seconds: int) -> str:
    """A whole number of seconds as rtml's timeframe name: 60 -> ``1m``, 3600 -> ``1h``."""
    if seconds <= 0:
        raise ValueError(f"timeframe of {seconds} s")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_DIGITS = re.compile(r"\d+")
_CDD_HOUR = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{1,2})-(AM|PM)$")


class TimeParser:
    """Text -> int ns: ISO 8601 (``2013-09-01 17:00:00.083``, ``...T...Z``), epoch numbers in
    s/ms/µs/ns, and CryptoDataDownload's ``2019-10-17 09-AM``. Naive times are UTC.

    Parsing is cached per minute, so a tick file pays for ``datetime`` once a minute.
    """

    def __init__(self) -> None:
        self._minutes: dict[str, int] = {}
        self._last_text = ""
        self._last_ns = 0

    def __call__(self, text: str) -> int:
        if text == self._last_text:  # tick files repeat a timestamp for a burst of trades
            return self._last_ns
        minute = self._minutes.get(text[:16])
        seconds = text[17:19]
        if minute is not None and text[16:17] == ":" and seconds.isdigit():
            rest = text[19:]
            if not rest:
                ns = (minute + int(seconds)) * NS_PER_S
            elif rest[0] == "." and rest[1:].isdigit():
                ns = (minute + int(seconds)) * NS_PER_S + int((rest[1:] + "000000000")[:9])
            else:
                ns = self._parse(text.strip())
        else:
            ns = self._parse(text.strip())
        self._last_text = text
        self._last_ns = ns
        return ns

    def _parse(self, text: str) -> int:
        if not text:
            raise ValueError("empty time")
        if text[0].isdigit() and (text.isdigit() or _is_plain_number(text)):
            if "." in text:
                return epoch_to_ns_decimal(text)
            return epoch_to_ns(int(text))
        match = _CDD_HOUR.match(text)
        if match:
            hour = int(match.group(2)) % 12 + (12 if match.group(3) == "PM" else 0)
            day = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
            return (int(day.timestamp()) + hour * 3600) * NS_PER_S
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        moment = datetime.fromisoformat(iso)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        whole = int(moment.replace(microsecond=0).timestamp())
        frac_ns = moment.microsecond * 1000
        dot = text.find(".", 17)
        if dot != -1:  # keep sub-microsecond digits datetime would drop
            digits = _DIGITS.match(text, dot + 1)
            if digits:
                frac_ns = int((digits.group(0) + "000000000")[:9])
        if len(text) >= 16 and text[10] in " T" and text[13] == ":" and not moment.utcoffset():
            if len(self._minutes) > 100_000:
                self._minutes.clear()
            self._minutes[text[:16]] = whole - whole % 60
        return whole * NS_PER_S + frac_ns


def _is_plain_number(text: str) -> bool:
    whole, dot, frac = text.partition(".")
    return whole.isdigit() and (not dot or frac.isdigit())


def epoch_to_ns_decimal(text: str) -> int:
    """An epoch number with a fraction (``1762795433.97``): the unit by the whole part's size."""
    whole, _, frac = text.partition(".")
    unit_ns = epoch_to_ns(1) if not int(whole) else epoch_to_ns(int(whole)) // int(whole)
    return int(whole) * unit_ns + int(Decimal("0." + (frac or "0")) * unit_ns)


def parse_mapping(text: str | None) -> dict[str, str]:
    """``'time=Date,open=BTC.open'`` -> ``{'time': 'Date', 'open': 'BTC.open'}``."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        field, sep, column = part.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise InputError(f"--map entry {part!r} is not FIELD=COLUMN")
        mapping[field.strip().lower()] = column.strip()
    return mapping
