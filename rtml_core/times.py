"""Integer nanoseconds since the epoch as ISO 8601 UTC text: the one formatter rtml uses.

Its callers write slightly different texts, each kept as it was published:

- ``"ns"`` (default): ``2026-11-21T14:55:00Z``, ``.fffffffff`` only when there is a fraction
  (the online store's ``event_time_iso``, the CLI, the stream's Dagster reports);
- ``"trim"``: the same with the fraction's trailing zeros removed (candle CSV files);
- ``"ms"``: always ``.fff`` (the API's times, from the float seconds as it always served them);
- ``"offset"``: ``+00:00`` instead of ``Z``, fraction ``.ffffff`` (or ``.fffffffff`` when the
  nanoseconds need it), as pandas writes it (the model registry's records).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Literal

Style = Literal["ns", "trim", "ms", "offset"]


@functools.lru_cache(maxsize=4096)  # many markets share each candle close time
def iso_from_ns(time_ns: int, style: Style = "ns") -> str:
    """``time_ns`` as ISO 8601 UTC in one of the styles of the module docstring."""
    if style == "ms":
        return datetime.fromtimestamp(time_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    seconds, fraction = divmod(time_ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if style == "offset":
        if fraction:
            text += f".{fraction // 1000:06d}" if fraction % 1000 == 0 else f".{fraction:09d}"
        return text + "+00:00"
    if fraction:
        text += f".{fraction:09d}".rstrip("0") if style == "trim" else f".{fraction:09d}"
    return text + "Z"
