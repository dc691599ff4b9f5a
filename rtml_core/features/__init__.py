"""rtml's feature set: one definition, computed in batch (pandas-ta) and incrementally.

- ``definitions``: ``FeatureSpec``, ``FeatureSet``, ``DEFAULT_FEATURE_SET`` (names, versions).
- ``batch.compute_features(candles)``: pandas-ta over a candle frame.
- ``incremental.FeatureEngine``: ``update(candle)`` with O(window) state, ``peek``, snapshots.

Names are imported on first use (PEP 562), so a light submodule (``microstructure``, read by the
API) does not pull pandas and TA-Lib into the process.
"""

import importlib

_EXPORTS = {"compute_features": "batch", "DEFAULT_FEATURE_SET": "definitions", "FeatureSet": "definitions",
            "FeatureSpec": "definitions", "feature": "definitions", "FeatureEngine": "incremental"}

__all__ = ["DEFAULT_FEATURE_SET", "FeatureEngine", "FeatureSet", "FeatureSpec", "compute_features", "feature"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
