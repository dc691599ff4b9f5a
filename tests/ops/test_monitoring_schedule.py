"""The monitoring schedule: on by default, every 15 minutes, skipping until a champion exists; its
job materializes live_model_performance and feature_drift with their checks and the freshness checks."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from rtml_assets.monitoring.schedules import MONITORING_CRON
from tests.ops.test_monitoring_assets import QUIET, _definitions, _events, served  # noqa: F401 - the fixture


def test_monitoring_schedule_is_on_every_15_minutes_and_skips_until_a_champion_exists(tmp_path):
    defs = _definitions({"url": f"sqlite:///{tmp_path / 'offline.sqlite'}", "home": tmp_path})
    schedule = defs.resolve_schedule_def("monitoring_schedule")
    assert schedule.cron_schedule == MONITORING_CRON == "*/15 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    tick = dt.datetime(2026, 1, 1, 0, 15, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
            skipped = schedule.evaluate_tick(context)
        assert not skipped.run_requests and "no champion_model" in skipped.skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization("champion_model"))
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
            requested = schedule.evaluate_tick(context)
    assert len(requested.run_requests) == 1
    assert requested.run_requests[0].tags["rtml/trigger"] == "monitoring_schedule"

def test_the_scheduled_job_monitors_the_served_predictions(served):  # noqa: F811
    defs = _definitions(served)
    job = defs.resolve_job_def(defs.resolve_schedule_def("monitoring_schedule").job_name)
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), run_config=QUIET)
    assert result.success
    assert set(_events(result, "ASSET_MATERIALIZATION")) == {"live_model_performance", "feature_drift"}
    assert set(_events(result, "ASSET_CHECK_EVALUATION")) == {
        "check_live_model_performance_skill", "check_feature_drift_psi",
        "check_validated_candles_fresh", "check_online_features_fresh"}
