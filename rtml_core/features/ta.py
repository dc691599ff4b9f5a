"""The one import of pandas-ta: ``pandas_ta`` on Python >= 3.12, ``pandas_ta_classic`` below.

Every batch indicator call in rtml goes through ``ta`` from this module, always with
``talib=True`` so that pandas-ta takes its TA-Lib backend (TA-Lib is a dependency).
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 12):  # pragma: no cover - exercised on Python 3.12+ only
    import pandas_ta as ta
else:
    import pandas_ta_classic as ta

import talib
from talib import abstract as talib_abstract
from talib import stream as talib_stream

__all__ = ["ta", "talib", "talib_abstract", "talib_stream"]
