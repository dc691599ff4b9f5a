"""The prob_up calibrator on real BTC-USD 30m returns: flat counts as not-up, the zero baseline
gets the base rate, the served (scalar) path equals the fitted one, and it round-trips as JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtml_core.training.calibration import Calibrator, fit_calibrator, probability_metrics, up
from tests.training.data import btc_candles


@pytest.fixture(scope="module")
def returns():
    close = btc_candles(6000)["close"].to_numpy()
    realized = np.log(close[1:] / close[:-1])
    previous = np.r_[0.0, realized[:-1]]
    activity = np.abs(previous) + 1e-4
    return realized, previous, activity


def test_flat_moves_count_as_not_up():
    assert up(np.array([0.001, 0.0, -0.002, 0.0])).tolist() == [1.0, 0.0, 0.0, 0.0]
    scores = probability_metrics(np.full(4, 0.25), np.array([0.001, 0.0, -0.002, 0.0]), base_rate=0.25)
    assert scores["realized_p_up"] == 0.25 and scores["realized_p_flat"] == 0.5
    assert scores["brier"] == pytest.approx(scores["brier_base_rate"])


def test_constant_predictions_get_the_base_rate_and_fits_are_served_the_same(returns):
    realized, previous, activity = returns
    zero = fit_calibrator(np.zeros(len(realized)), realized)
    share = np.mean(realized > 0)
    assert zero.b == 0.0 and zero.prob_up(0.0) == pytest.approx((np.sum(realized > 0) + 0.5) / (len(realized) + 1))
    assert abs(zero.prob_up(0.0) - share) < 1e-3

    fitted = fit_calibrator(previous, realized, activity, "natr_14")
    assert fitted.activity == "natr_14" and fitted.fitted_rows == len(realized)
    vector = fitted.prob_up(previous[:50], activity[:50])
    scalar = [fitted.prob_up(float(p), float(a)) for p, a in zip(previous[:50], activity[:50])]
    np.testing.assert_allclose(vector, scalar, rtol=0, atol=1e-12)
    assert abs(np.mean(fitted.prob_up(previous, activity)) - share) < 0.01  # logistic fits keep the mean
    again = Calibrator.from_dict(json.loads(fitted.to_json()))
    assert again == fitted
    assert fitted.prob_up(0.0, None) == fitted.prob_up(0.0, float(fitted.activity_median))  # missing: the median
