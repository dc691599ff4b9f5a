"""Monitoring on a schedule: ``live_model_performance`` and ``feature_drift`` (with their checks and
the freshness checks) every 15 minutes, running by default wherever the Dagster daemon runs
(``rtml up`` starts one) and switchable in the UI. A tick skips, saying why, until a champion model
has been materialized: there is nothing to monitor before."""

from __future__ import annotations

import dagster as dg

from rtml_assets.monitoring.assets import CHAMPION_MODEL, MONITORING_ASSETS
from rtml_assets.monitoring.checks import MONITORING_CHECKS

MONITORING_CRON = "*/15 * * * *"


def build_monitoring_schedule(cron: str = MONITORING_CRON,
                              status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING
                              ) -> tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """The monitoring job and its schedule (every ``cron``, ``status`` until switched in the UI)."""
    job = dg.define_asset_job(
        "monitoring_job",
        selection=dg.AssetSelection.assets(*MONITORING_ASSETS) | dg.AssetSelection.checks(*MONITORING_CHECKS),
        description="Live model performance and feature drift against the champion, with the freshness checks.",
    )

    @dg.schedule(name="monitoring_schedule", cron_schedule=cron, job=job, execution_timezone="UTC",
                 default_status=status,
                 description="Live skill and feature drift of the champion, and the freshness checks: "
                             f"{cron} (UTC); skips until a champion model exists.")
    def monitoring_schedule(context: dg.ScheduleEvaluationContext):
        champion = context.instance.get_latest_materialization_event(CHAMPION_MODEL)
        if champion is None:
            return dg.SkipReason("no champion_model materialized yet: nothing to monitor")
        return dg.RunRequest(run_key=None, tags={"rtml/trigger": "monitoring_schedule"})

    return job, monitoring_schedule


MONITORING_JOB, MONITORING_SCHEDULE = build_monitoring_schedule()
