"""The compiled tree path agrees with XGBoost on the real holdout, or is not used."""

from __future__ import annotations

import numpy as np

from api.inference import probe_rows, tree_predictor
from tests.api.conftest import FEATURES, register_xgboost


def test_compiled_path_agrees_with_xgboost_on_the_real_holdout(registry, real_data):
    version = register_xgboost(registry, real_data, depth=4)
    booster = registry.load_model(version).predictor.booster
    holdout = real_data.features.loc[:, FEATURES].to_numpy(np.float32)[real_data.holdout]
    predictor = tree_predictor(booster, len(FEATURES), holdout)
    assert predictor.path == "onnxruntime" and predictor.max_abs_diff <= 1e-6
    reference = booster.inplace_predict(holdout)
    served = np.array([predictor.predict(holdout[i : i + 1]) for i in range(len(holdout))])
    assert np.max(np.abs(served - reference)) <= 1e-6
    assert np.ptp(served) > 0  # the model is not a constant: agreement means something


def test_treelite_is_next_and_xgboost_is_the_fallback(registry, real_data):
    booster = registry.load_model(register_xgboost(registry, real_data)).predictor.booster
    treelite = tree_predictor(booster, len(FEATURES), order=("treelite-gtil",))
    assert treelite.path == "treelite-gtil" and treelite.max_abs_diff <= 1e-6
    refused = tree_predictor(booster, len(FEATURES), tolerance=-1.0)  # nothing can agree to < 0
    assert refused.path == "xgboost"
    assert any("onnxruntime" in reason for reason in refused.rejected)
    row = real_data.features.loc[:, FEATURES].to_numpy(np.float32)[:1]
    assert refused.predict(row) == float(booster.inplace_predict(row)[0])


def test_probe_rows_sit_on_both_sides_of_every_split(registry, real_data):
    booster = registry.load_model(register_xgboost(registry, real_data)).predictor.booster
    rows = probe_rows(booster, len(FEATURES))
    splits = booster.trees_to_dataframe()
    splits = splits[splits["Feature"] != "Leaf"]
    names = list(booster.feature_names or [f"f{i}" for i in range(len(FEATURES))])
    for feature, group in splits.groupby("Feature"):
        column = rows[:, names.index(feature)]
        threshold = np.float32(group["Split"].iloc[0])
        assert (column < threshold).any() and (column >= threshold).any()
