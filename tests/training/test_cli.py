"""``rtml models list|show|promote`` against a registry in a real store (both backends)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.registry import ModelRegistry
from rtml_core.training.datasets import build_training_set
from rtml_core.training.pipeline import train_model
from rtml_core.training.tuning import SearchSpace
from tests.training.data import btc_candles, trailing_features


@pytest.fixture(scope="module")
def lasso():
    candles = btc_candles(1200)
    ts = build_training_set(trailing_features(candles), candles, timeframe="30m", horizon_s=1800,
                            feature_set_version="cli-v1", exchange="gym", symbol="BTC-USD")
    return ts, train_model(ts, "lasso", SearchSpace(n_folds=2, lasso_alphas=(1e-5,)))


def _register(registry, ts, model):
    return registry.register(
        kind=model.kind, artifact=model.artifact, artifact_format=model.artifact_format,
        feature_names=ts.feature_names, feature_set_version=ts.feature_set_version, timeframe=ts.timeframe,
        horizon_s=ts.horizon_s, training_rows=ts.row_count, training_set_hash=ts.content_hash,
        metrics=model.metrics, residual_std=model.metrics["residual_std"], exchange=ts.exchange, symbol=ts.symbol,
    )


def test_list_show_promote_and_rollback(offline_url, tmp_path, monkeypatch, lasso):
    monkeypatch.setenv("RTML_OFFLINE_URL", offline_url)
    monkeypatch.setenv("RTML_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    runner = CliRunner()
    empty = runner.invoke(cli, ["models", "list"])
    assert empty.exit_code == 0 and "no models registered" in empty.output

    registry = ModelRegistry(offline_url, tmp_path / "artifacts")
    first = _register(registry, *lasso)
    second = _register(registry, *lasso)
    registry.close()

    promoted = runner.invoke(cli, ["models", "promote", str(first.version)])
    assert promoted.exit_code == 0, promoted.output
    assert f"model version {first.version} is now the champion (previous: none" in promoted.output
    runner.invoke(cli, ["models", "promote", str(second.version), "--reason", "newer"])
    rollback = runner.invoke(cli, ["models", "promote", str(first.version), "--reason", "rollback"])
    assert f"(previous: {second.version}," in rollback.output

    listing = runner.invoke(cli, ["models", "list"])
    lines = listing.output.splitlines()
    assert lines[1].startswith(f"* {first.version:>7}") and lines[2].startswith(f"  {second.version:>7}")
    assert "gym BTC-USD 30m" in listing.output

    shown = json.loads(runner.invoke(cli, ["models", "show", str(first.version)]).output)
    assert shown["champion"] is True and shown["feature_names"] == list(lasso[0].feature_names)
    assert [p["reason"] for p in shown["promotions"]] == ["manual promotion from the command line", "rollback"]
    assert shown["metrics"]["skill_vs_zero"] == pytest.approx(lasso[1].metrics["skill_vs_zero"])

    missing = runner.invoke(cli, ["models", "show", "999"])
    assert missing.exit_code == 2 and "no model version 999" in missing.output
    assert runner.invoke(cli, ["models", "promote", "999"]).exit_code == 2
