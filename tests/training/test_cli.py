"""``rtml models list|show|promote`` against a registry in a real store (both backends)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.registry import ModelRegistry
from rtml_core.stores.offline import open_offline_store
from rtml_core.training.datasets import build_training_set
from rtml_core.training.models import baseline_artifact
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

    ts, model = lasso
    registry = ModelRegistry(open_offline_store(offline_url), tmp_path / "artifacts", owns_store=True)
    zero = registry.register(
        kind="baseline_zero", artifact=baseline_artifact("baseline_zero"), artifact_format="json", feature_names=(),
        feature_set_version=ts.feature_set_version, timeframe=ts.timeframe, horizon_s=ts.horizon_s,
        training_rows=ts.row_count, training_set_hash=ts.content_hash, metrics={}, residual_std=0.01,
        exchange=ts.exchange, symbol=ts.symbol)
    first = _register(registry, ts, model)
    second = _register(registry, ts, model)
    registry.promote(zero.version, "first champion")
    registry.record_verdict(first.version, {"passed": True, "reason": "beats zero (p = 0.01)",
                                            "champion_version": zero.version})
    registry.record_verdict(second.version, {"passed": False, "reason": "not significant (p = 0.40)",
                                             "champion_version": zero.version})
    registry.close()

    unjudged = runner.invoke(cli, ["models", "promote", str(zero.version + 10)])
    assert unjudged.exit_code == 2 and "no model version" in unjudged.output
    refused = runner.invoke(cli, ["models", "promote", str(second.version)])
    assert refused.exit_code == 1
    assert "failed the promotion gate: not significant (p = 0.40)" in refused.output
    promoted = runner.invoke(cli, ["models", "promote", str(first.version)])
    assert promoted.exit_code == 0, promoted.output
    assert f"model version {first.version} is now the champion of gym BTC-USD 30m H=1800s (promote; " \
           f"previous: {zero.version}" in promoted.output
    no_reason = runner.invoke(cli, ["models", "promote", str(second.version), "--force"])
    assert no_reason.exit_code == 2 and "--force needs --reason" in no_reason.output
    forced = runner.invoke(cli, ["models", "promote", str(second.version), "--force", "--reason", "ops override"])
    assert forced.exit_code == 0 and "(force; previous:" in forced.output
    rollback = runner.invoke(cli, ["models", "promote", str(first.version), "--reason", "rollback"])
    assert rollback.exit_code == 0 and f"(rollback; previous: {second.version}," in rollback.output

    listing = runner.invoke(cli, ["models", "list"])
    lines = listing.output.splitlines()
    assert lines[1].startswith(f"  {zero.version:>7}  baseline_zero")
    assert lines[2].startswith(f"* {first.version:>7}  lasso") and lines[3].startswith(f"  {second.version:>7}")
    assert "gym BTC-USD 30m" in listing.output and "passed" in lines[2] and "failed" in lines[3]
    other = runner.invoke(cli, ["models", "list", "--exchange", "kraken"])
    assert other.exit_code == 0 and "no models registered" in other.output

    shown = json.loads(runner.invoke(cli, ["models", "show", str(first.version)]).output)
    assert shown["champion"] is True and shown["feature_names"] == list(ts.feature_names)
    assert [p["reason"] for p in shown["promotions"]] == ["promoted from the command line", "rollback"]
    assert shown["metrics"]["skill_vs_zero"] == pytest.approx(model.metrics["skill_vs_zero"])
    assert shown["verdict"]["passed"] is True and shown["market"]["horizon_s"] == 1800
    overridden = json.loads(runner.invoke(cli, ["models", "show", str(second.version)]).output)
    actions = [(a["action"], a["reason"].split(" [")[0]) for a in overridden["audit"]]
    assert actions == [("refused", "failed the promotion gate: not significant (p = 0.40) (asked: promoted from "
                                   "the command line)".replace("failed", "it failed")),
                       ("force", "ops override")]
    assert all(a["actor"] and a["at"] for a in overridden["audit"])

    missing = runner.invoke(cli, ["models", "show", "999"])
    assert missing.exit_code == 2 and "no model version 999" in missing.output
    assert runner.invoke(cli, ["models", "promote", "999"]).exit_code == 2
