"""The bundled real ES 1m market through the real pipeline: ``rtml train`` (a recorded Dagster run),
prob_up calibrated on the holdout, bad input refused before any work, and the look-ahead probe
on the real feature set."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rtml_assets.market_history.markets import demo_markets
from rtml_cli.main import cli
from rtml_core.features import DEFAULT_FEATURE_SET, compute_features
from rtml_core.registry import ModelRegistry
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_core.training.datasets import build_training_set
from rtml_core.training.models import mean_last_10_return, zero_return

ES = ("cme", "ES-USD", "1m")


@pytest.fixture(scope="module")
def es_home(tmp_path_factory):
    """RTML_HOME with the demo's ES history (to 2013-09-02) and the Kraken trades, imported and
    featurized by the demo's own steps."""
    from rtml_cli.demo import DEMO_STEPS, run_demo

    home = tmp_path_factory.mktemp("es_home")
    es, kraken = demo_markets()[0], demo_markets()[1]
    markets = home / "markets.yaml"
    markets.write_text("markets:\n" + "".join(
        f"  - {{exchange: {m.exchange}, symbol: {m.symbol}, timeframe: {m.timeframe}, format: {m.format}, "
        f"source: {m.source}, first_day: {m.first_day}, last_day: {m.last_day}, fill_gaps: {str(m.fill_gaps).lower()}"
        + (f", preset: {m.preset}" if m.preset else "") + "}\n" for m in (es, kraken)))
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RTML_OFFLINE_URL", "RTML_ONLINE_URL", "DAGSTER_HOME", "RTML_ARTIFACTS_DIR"):
            patch.delenv(name, raising=False)
        patch.setenv("RTML_HOME", str(home))
        patch.setenv("RTML_MARKETS_FILE", str(markets))
        demo = run_demo(Settings(), DEMO_STEPS[:2], echo=lambda line: None)
    assert not demo.failures, demo.failures
    return home


@pytest.fixture
def env(es_home, monkeypatch):
    for name in ("RTML_OFFLINE_URL", "RTML_ONLINE_URL", "DAGSTER_HOME", "RTML_ARTIFACTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RTML_HOME", str(es_home))
    monkeypatch.setenv("RTML_MARKETS_FILE", str(es_home / "markets.yaml"))
    return es_home


def _registry(home: Path) -> ModelRegistry:
    return ModelRegistry(open_offline_store(f"sqlite:///{(home / 'offline.sqlite').resolve()}"),
                         home / "artifacts", owns_store=True)


@pytest.mark.parametrize(("args", "message"), [
    (["--exchange", "cme", "--symbol", "ES-USD", "--timeframe", "5m"], "unknown market cme ES-USD 5m"),
    (["--exchange", "binance", "--symbol", "BTC-USDT", "--timeframe", "1m"], "unknown market binance"),
    (["--exchange", "kraken", "--symbol", "BTC-USDT", "--timeframe", "1m"], "too little history"),
    (["--exchange", "cme", "--symbol", "ES-USD", "--timeframe", "1m", "--horizon", "30s"],
     "shorter than the timeframe 1m"),
    (["--exchange", "cme", "--symbol", "ES-USD", "--timeframe", "1m", "--horizon", "soon"], "not a duration"),
])
def test_bad_input_exits_2_before_any_work(env, args, message):
    before = len(_registry(env).list())
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(_registry(env).list()) == before


def test_rtml_train_es_records_the_run_and_prob_up_is_calibrated(env):
    result = CliRunner().invoke(cli, ["train", "--exchange", "cme", "--symbol", "ES-USD", "--timeframe", "1m",
                                      "--horizon", "60s", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["success"] and report["horizon_s"] == 60 and report["rows"] > 1000
    assert set(report["models"]) == {"baseline_zero", "baseline_mean10", "lasso", "xgboost"}
    assert "Diebold-Mariano" in report["candidate"]["test"]
    assert report["candidate"]["verdict"] in ("passed", "failed") and report["candidate"]["why"]
    print("ES report:", json.dumps(report, default=str))

    registry = _registry(env)
    try:
        versions = [v for v in registry.list() if (v.exchange, v.symbol, v.timeframe) == ES]
        assert {v.kind for v in versions} == {"baseline_zero", "baseline_mean10", "lasso", "xgboost"}
        for v in versions:  # on the ES holdout, mean prob_up is within 0.03 of the realized P(up)
            m = v.metrics
            assert abs(m["mean_prob_up"] - m["realized_p_up"]) <= 0.03, (v.kind, m["mean_prob_up"],
                                                                          m["realized_p_up"])
            assert m["realized_p_flat"] > 0.3  # the flat mass the calibrator must handle
            assert v.calibration["fitted_on"].startswith("out-of-fold") and v.calibration["activity"] == "natr_14"
        candidate = registry.get(report["candidate"]["model_version"])
        champion = registry.champion(*ES)
        verdict = registry.verdict(candidate.version)
        assert (champion.version == candidate.version) == verdict["passed"]
        if not verdict["passed"]:
            assert champion.kind == "baseline_zero"
    finally:
        registry.close()
    instance = dg.DagsterInstance.from_config(str(env / "dagster_home"))
    try:
        run = instance.get_run_by_id(report["run_id"])
        assert run is not None and run.tags.get("dagster/partition") == "cme_ES-USD_1m"
    finally:
        instance.dispose()


def test_look_ahead_probe_on_the_real_feature_set(env):
    """Replace every candle after a cut T: features, price and baselines at t <= T and targets at
    t <= T - H are bit-identical."""
    store = open_offline_store(f"sqlite:///{(env / 'offline.sqlite').resolve()}")
    try:
        candles = store.read_candles(*ES)
    finally:
        store.close()
    candles = candles[["time", "open", "high", "low", "close", "volume"]].astype(
        {c: float for c in ("open", "high", "low", "close", "volume")}).reset_index(drop=True)
    cut = len(candles) * 2 // 3
    cut_time = candles["time"].iloc[cut] + pd.Timedelta(minutes=1)  # T: the close of candle ``cut``
    changed = candles.copy()
    later = changed.index > cut
    rng = np.random.default_rng(3)
    factor = np.exp(np.cumsum(rng.normal(0, 1e-3, later.sum())))
    for column in ("open", "high", "low", "close"):
        changed.loc[later, column] = changed.loc[later, column] * factor
    changed.loc[later, "volume"] = changed.loc[later, "volume"] * 3 + 1
    sets = [build_training_set(compute_features(c, DEFAULT_FEATURE_SET), c, timeframe="1m", horizon_s=60,
                               feature_set_version="probe") for c in (candles, changed)]
    before, after = (s.frame for s in sets)
    known = before["time"] <= cut_time
    assert known.sum() > 500 and (~known).sum() > 100
    columns = [*sets[0].feature_names, "price", "baseline_price"]
    a, b = before.loc[known], after.loc[after["time"] <= cut_time]
    assert len(a) == len(b) and (a["time"].to_numpy() == b["time"].to_numpy()).all()
    assert np.array_equal(a[columns].to_numpy(), b[columns].to_numpy(), equal_nan=True)
    assert np.array_equal(mean_last_10_return(a), mean_last_10_return(b))
    assert np.array_equal(zero_return(a), zero_return(b))
    settled = a["time"] <= cut_time - pd.Timedelta(seconds=60)
    assert np.array_equal(a.loc[settled, "target"].to_numpy(), b.loc[settled.to_numpy(), "target"].to_numpy())
    assert not np.array_equal(before.loc[~known, "price"].to_numpy()[:50], after.loc[~known, "price"].to_numpy()[:50])
