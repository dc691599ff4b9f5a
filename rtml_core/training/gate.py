"""The promotion gate: does a candidate beat a reference forecast, by a margin and significantly?

Every model is fitted on, and judged by, one loss: the squared error of the log return over
the horizon H (``LOSS``). On the same walk-forward holdout the candidate is compared with
the zero-return baseline (the random walk) and with the market's current champion by a
one-sided Diebold-Mariano test: the loss differential ``d_t = L(ref_t) - L(cand_t)`` has a
positive mean when the candidate is better. Targets of consecutive rows overlap when H spans
several candles, so ``d_t`` is autocorrelated; its long-run variance is the Newey-West (HAC,
Bartlett kernel) estimate with at least ``h - 1`` lags, ``h = H / timeframe``, and the
statistic gets the Harvey-Leybourne-Newbold small-sample correction and Student-t tails.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LOSS = "squared_error_log_return"
"""The one loss: fitted on (Lasso, XGBoost ``reg:squarederror``), tuned on, judged by."""
TEST_NAME = "Diebold-Mariano, one-sided, Newey-West HAC variance (Bartlett), HLN correction"


def squared_error(predicted: np.ndarray, realized: np.ndarray) -> np.ndarray:
    return (np.asarray(realized, np.float64) - np.asarray(predicted, np.float64)) ** 2


def newey_west_lags(n: int, horizon_steps: int) -> int:
    """At least ``h - 1`` (the overlap of the targets), at least the usual ``4 (n/100)^(2/9)``."""
    return max(int(horizon_steps) - 1, int(math.floor(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0))))


def hac_variance(d: np.ndarray, lags: int) -> float:
    """Newey-West long-run variance of ``d`` (Bartlett weights ``1 - k / (lags + 1)``)."""
    d = np.asarray(d, np.float64) - float(np.mean(d))
    n = len(d)
    variance = float(d @ d) / n
    for k in range(1, min(lags, n - 1) + 1):
        variance += 2.0 * (1.0 - k / (lags + 1.0)) * float(d[k:] @ d[:-k]) / n
    return variance


@dataclass(frozen=True)
class Comparison:
    """The candidate against one reference on the same rows."""

    reference: str
    n: int
    loss_candidate: float  # mean squared error of the log return
    loss_reference: float
    skill: float  # 1 - loss_candidate / loss_reference (> 0: the candidate is better)
    statistic: float  # DM statistic (HLN-corrected); > 0 favours the candidate
    p_value: float  # one-sided: H1 "the candidate's expected loss is lower"
    lags: int

    def to_dict(self) -> dict:
        return asdict(self)


def diebold_mariano(loss_candidate: np.ndarray, loss_reference: np.ndarray, horizon_steps: int,
                    reference: str = "reference") -> Comparison:
    """One-sided DM test of equal expected loss against "the candidate's loss is lower"."""
    from scipy.stats import t as student_t

    a = np.asarray(loss_candidate, np.float64)
    b = np.asarray(loss_reference, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 3:
        raise ValueError(f"loss series must be 1-D, equally long and have 3+ rows; got {a.shape} and {b.shape}")
    n = len(a)
    d = b - a
    lags = newey_west_lags(n, horizon_steps)
    mean_d = float(np.mean(d))
    variance = hac_variance(d, lags)
    h = max(int(horizon_steps), 1)
    correction = math.sqrt(max((n + 1 - 2 * h + h * (h - 1) / n) / n, 1e-12))
    if variance <= 0 or not np.isfinite(variance):
        statistic = 0.0 if mean_d == 0 else math.copysign(math.inf, mean_d)
    else:
        statistic = correction * mean_d / math.sqrt(variance / n)
    p_value = float(student_t.sf(statistic, df=n - 1)) if np.isfinite(statistic) else (0.0 if statistic > 0 else 1.0)
    loss_a, loss_b = float(np.mean(a)), float(np.mean(b))
    skill = 1.0 - loss_a / loss_b if loss_b > 0 else (0.0 if loss_a == 0 else -math.inf)
    return Comparison(reference, n, loss_a, loss_b, skill, float(statistic), p_value, lags)


@dataclass(frozen=True)
class GateConfig:
    margin: float = 0.0  # required skill against each reference
    p_value: float = 0.05  # one-sided DM p-value must be below this


@dataclass(frozen=True)
class Verdict:
    """Whether a candidate may replace a market's champion, and why, in words."""

    passed: bool
    reason: str
    test: str
    comparisons: tuple[Comparison, ...]
    champion_version: int | None  # the champion it was judged against (None: none yet)
    margin: float
    p_value_limit: float

    def to_dict(self) -> dict:
        return {
            "passed": self.passed, "reason": self.reason, "test": self.test,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "champion_version": self.champion_version, "margin": self.margin, "p_value_limit": self.p_value_limit,
        }


def judge(candidate: np.ndarray, realized: np.ndarray, references: dict[str, np.ndarray], horizon_steps: int,
          config: GateConfig = GateConfig(), champion_version: int | None = None) -> Verdict:
    """Compare ``candidate`` with every reference prediction (``{"baseline_zero": ..., "champion vN": ...}``).

    Passes only when the skill beats the margin and p < ``config.p_value`` against every one.
    """
    loss = squared_error(candidate, realized)
    comparisons = tuple(
        diebold_mariano(loss, squared_error(predicted, realized), horizon_steps, name)
        for name, predicted in references.items()
    )
    failures = []
    for c in comparisons:
        if not c.skill > config.margin:
            failures.append(f"skill against {c.reference} is {c.skill:+.4f}, not above the margin {config.margin:g}")
        elif not c.p_value < config.p_value:
            failures.append(f"the improvement over {c.reference} is not significant "
                            f"(DM {c.statistic:+.2f}, p = {c.p_value:.3f} >= {config.p_value:g})")
    if failures:
        reason = "; ".join(failures) + ": the champion stays"
    else:
        reason = "beats " + " and ".join(
            f"{c.reference} (skill {c.skill:+.4f}, DM {c.statistic:+.2f}, p = {c.p_value:.2g})" for c in comparisons
        ) + f" on the same {comparisons[0].n} holdout rows"
    return Verdict(not failures, reason, TEST_NAME, comparisons, champion_version, config.margin, config.p_value)
