"""``rtml train --exchange E --symbol S --timeframe T [--horizon 60s] [--json]``: one market's
training assets, run through Dagster in-process and recorded in the instance like any run.

The market is checked against the catalog and the stored feature rows before any work (exit 2
with the reason); then the run builds the training set, registers the baselines, trains and
evaluates every model, judges the candidate and asks the registry to promote it. Exit 0
whether or not a candidate was promoted: a refused candidate is an answer, not an error.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import click

from rtml_core.errors import InputError

TRAINING_ASSETS = ["training_set", "baseline_model", "lasso_model", "xgboost_model",
                   "candidate_model", "champion_model"]
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
MODEL_KEYS = ("model_version", "loss", "rmse_return", "mae_return", "skill_vs_zero", "skill_vs_mean10",
              "p_value_vs_zero", "brier", "brier_base_rate", "log_loss", "log_loss_base_rate",
              "mean_prob_up", "realized_p_up", "cv_rmse_return", "served_fit")


@dataclass
class TrainingReport:
    """What one market's training run did: the models' holdout numbers, the test, the verdict."""

    market: str
    horizon_s: int
    success: bool
    seconds: float
    run_id: str | None = None
    rows: int | None = None
    models: dict[str, dict] = field(default_factory=dict)  # kind -> metrics
    candidate: dict = field(default_factory=dict)  # version, kind, verdict, why, test, p-values
    champion: dict = field(default_factory=dict)  # promoted, version, kind, note
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_horizon(text: str | None) -> int | None:
    """``60s``, ``5m``, ``1h`` or plain seconds -> seconds; None stays None (one candle)."""
    if text is None:
        return None
    from rtml_core.timeframes import timeframe_seconds

    value = text.strip()
    try:
        return int(value) if value.isdigit() else timeframe_seconds(value)
    except (InputError, ValueError):
        raise InputError(f"--horizon {text!r} is not a duration like 60s, 5m or 1h") from None


def find_market(markets: Sequence, exchange: str, symbol: str, timeframe: str):
    """The catalog entry of (exchange, symbol, timeframe), or a clear InputError listing the known ones."""
    from rtml_core.symbols import normalize_symbol

    try:
        symbol = normalize_symbol(symbol)
    except InputError as error:
        raise InputError(f"--symbol {symbol!r}: {error}") from None
    for market in markets:
        if (market.exchange, market.symbol, market.timeframe) == (exchange, symbol, timeframe):
            return market
    known = ", ".join(f"{m.exchange} {m.symbol} {m.timeframe}" for m in markets)
    raise InputError(f"unknown market {exchange} {symbol} {timeframe}; the catalog has: {known}")


def check_training_input(settings, market, horizon_s: int | None, min_rows: int = 200):
    """Resolve the training request against the stored feature rows (raises InputError: unknown
    feature rows, horizon shorter than a candle, too little history) without training anything."""
    from rtml_assets.training.assets import (
        default_feature_set_version,
        load_training_set,
        resolve_request,
    )
    from rtml_assets.training.config import TrainingConfig
    from rtml_core.stores.offline import open_offline_store

    config = TrainingConfig(horizon_s=horizon_s, min_rows=min_rows)
    store = open_offline_store(settings.resolved_offline_url)
    try:
        request = resolve_request(store.markets(), config, default_feature_set_version(),
                                  (market.exchange, market.symbol, market.timeframe))
        load_training_set(store, request)  # usable rows after gaps and warm-up: refuse too little here
        return request
    finally:
        store.close()


def training_run_config(horizon_s: int | None, tuning: dict | None = None, promotion: dict | None = None) -> dict:
    ops: dict = {"training_set": {"config": {"horizon_s": horizon_s}}}
    for name in ("baseline_model", "lasso_model", "xgboost_model"):
        if tuning:
            ops[name] = {"config": dict(tuning)}
    if promotion:
        ops["candidate_model"] = {"config": dict(promotion)}
    return {**QUIET_RUN, "ops": ops}


def _value(metadata_value):
    return getattr(metadata_value, "value", metadata_value)


def run_training(defs, instance, market, horizon_s: int, *, tuning: dict | None = None,
                 promotion: dict | None = None, tags: dict | None = None) -> TrainingReport:
    """Materialize the training assets of ``market``'s partition on ``instance``; read the report
    back from the run's events. A failed gate check is a verdict, not a failure of the run."""
    import dagster as dg

    from rtml_assets.selections import without_freshness
    from rtml_cli.demo import _root_cause

    started = time.perf_counter()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=without_freshness(defs, TRAINING_ASSETS),
        instance=instance,
        resources=defs.resources,
        partition_key=market.key,
        tags={"rtml/command": "train", **(tags or {})},
        run_config=training_run_config(horizon_s, tuning, promotion),
        raise_on_error=False,
    )
    report = TrainingReport(market.key, horizon_s, True, 0.0, run_id=result.run_id)
    metadata: dict[str, dict] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            metadata[materialization.asset_key.to_user_string()] = {
                k: _value(v) for k, v in materialization.metadata.items()}
        elif event.event_type_value == "STEP_FAILURE" and report.error is None:
            error = event.event_specific_data.error
            if "DagsterAssetCheckFailedError" in (error.cls_name or ""):
                continue  # the blocking gate refused the candidate: champion_model is skipped
            report.success = False
            report.error = f"{event.step_key}: {_root_cause(error)}"
    report.rows = metadata.get("training_set", {}).get("rows")
    for name in ("baseline_model", "lasso_model", "xgboost_model"):
        meta = metadata.get(name)
        if meta is None:
            continue
        if name == "baseline_model":
            report.models["baseline_zero"] = {
                "model_version": meta.get("baseline_zero_version"), "loss": meta.get("baseline_zero_loss"),
                "rmse_return": meta.get("baseline_zero_rmse_return"), "mae_return": meta.get("baseline_zero_mae_return"),
                "skill_vs_zero": 0.0, "skill_vs_mean10": meta.get("baseline_zero_skill_vs_mean10"),
                "brier": meta.get("baseline_zero_brier"), "brier_base_rate": meta.get("brier_base_rate")}
            report.models["baseline_mean10"] = {"model_version": meta.get("baseline_mean10_version"),
                                                **{k: meta.get(k) for k in MODEL_KEYS if k in meta}}
        else:
            report.models[name.removesuffix("_model")] = {k: meta.get(k) for k in MODEL_KEYS if k in meta}
    candidate = metadata.get("candidate_model", {})
    if candidate:
        report.candidate = {k: candidate.get(k) for k in (
            "model_version", "kind", "verdict", "why", "test", "p_value_vs_zero", "dm_statistic_vs_zero",
            "p_value_vs_champion", "dm_statistic_vs_champion", "judged_against_champion") if k in candidate}
    champion = metadata.get("champion_model")
    if champion:
        report.champion = {k: champion.get(k) for k in ("promoted", "champion_version", "champion_kind", "note")}
    elif candidate:
        report.champion = {"promoted": False, "note": "unchanged: the gate refused the candidate"}
    report.seconds = time.perf_counter() - started
    return report


def _num(value, digits: int = 4, signed: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}g}" if abs(value) < 1e-3 and value else \
        f"{value:.{digits}f}"


def report_lines(report: TrainingReport) -> list[str]:
    """The human-readable table: each model's holdout numbers against both baselines, the test, the verdict."""
    lines = [f"{report.market} H={report.horizon_s}s: {report.rows if report.rows is not None else '-'} rows "
             f"[{report.seconds:.1f}s]"]
    if report.models:
        lines.append(f"  {'model':<16} {'version':>7} {'loss(MSE)':>10} {'RMSE':>9} {'MAE':>9} {'skill/zero':>10} "
                     f"{'skill/mean10':>12} {'DM p/zero':>9} {'Brier':>7} {'Brier base':>10}")
        for kind, m in report.models.items():
            lines.append(
                f"  {kind:<16} {m.get('model_version', '-')!s:>7} {_num(m.get('loss')):>10} "
                f"{_num(m.get('rmse_return')):>9} {_num(m.get('mae_return')):>9} "
                f"{_num(m.get('skill_vs_zero'), signed=True):>10} {_num(m.get('skill_vs_mean10'), signed=True):>12} "
                f"{_num(m.get('p_value_vs_zero'), 3):>9} {_num(m.get('brier'), 4):>7} "
                f"{_num(m.get('brier_base_rate'), 4):>10}")
    if report.candidate:
        c = report.candidate
        lines.append(f"  candidate {c.get('kind')} v{c.get('model_version')}: verdict {c.get('verdict', '-')}: "
                     f"{c.get('why')}")
        lines.append(f"  test: {c.get('test')}")
    if report.champion:
        lines.append(f"  champion: {report.champion.get('note')}")
    if report.error:
        lines.append(f"  error: {report.error}")
    return lines


def training_instance(settings):
    """The Dagster instance runs are recorded in: DAGSTER_HOME's when set, else RTML_HOME/dagster_home."""
    import dagster as dg

    from rtml_cli.dagster_home import embedded_instance

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return embedded_instance(settings, persistent=True)


@click.command("train")
@click.option("--exchange", required=True, help="Exchange of the market (as in the catalog: cme, kraken, ...).")
@click.option("--symbol", required=True, help="BASE-QUOTE symbol (exchange spellings are mapped).")
@click.option("--timeframe", required=True, help="Candle timeframe of the market (1m, 30m, ...).")
@click.option("--horizon", default=None, help="Prediction horizon H (60s, 5m, 1h); default one candle.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def train(exchange: str, symbol: str, timeframe: str, horizon: str | None, as_json: bool) -> None:
    """Train one market: training set, baselines, Lasso, XGBoost, the gate and promotion, as a
    recorded Dagster run; prints each model's holdout metrics against both baselines and the verdict."""
    import dagster as dg

    from rtml_assets.definitions import build_definitions, market_catalog
    from rtml_core.settings import Settings

    settings = Settings()
    horizon_s = parse_horizon(horizon)
    market = find_market(market_catalog(settings), exchange, symbol, timeframe)
    request = check_training_input(settings, market, horizon_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.BetaWarning)
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        defs = build_definitions(settings)
        with training_instance(settings) as instance:
            report = run_training(defs, instance, market, request.horizon_s)
    if as_json:
        click.echo(json.dumps(report.to_dict(), default=str))
    else:
        for line in report_lines(report):
            click.echo(line)
    if not report.success:
        raise SystemExit(1)
