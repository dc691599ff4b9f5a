"""Training configs choose feature groups; the point-in-time join takes the microstructure group
as of t (the row of the same candle, never a later one) and the request is checked before any
data is read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rtml_assets.training.assets import load_training_set, resolve_request
from rtml_assets.training.config import TrainingConfig
from rtml_core.errors import InputError
from rtml_core.features.microstructure import MICROSTRUCTURE, MicrostructureSet, join_group
from rtml_core.stores.offline import open_offline_store
from tests.training.data import btc_candles, store_candles, trailing_features

TF_NS = 1800 * 1_000_000_000
MARKET = ("gym", "BTC-USD", "30m")
VERSION = "trailing-groups-v1"


def _group(features: pd.DataFrame, group: MicrostructureSet = MICROSTRUCTURE) -> pd.DataFrame:
    """A stand-in group frame of real values (columns of the real feature frame under the group's names)."""
    source = features.drop(columns=["time"]).to_numpy(np.float64)
    columns = {name: source[:, i % source.shape[1]] for i, name in enumerate(group.names)}
    return pd.DataFrame({"time": features["time"], **columns})


def test_join_takes_the_group_row_of_the_same_candle_never_a_later_one():
    features = trailing_features(btc_candles(40))
    group = _group(features)
    kept = group.drop(index=[10, 11, 25]).reset_index(drop=True)
    joined = join_group(features, kept, timeframe_ns=TF_NS)
    name = MICROSTRUCTURE.names[0]
    assert list(joined["time"]) == list(features["time"])
    for i in range(40):
        if i in (10, 11, 25):
            assert np.isnan(joined[name][i])  # no row of that candle: missing, not the next one
        else:
            assert joined[name][i] == group[name][i] or (np.isnan(group[name][i]) and np.isnan(joined[name][i]))
    lagged = join_group(features, kept, timeframe_ns=TF_NS, max_lag_candles=1)
    assert lagged[name][10] == group[name][9] and np.isnan(lagged[name][11])  # one candle back at most
    with pytest.raises(ValueError, match="share column names"):
        join_group(features, features, timeframe_ns=TF_NS)


def _store(url: str, rows: int, group_rows: slice | None, group: MicrostructureSet = MICROSTRUCTURE) -> object:
    candles = btc_candles(rows)
    store = open_offline_store(url)
    store_candles(store, candles)
    features = trailing_features(candles)
    store.register_feature_set(VERSION, [c for c in features.columns if c != "time"], {"test": True})
    store.write_features(features, feature_set_version=VERSION, exchange="gym", symbol="BTC-USD", timeframe="30m")
    if group_rows is not None:
        store.register_feature_set(group.version, list(group.names), group.to_json())
        store.write_features(_group(features, group).iloc[group_rows], feature_set_version=group.version,
                             exchange="gym", symbol="BTC-USD", timeframe="30m")
    return store


@pytest.mark.parametrize(("groups", "message"), [
    (["indicators", "orderflow"], "feature_groups \\['orderflow'\\]"),
    (["microstructure"], "must include 'indicators'"),
    (["indicators", "microstructure"], "no microstructure rows"),
])
def test_bad_groups_are_refused_before_any_read(sqlite_url, groups, message):
    store = _store(sqlite_url, 600, None)
    with pytest.raises(InputError, match=message):
        resolve_request(store.markets(), TrainingConfig(feature_set_version=VERSION, feature_groups=groups,
                                                        min_rows=100), VERSION, MARKET)
    store.close()


def test_training_set_with_the_microstructure_group_keeps_the_candles_that_have_it(sqlite_url):
    store = _store(sqlite_url, 900, slice(300, 900))
    config = TrainingConfig(feature_set_version=VERSION, feature_groups=["indicators", "microstructure"], min_rows=100)
    request = resolve_request(store.markets(), config, VERSION, MARKET)
    assert request.microstructure_version == MICROSTRUCTURE.version
    built = load_training_set(store, request)
    plain = load_training_set(store, resolve_request(store.markets(), TrainingConfig(
        feature_set_version=VERSION, min_rows=100), VERSION, MARKET))
    store.close()
    assert set(MICROSTRUCTURE.names) <= set(built.feature_names)
    assert not set(MICROSTRUCTURE.names) & set(plain.feature_names)
    assert built.microstructure_version == MICROSTRUCTURE.version
    first_with_group = btc_candles(900)["time"][300]
    assert built.frame["time"].min() > first_with_group  # t is a close: rows before the group's first candle drop
    assert 0 < built.row_count < plain.row_count
    merged = built.frame.merge(plain.frame, on="time", suffixes=("", "_plain"))
    assert len(merged) == built.row_count
    assert np.array_equal(merged["target"], merged["target_plain"])  # same targets: only the inputs grew


def test_a_sidecar_with_other_book_levels_gives_its_own_version_which_training_finds(sqlite_url):
    five = MicrostructureSet(levels=5)
    assert five.version != MICROSTRUCTURE.version and "ms_imbalance_5" in five.names
    store = _store(sqlite_url, 900, slice(300, 900), five)
    config = TrainingConfig(feature_set_version=VERSION, feature_groups=["indicators", "microstructure"], min_rows=100)
    request = resolve_request(store.markets(), config, VERSION, MARKET)
    built = load_training_set(store, request)
    store.close()
    assert request.microstructure_version == five.version
    assert set(five.names) <= set(built.feature_names)
