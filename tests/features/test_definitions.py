"""The feature set: the contract names, a stable version, warm-ups, one place to change."""

from __future__ import annotations

import pytest

from rtml_core.features import DEFAULT_FEATURE_SET, FeatureEngine, compute_features
from rtml_core.features.definitions import FeatureSet, feature
from tests.features.realdata import real_candles

CONTRACT = (
    "sma_10, sma_20, sma_50, ema_12, ema_26, rsi_14, macd_12_26_9, macd_signal_12_26_9, macd_hist_12_26_9, "
    "bb_lower_20_2, bb_mid_20_2, bb_upper_20_2, bb_width_20_2, bb_percent_20_2, atr_14, natr_14, obv, roc_10, "
    "mom_10, stoch_k_14_3_3, stoch_d_14_3_3, adx_14, cci_20, willr_14, mfi_14, log_return_1, log_return_5, "
    "log_return_15, realized_vol_20, realized_vol_60, vwap_deviation"
).split(", ")


def test_default_names_are_the_contract():
    assert DEFAULT_FEATURE_SET.names == CONTRACT


def test_version_is_stable_and_follows_names_and_params():
    again = FeatureSet(DEFAULT_FEATURE_SET.specs)
    assert again.version == DEFAULT_FEATURE_SET.version
    assert len(DEFAULT_FEATURE_SET.version) == 12
    changed = FeatureSet([*DEFAULT_FEATURE_SET.specs[:-1], feature("sma_10b", "sma", length=11)])
    assert changed.version != DEFAULT_FEATURE_SET.version
    a = FeatureSet([feature("x", "sma", length=10)])
    b = FeatureSet([feature("x", "sma", length=11)])
    assert a.version != b.version


def test_warmup_is_the_longest_feature_warmup():
    assert DEFAULT_FEATURE_SET.warmup == 60
    assert DEFAULT_FEATURE_SET.spec("adx_14").warmup == 27
    assert DEFAULT_FEATURE_SET.spec("macd_hist_12_26_9").warmup == 33
    assert DEFAULT_FEATURE_SET.spec("stoch_d_14_3_3").warmup == 17


def test_bad_definitions_are_refused():
    with pytest.raises(ValueError, match="unknown indicator"):
        feature("x", "nope", length=3)
    with pytest.raises(ValueError, match="outputs"):
        feature("x", "macd", "nope", fast=12, slow=26, signal=9)
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSet([feature("x", "sma", length=3), feature("x", "ema", length=3)])


def test_a_feature_added_in_one_place_shows_in_batch_and_stream():
    custom = FeatureSet([*DEFAULT_FEATURE_SET.specs, feature("sma_7", "sma", length=7), feature("rsi_3", "rsi", length=3)])
    candles = real_candles("eth_usd_30m_2017-2019.csv").iloc[:300]
    batch = compute_features(candles, custom)
    assert {"sma_7", "rsi_3"} <= set(batch.columns)
    engine = FeatureEngine(custom)
    last = engine.warm_from(candles)
    assert last["sma_7"] == pytest.approx(candles["close"].iloc[-7:].mean(), rel=1e-12)
    assert last["rsi_3"] == batch["rsi_3"].iloc[-1]


def test_to_json_carries_the_definition():
    data = DEFAULT_FEATURE_SET.to_json()
    assert [d["name"] for d in data] == CONTRACT
    assert data[0] == {
        "name": "sma_10", "indicator": "sma", "output": "value", "params": {"length": 10}, "warmup": 9,
        "description": DEFAULT_FEATURE_SET.specs[0].description,
    }


def test_roles_name_features_of_the_set_and_leave_the_version_alone():
    assert dict(DEFAULT_FEATURE_SET.roles) == {"realized_vol": "realized_vol_20", "atr": "atr_14"}
    assert set(DEFAULT_FEATURE_SET.roles.values()) <= set(DEFAULT_FEATURE_SET.names)
    assert FeatureSet(DEFAULT_FEATURE_SET.specs).version == DEFAULT_FEATURE_SET.version
    assert DEFAULT_FEATURE_SET.stored_spec() == {"features": DEFAULT_FEATURE_SET.to_json(),
                                                 "warmup": DEFAULT_FEATURE_SET.warmup}
    with pytest.raises(ValueError, match="roles \\['atr'\\]"):
        FeatureSet([feature("sma_10", "sma", length=10)], roles={"atr": "atr_14"})
