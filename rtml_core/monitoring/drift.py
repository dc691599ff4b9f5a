"""Population stability index: how far a feature's distribution moved between two samples.

``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over bins, with ``e_i`` and ``a_i`` the shares of
the expected (reference, e.g. the training set) and actual (recent) sample in bin ``i``. The
bins are the expected sample's quantiles, so each holds about the same share of it; empty bins
get a small floor share so the logarithm stays finite. Rule of thumb (Siddiqi, *Credit Risk
Scorecards*): below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 major shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
EMPTY_BIN_SHARE = 1e-4
"""Share given to a bin one sample never reaches (keeps ``ln(a / e)`` finite)."""


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def bin_edges(expected, bins: int = 10) -> np.ndarray:
    """Inner edges at the expected sample's quantiles (duplicates merged: a discrete feature
    gets one bin per distinct value range)."""
    reference = _finite(expected)
    if len(reference) == 0:
        raise ValueError("the expected sample has no finite value")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    quantiles = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(quantiles)


def psi(expected, actual, bins: int = 10) -> float:
    """PSI of ``actual`` against ``expected`` (NaN and infinities ignored); 0 = same distribution."""
    reference, recent = _finite(expected), _finite(actual)
    if len(recent) == 0:
        raise ValueError("the actual sample has no finite value")
    edges = bin_edges(reference, bins)
    # side="right": a value equal to an edge falls in the bin above it, the same for both samples
    e_counts = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    a_counts = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=len(edges) + 1)
    e_share = np.maximum(e_counts / len(reference), EMPTY_BIN_SHARE)
    a_share = np.maximum(a_counts / len(recent), EMPTY_BIN_SHARE)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


def drift_level(value: float) -> str:
    if not np.isfinite(value):
        return "unknown"
    if value >= PSI_MAJOR:
        return "major"
    if value >= PSI_MODERATE:
        return "moderate"
    return "stable"


def feature_drift(expected: pd.DataFrame, actual: pd.DataFrame, names: Sequence[str], bins: int = 10) -> pd.DataFrame:
    """One row per feature: feature, psi, level (stable/moderate/major/unknown), n_expected, n_actual.

    A feature with no finite value in either sample (an indicator still warming up) gets
    ``psi`` NaN and level ``unknown`` rather than a made-up number.
    """
    missing = [n for n in names if n not in expected.columns or n not in actual.columns]
    if missing:
        raise ValueError(f"features missing from a sample: {', '.join(missing)}")
    rows = []
    for name in names:
        reference, recent = _finite(expected[name]), _finite(actual[name])
        value = psi(reference, recent, bins) if len(reference) and len(recent) else float("nan")
        rows.append({"feature": name, "psi": value, "level": drift_level(value),
                     "n_expected": len(reference), "n_actual": len(recent)})
    return pd.DataFrame(rows, columns=["feature", "psi", "level", "n_expected", "n_actual"])
