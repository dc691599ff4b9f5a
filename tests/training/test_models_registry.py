"""Tuning, walk-forward evaluation and the registry, on real BTC-USD 30m history, both backends."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from rtml_core.errors import InputError
from rtml_core.registry import (
    REGISTRY_MIGRATIONS,
    ArtifactChecksumError,
    Market,
    ModelRegistry,
    PromotionRefused,
    UnknownVersion,
)
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.offline_tables import apply_migrations
from rtml_core.training.datasets import build_training_set
from rtml_core.training.evaluation import split_holdout
from rtml_core.training.models import baseline_artifact, fit_lasso, fit_xgboost
from rtml_core.training.pipeline import evaluate_baseline, train_model
from rtml_core.training.tuning import SearchSpace, purged_time_folds
from tests.training.data import btc_candles, trailing_features

H = 3600
FAST = SearchSpace(n_folds=2, lasso_alphas=(1e-5, 1e-4), xgb_trials=2, xgb_n_estimators=(30,), nthread=1)


@pytest.fixture(scope="module")
def training_set():
    candles = btc_candles(2500)
    return build_training_set(trailing_features(candles), candles, timeframe="30m", horizon_s=H,
                              feature_set_version="test-v1", exchange="gym", symbol="BTC-USD")


@pytest.fixture(scope="module")
def trained(training_set):
    return {kind: train_model(training_set, kind, FAST) for kind in ("lasso", "xgboost")}


def test_folds_are_time_ordered_and_purged_by_the_horizon():
    times = np.arange(1000, dtype=np.int64) * 1800 * 10**9
    gap = H * 10**9
    folds = purged_time_folds(times, 3, gap)
    assert len(folds) == 3
    for train, val in folds:
        assert times[train].max() + gap <= times[val].min()
        assert np.all(np.diff(val) == 1)
    split = split_holdout(times, 0.2, gap)
    assert times[split.development].max() + gap <= times[split.holdout].min()
    assert len(split.holdout) == 200


def test_models_are_evaluated_on_the_holdout_against_both_baselines(training_set, trained):
    baseline = evaluate_baseline(training_set, "baseline_mean10", space=FAST).metrics
    zero = evaluate_baseline(training_set, "baseline_zero", space=FAST).metrics
    y = training_set.frame["target"].to_numpy()
    for model in trained.values():
        metrics = model.metrics
        assert metrics["n_rows"] == baseline["n_rows"] > 400
        assert metrics["loss_name"] == "squared_error_log_return"
        assert metrics["baseline_mean10_loss"] == pytest.approx(baseline["loss"])
        assert metrics["baseline_zero_loss"] == pytest.approx(zero["loss"])
        # one loss: fitted on squared error, judged on its mean; MAE and RMSE reported beside
        holdout = model.holdout
        assert metrics["loss"] == pytest.approx(np.mean((holdout["target"] - holdout["predicted"]) ** 2))
        assert metrics["rmse_return"] == pytest.approx(np.sqrt(metrics["loss"]))
        assert metrics["mae_return"] == pytest.approx(np.mean(np.abs(holdout["target"] - holdout["predicted"])))
        assert metrics["skill_vs_mean10"] == pytest.approx(1 - metrics["loss"] / baseline["loss"])
        assert metrics["skill_vs_zero"] == pytest.approx(1 - metrics["loss"] / zero["loss"])
        assert 0 <= metrics["directional_accuracy"] <= 1
        assert metrics["residual_std"] > 0 and metrics["rmse_price"] >= metrics["mae_price"]
        assert len(model.holdout) == metrics["n_rows"] and model.importances.shape == (5,)
        assert model.tuning.trials and model.params == model.tuning.best_params
        # calibrated on the validation folds of the development rows only, never on the holdout
        first_holdout = holdout["time"].iloc[0]
        assert model.calibrator.fitted_rows == len(model.tuning.oof_rows)
        assert training_set.frame["time"].iloc[model.tuning.oof_rows].max() < first_holdout
        assert metrics["realized_p_up"] == pytest.approx(np.mean(holdout["target"] > 0))
        assert metrics["brier"] == pytest.approx(np.mean((holdout["prob_up"] - (holdout["target"] > 0)) ** 2))
        assert {"log_loss", "log_loss_base_rate", "brier_base_rate"} <= set(metrics)
    assert zero["skill_vs_zero"] == 0.0 and len(y) > 2000


def _register(registry, training_set, model, run_id="run-1"):
    return registry.register(
        kind=model.kind, artifact=model.artifact, artifact_format=model.artifact_format,
        feature_names=training_set.feature_names, feature_set_version=training_set.feature_set_version,
        timeframe=training_set.timeframe, horizon_s=training_set.horizon_s,
        training_rows=training_set.row_count, training_set_hash=training_set.content_hash,
        metrics=model.metrics, residual_std=model.metrics["residual_std"], params=model.params,
        exchange=training_set.exchange, symbol=training_set.symbol,
        train_start_ns=training_set.start.value, train_end_ns=training_set.end.value, run_id=run_id,
    )


def _register_baseline(registry, training_set, kind="baseline_zero"):
    return registry.register(
        kind=kind, artifact=baseline_artifact(kind), artifact_format="json", feature_names=(),
        feature_set_version=training_set.feature_set_version, timeframe=training_set.timeframe,
        horizon_s=training_set.horizon_s, training_rows=training_set.row_count,
        training_set_hash=training_set.content_hash, metrics={}, residual_std=0.01,
        exchange=training_set.exchange, symbol=training_set.symbol,
    )


def test_registry_round_trip_promotion_and_rollback(offline_url, tmp_path, training_set, trained):
    registry = ModelRegistry(open_offline_store(offline_url), tmp_path / "artifacts", owns_store=True)
    assert registry.list() == [] and registry.champion() is None and registry.champion_epoch() == 0
    lasso = _register(registry, training_set, trained["lasso"])
    xgb = _register(registry, training_set, trained["xgboost"], run_id="run-2")
    assert [v.version for v in registry.list()] == [lasso.version, xgb.version]
    assert xgb.feature_names == training_set.feature_names and xgb.run_id == "run-2"
    assert xgb.training_set_hash == training_set.content_hash and xgb.code_version
    assert xgb.metrics["skill_vs_mean10"] == pytest.approx(trained["xgboost"].metrics["skill_vs_mean10"])

    frame = training_set.frame
    X = frame.loc[:, list(training_set.feature_names)].to_numpy()
    y = frame["target"].to_numpy()
    loaded_lasso = registry.load_model(lasso.version)
    reference = fit_lasso(X, y, alpha=trained["lasso"].params["alpha"])
    np.testing.assert_allclose(loaded_lasso.predict(frame), reference.predict(X), rtol=1e-12, atol=1e-15)
    loaded_xgb = registry.load_model(xgb.version)
    reference = fit_xgboost(X, y, params=trained["xgboost"].params, nthread=FAST.nthread, seed=FAST.seed)
    np.testing.assert_allclose(loaded_xgb.predict(frame[list(reversed(frame.columns))]), reference.predict(X), rtol=1e-6)
    assert loaded_xgb.feature_names == training_set.feature_names
    assert loaded_xgb.residual_std == pytest.approx(trained["xgboost"].metrics["residual_std"])
    assert (loaded_xgb.horizon_s, loaded_xgb.timeframe, loaded_xgb.kind) == (H, "30m", "xgboost")
    with pytest.raises(InputError, match="expects 5 features"):
        loaded_xgb.predict(np.zeros(4))

    # the gate is the registry's: unjudged, failed and stale verdicts are refused, and each refusal audited
    with pytest.raises(PromotionRefused, match="never judged"):
        registry.promote(lasso.version, "first champion")
    zero = _register_baseline(registry, training_set)
    initial = registry.promote(zero.version, "the random walk first")
    assert initial.action == "initial" and registry.champion_of(zero.market).version == zero.version
    registry.record_verdict(lasso.version, {"passed": False, "reason": "skill -0.01", "champion_version": zero.version})
    with pytest.raises(PromotionRefused, match="failed the promotion gate: skill -0.01"):
        registry.promote(lasso.version, "try anyway")
    registry.record_verdict(lasso.version, {"passed": True, "reason": "beats zero", "champion_version": zero.version})
    registry.record_verdict(xgb.version, {"passed": True, "reason": "beats zero", "champion_version": zero.version})
    first = registry.promote(lasso.version, "passed the gate")
    assert first.action == "promote" and first.previous_version == zero.version
    with pytest.raises(PromotionRefused, match=f"judged against champion {zero.version}, but the champion"):
        registry.promote(xgb.version, "stale verdict")
    second = registry.promote(xgb.version, "operator knows better", actor="alice@desk", force=True)
    assert second.action == "force" and second.previous_version == lasso.version
    assert registry.champion().version == xgb.version
    assert registry.champion_epoch() == second.epoch > first.epoch
    rollback = registry.promote(lasso.version, "rollback")
    assert rollback.action == "rollback"
    assert registry.champion().version == lasso.version and registry.champion_epoch() == rollback.epoch
    assert [p.version for p in registry.promotions()] == [zero.version, lasso.version, xgb.version, lasso.version]
    with pytest.raises(UnknownVersion):
        registry.promote(999, "nope")
    assert registry.champion_epoch() == rollback.epoch
    audit = registry.audit()
    assert [a["action"] for a in audit] == ["refused", "initial", "refused", "promote", "refused", "force", "rollback"]
    forced = audit[5]
    assert forced["actor"] == "alice@desk" and forced["reason"].startswith("operator knows better")
    assert forced["at_ns"] > 0 and forced["exchange"] == "gym" and forced["horizon_s"] == H

    # the same tables reopened later (a fresh process) see the same state; migration is idempotent
    again = ModelRegistry(open_offline_store(offline_url), tmp_path / "artifacts", owns_store=True)
    assert again.champion().version == lasso.version and len(again.list()) == 3
    registry.close()


def test_tampered_artifact_is_refused(sqlite_url, tmp_path, training_set, trained):
    registry = ModelRegistry(open_offline_store(sqlite_url), tmp_path / "artifacts", owns_store=True)
    version = _register(registry, training_set, trained["lasso"])
    path = tmp_path / "artifacts" / version.artifact_file
    document = json.loads(path.read_bytes())
    document["intercept"] += 0.01
    path.write_bytes(json.dumps(document).encode())
    with pytest.raises(ArtifactChecksumError, match="refusing to load"):
        registry.load_model(version.version)
    assert not list((tmp_path / "artifacts").glob("*.pkl"))


def test_failed_registration_leaves_no_artifact_behind(sqlite_url, tmp_path, training_set, trained):
    registry = ModelRegistry(open_offline_store(sqlite_url), tmp_path / "artifacts", owns_store=True)
    with pytest.raises(InputError, match="residual_std"):
        registry.register(
            kind="lasso", artifact=trained["lasso"].artifact, artifact_format="json",
            feature_names=training_set.feature_names, feature_set_version="v", timeframe="30m",
            horizon_s=H, training_rows=1, training_set_hash="x", metrics={}, residual_std=float("nan"),
            exchange="gym", symbol="BTC-USD",
        )
    with pytest.raises(InputError, match="belongs to one market"):
        registry.register(
            kind="lasso", artifact=trained["lasso"].artifact, artifact_format="json",
            feature_names=training_set.feature_names, feature_set_version="v", timeframe="30m",
            horizon_s=H, training_rows=1, training_set_hash="x", metrics={}, residual_std=0.01,
        )
    with pytest.raises(sa.exc.IntegrityError):
        registry.register(
            kind="lasso", artifact=trained["lasso"].artifact, artifact_format="json",
            feature_names=training_set.feature_names, feature_set_version=None, timeframe="30m",
            horizon_s=H, training_rows=1, training_set_hash="x", metrics={}, residual_std=0.01,
            exchange="gym", symbol="BTC-USD",
        )
    assert registry.list() == []
    assert list((tmp_path / "artifacts").glob("*")) == []


def test_a_store_of_the_previous_schema_upgrades_and_keeps_its_champion(offline_url, tmp_path, training_set, trained):
    """Step 2 of the registry's migrations: promotions get their market from their version."""
    engine = sa.create_engine(offline_url)
    apply_migrations(engine.begin, "registry", REGISTRY_MIGRATIONS[:1])
    model = trained["lasso"]
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO model_versions (kind, created_at_ns, artifact_file, artifact_format, artifact_sha256, "
            "feature_names, feature_set_version, exchange, symbol, timeframe, horizon_s, training_rows, "
            "training_set_hash, metrics, params, residual_std) VALUES ('lasso', 1, 'old.json', 'json', 'x', "
            "'[\"ret_1\"]', 'v0', 'gym', 'BTC-USD', '30m', 3600, 10, 'h', '{}', '{}', 0.01)"))
        connection.execute(sa.text(
            "INSERT INTO model_promotions (version, previous_version, promoted_at_ns, reason, actor) "
            "VALUES (1, NULL, 5, 'before markets', 'cli')"))
    registry = ModelRegistry(open_offline_store(offline_url), tmp_path / "artifacts", owns_store=True)
    (promotion,) = registry.promotions()
    assert (promotion.exchange, promotion.symbol, promotion.timeframe, promotion.horizon_s) == ("gym", "BTC-USD",
                                                                                               "30m", 3600)
    assert registry.champion_of(Market("gym", "BTC-USD", "30m", 3600)).version == 1
    assert registry.champion_of(Market("gym", "ETH-USD", "30m", 3600)) is None
    assert registry.get(1).calibration is None and registry.audit() == []
    new = _register(registry, training_set, model)
    assert new.calibration is None and registry.list()[-1].version == new.version
    with engine.connect() as connection:
        steps = connection.execute(sa.text(
            "SELECT version FROM schema_version WHERE component = 'registry' ORDER BY version")).scalars().all()
    assert steps == [1, 2]
    registry.close()
    engine.dispose()
