"""rtml's feature set: one definition, computed in batch (pandas-ta) and incrementally.

- ``definitions``: ``FeatureSpec``, ``FeatureSet``, ``DEFAULT_FEATURE_SET`` (names, versions).
- ``batch.compute_features(candles)``: pandas-ta over a candle frame.
- ``incremental.FeatureEngine``: ``update(candle)`` with O(window) state, ``peek``, snapshots.
"""

from rtml_core.features.batch import compute_features
from rtml_core.features.definitions import DEFAULT_FEATURE_SET, FeatureSet, FeatureSpec, feature
from rtml_core.features.incremental import FeatureEngine

__all__ = ["DEFAULT_FEATURE_SET", "FeatureEngine", "FeatureSet", "FeatureSpec", "compute_features", "feature"]
