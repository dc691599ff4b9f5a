"""From a predicted return to a risk-managed order intent. Pure; nothing is sent anywhere.

docs/api.md explains every number; the formulas here are the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SECONDS_PER_YEAR = 365 * 86_400


@dataclass(frozen=True, slots=True)
class ExecutionParams:
    max_position: float  # fraction of capital
    fee_bps: float  # taker fee per side
    spread_bps: float  # assumed spread when no live one is known
    vol_target: float  # annualized
    atr_stop_mult: float
    atr_take_mult: float


@dataclass(frozen=True, slots=True)
class Execution:
    side: str  # buy | sell | hold
    size: float  # fraction of capital, 0 when hold
    stop_loss: float | None
    take_profit: float | None
    expected_edge_bps: float
    cost_bps: float
    spread_bps: float
    volatility_annualized: float | None
    atr: float | None
    reason: str


def prob_up(predicted_return: float, residual_std: float) -> float:
    """P(realized log return > 0) if it is Normal(predicted, residual_std): Phi(r / sigma)."""
    if not residual_std > 0 or not math.isfinite(residual_std):
        return 1.0 if predicted_return > 0 else 0.0 if predicted_return < 0 else 0.5
    return 0.5 * (1.0 + math.erf(predicted_return / (residual_std * math.sqrt(2.0))))


def annualized_volatility(realized_vol: float | None, timeframe_s: int) -> float | None:
    """Per-candle log-return std scaled by sqrt(candles per year); None when unknown."""
    if realized_vol is None or not math.isfinite(realized_vol) or realized_vol <= 0:
        return None
    return realized_vol * math.sqrt(SECONDS_PER_YEAR / timeframe_s)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def execution_payload(
    *,
    price: float,
    predicted_return: float,
    realized_vol: float | None,
    atr: float | None,
    timeframe_s: int,
    params: ExecutionParams,
    live_spread_bps: float | None = None,
    model_kind: str = "",
) -> Execution:
    """Side, size, stop and target for one prediction (see docs/api.md, "Execution payload").

    A baseline champion (``baseline_zero``, ``baseline_mean10``) claims no edge: always hold."""
    spread = live_spread_bps if _finite(live_spread_bps) is not None else params.spread_bps
    edge_bps = abs(math.expm1(predicted_return)) * 1e4
    cost_bps = 2.0 * params.fee_bps + spread
    volatility = annualized_volatility(realized_vol, timeframe_s)
    atr = _finite(atr)
    if model_kind.startswith("baseline"):
        return Execution("hold", 0.0, None, None, edge_bps, cost_bps, spread, volatility, atr,
                         f"the champion of this market is the {model_kind} baseline: no model has beaten "
                         "the random walk significantly, so no trade")
    if edge_bps <= cost_bps:
        return Execution("hold", 0.0, None, None, edge_bps, cost_bps, spread, volatility, atr,
                         f"expected move {edge_bps:.2f} bps does not cover costs {cost_bps:.2f} bps")
    if volatility is None:
        return Execution("hold", 0.0, None, None, edge_bps, cost_bps, spread, None, atr,
                         "realized volatility unknown: cannot size the position")
    side = "buy" if predicted_return > 0 else "sell"
    size = min(params.max_position, params.vol_target / volatility)
    direction = 1.0 if side == "buy" else -1.0
    stop = take = None
    if atr is not None:
        stop = price - direction * params.atr_stop_mult * atr
        take = price + direction * params.atr_take_mult * atr
    reason = (f"expected move {edge_bps:.2f} bps > costs {cost_bps:.2f} bps; size "
              f"min({params.max_position:g}, {params.vol_target:g} / {volatility:.4f})")
    if atr is None:
        reason += "; ATR unknown: no stop or target"
    return Execution(side, size, stop, take, edge_bps, cost_bps, spread, volatility, atr, reason)
