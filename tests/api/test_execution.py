"""The execution payload's numbers, checked by hand."""

from __future__ import annotations

import math

import pytest

from api.execution import ExecutionParams, annualized_volatility, execution_payload, prob_up

PARAMS = ExecutionParams(max_position=1.0, fee_bps=10.0, spread_bps=2.0, vol_target=0.5,
                         atr_stop_mult=2.0, atr_take_mult=3.0)


def test_prob_up_is_the_normal_cdf_of_return_over_residual_std():
    assert prob_up(0.0, 0.01) == 0.5
    assert prob_up(0.01, 0.01) == pytest.approx(0.8413447460685429)
    assert prob_up(-0.02, 0.01) == pytest.approx(0.022750131948179195)
    assert prob_up(0.001, 0.0) == 1.0 and prob_up(-0.001, 0.0) == 0.0


def test_hold_when_the_edge_does_not_cover_fees_and_spread():
    payload = execution_payload(price=100.0, predicted_return=0.001, realized_vol=0.01, atr=1.0,
                                timeframe_s=60, params=PARAMS)
    assert payload.side == "hold" and payload.size == 0 and payload.stop_loss is None
    assert payload.cost_bps == 22.0 and payload.expected_edge_bps == pytest.approx(10.005, abs=1e-3)


def test_buy_sized_by_volatility_with_atr_stops():
    payload = execution_payload(price=100.0, predicted_return=0.01, realized_vol=0.002, atr=1.5,
                                timeframe_s=1800, params=PARAMS, live_spread_bps=4.0)
    volatility = 0.002 * math.sqrt(365 * 86400 / 1800)
    assert payload.side == "buy" and payload.cost_bps == 24.0 and payload.spread_bps == 4.0
    assert payload.volatility_annualized == pytest.approx(volatility)
    assert payload.size == pytest.approx(min(1.0, 0.5 / volatility))
    assert payload.stop_loss == pytest.approx(97.0) and payload.take_profit == pytest.approx(104.5)


def test_sell_mirrors_and_size_is_capped():
    payload = execution_payload(price=200.0, predicted_return=-0.02, realized_vol=1e-6, atr=2.0,
                                timeframe_s=60, params=PARAMS)
    assert payload.side == "sell" and payload.size == 1.0
    assert payload.stop_loss == 204.0 and payload.take_profit == 194.0


def test_unknown_volatility_holds_and_unknown_atr_has_no_stops():
    assert execution_payload(price=1.0, predicted_return=0.05, realized_vol=math.nan, atr=0.1,
                             timeframe_s=60, params=PARAMS).side == "hold"
    payload = execution_payload(price=1.0, predicted_return=0.05, realized_vol=0.001, atr=None,
                                timeframe_s=60, params=PARAMS)
    assert payload.side == "buy" and payload.stop_loss is None and "ATR unknown" in payload.reason
    assert annualized_volatility(0.0, 60) is None
