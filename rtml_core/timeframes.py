"""Timeframes: ``30s``, ``1m``, ``5m``, ``15m``, ``1h``, ``1d`` -> whole seconds."""

from __future__ import annotations

import re

from rtml_core.errors import InputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^([1-9][0-9]*)([smhd])$")
NS = 1_000_000_000


def timeframe_seconds(timeframe: str) -> int:
    match = _PATTERN.match(timeframe.strip())
    if not match:
        raise InputError(f"timeframe {timeframe!r} is not a whole number of s, m, h or d (e.g. 1m, 5m, 1h)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def timeframe_ns(timeframe: str) -> int:
    return timeframe_seconds(timeframe) * NS


def window_start_ns(time_ns: int, timeframe_ns_: int) -> int:
    """Start of the tumbling window holding ``time_ns`` (windows align to the epoch)."""
    return time_ns - time_ns % timeframe_ns_
