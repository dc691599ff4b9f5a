"""Monitoring against reality, pure functions on frames (no I/O):

- ``drift``: population stability index (PSI) of each feature between two samples;
- ``live``: logged predictions joined with the prices realized after their horizon, and the
  live MAE, directional accuracy and skill against the baselines, by model version.
"""

from rtml_core.monitoring.drift import PSI_MAJOR, PSI_MODERATE, feature_drift, psi
from rtml_core.monitoring.live import join_realized, live_metrics

__all__ = ["PSI_MAJOR", "PSI_MODERATE", "feature_drift", "join_realized", "live_metrics", "psi"]
