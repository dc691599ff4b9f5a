"""The feature set: the one place where rtml's features are named and parameterised.

Add or change a feature here (one ``feature(...)`` line) and it shows everywhere: batch
(``compute_features``), stream (``FeatureEngine``), the offline tables (by its
``feature_set_version``), training and the API. Changing a definition changes
``DEFAULT_FEATURE_SET.version``, so rows computed before stay apart from rows computed after.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from rtml_core.features.indicators import KINDS

DEFINITIONS_REVISION = 1
"""Bump when the arithmetic behind an unchanged name and parameters changes."""


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name (the contract), indicator kind, parameters and which output."""

    name: str
    indicator: str
    params: Mapping[str, int | float] = field(default_factory=dict)
    output: str = "value"
    warmup: int = 0
    description: str = ""

    def __hash__(self) -> int:
        return hash((self.name, self.node_key, self.output))

    @property
    def kind(self) -> str:
        return self.indicator

    @property
    def node_key(self) -> tuple:
        """Features with the same key share one incremental node and one batch call."""
        return (self.indicator, tuple(sorted(self.params.items())))


def feature(name: str, indicator: str, output: str = "value", **params: int | float) -> FeatureSpec:
    """A spec with its warm-up and description taken from the indicator kind."""
    kind = KINDS.get(indicator)
    if kind is None:
        raise ValueError(f"feature {name!r}: unknown indicator {indicator!r}; known: {', '.join(sorted(KINDS))}")
    if output not in kind.outputs:
        raise ValueError(f"feature {name!r}: indicator {indicator!r} has outputs {kind.outputs}, not {output!r}")
    description = kind.describe(**params)
    if output != "value":
        description = f"{output} of {description}"
    return FeatureSpec(
        name=name,
        indicator=indicator,
        params=MappingProxyType(dict(params)),
        output=output,
        warmup=kind.warmup(**params),
        description=description,
    )


class FeatureSet:
    """An ordered set of features with a stable version (a short hash of names and parameters).

    ``roles`` names the feature that serves each role its consumers ask for (``realized_vol``,
    ``atr`` for the API's execution sizing), so they never spell a feature name by hand.
    """

    def __init__(self, specs: Iterable[FeatureSpec], roles: Mapping[str, str] | None = None):
        self.specs: tuple[FeatureSpec, ...] = tuple(specs)
        names = [spec.name for spec in self.specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate feature names: {', '.join(duplicates)}")
        if not self.specs:
            raise ValueError("a feature set needs at least one feature")
        unknown = sorted(role for role, name in (roles or {}).items() if name not in names)
        if unknown:
            raise ValueError(f"roles {unknown} name features not in the set")
        self.roles: Mapping[str, str] = MappingProxyType(dict(roles or {}))

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    @property
    def warmup(self) -> int:
        """Rows before every feature has a value (the longest warm-up)."""
        return max(spec.warmup for spec in self.specs)

    def spec(self, name: str) -> FeatureSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def stored_spec(self) -> dict:
        """What the feature set is, as JSON stored beside its version in the offline store."""
        return {"features": self.to_json(), "warmup": int(self.warmup)}

    def to_json(self) -> list[dict]:
        """The definition as plain data (stored beside the version in the offline store)."""
        return [
            {
                "name": spec.name,
                "indicator": spec.indicator,
                "output": spec.output,
                "params": dict(sorted(spec.params.items())),
                "warmup": spec.warmup,
                "description": spec.description,
            }
            for spec in self.specs
        ]

    @cached_property
    def version(self) -> str:
        payload = {
            "revision": DEFINITIONS_REVISION,
            "features": [
                [spec.name, spec.indicator, spec.output, sorted(spec.params.items())] for spec in self.specs
            ],
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
        return digest.hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    def __repr__(self) -> str:
        return f"FeatureSet(version={self.version!r}, features={len(self.specs)})"


DEFAULT_FEATURE_SET = FeatureSet(
    [
        feature("sma_10", "sma", length=10),
        feature("sma_20", "sma", length=20),
        feature("sma_50", "sma", length=50),
        feature("ema_12", "ema", length=12),
        feature("ema_26", "ema", length=26),
        feature("rsi_14", "rsi", length=14),
        feature("macd_12_26_9", "macd", "macd", fast=12, slow=26, signal=9),
        feature("macd_signal_12_26_9", "macd", "signal", fast=12, slow=26, signal=9),
        feature("macd_hist_12_26_9", "macd", "hist", fast=12, slow=26, signal=9),
        feature("bb_lower_20_2", "bbands", "lower", length=20, std=2.0),
        feature("bb_mid_20_2", "bbands", "mid", length=20, std=2.0),
        feature("bb_upper_20_2", "bbands", "upper", length=20, std=2.0),
        feature("bb_width_20_2", "bbands", "bandwidth", length=20, std=2.0),
        feature("bb_percent_20_2", "bbands", "percent", length=20, std=2.0),
        feature("atr_14", "atr", "atr", length=14),
        feature("natr_14", "atr", "natr", length=14),
        feature("obv", "obv"),
        feature("roc_10", "roc", length=10),
        feature("mom_10", "mom", length=10),
        feature("stoch_k_14_3_3", "stoch", "k", k=14, d=3, smooth_k=3),
        feature("stoch_d_14_3_3", "stoch", "d", k=14, d=3, smooth_k=3),
        feature("adx_14", "adx", length=14),
        feature("cci_20", "cci", length=20),
        feature("willr_14", "willr", length=14),
        feature("mfi_14", "mfi", length=14),
        feature("log_return_1", "log_return", length=1),
        feature("log_return_5", "log_return", length=5),
        feature("log_return_15", "log_return", length=15),
        feature("realized_vol_20", "realized_vol", length=20),
        feature("realized_vol_60", "realized_vol", length=60),
        feature("vwap_deviation", "vwap_deviation"),
    ],
    roles={"realized_vol": "realized_vol_20", "atr": "atr_14"},
)
