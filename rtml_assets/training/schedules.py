"""Retraining: an hourly schedule (one run per market partition) and the declarative automation
(retrain a market when new feature partitions of that market land), both visible in the UI and
stopped until switched on there."""

from __future__ import annotations

import dagster as dg

from rtml_assets.training.assets import GROUP, MODELS_GROUP

TRAINING_SELECTION = dg.AssetSelection.groups(GROUP, MODELS_GROUP)


def build_training_schedules(partitions: dg.StaticPartitionsDefinition) -> tuple[list, list, list]:
    """(jobs, schedules, sensors) of the training assets partitioned by ``partitions``."""
    training_job = dg.define_asset_job(
        "training_job", selection=TRAINING_SELECTION, partitions_def=partitions,
        description="Build the training set, train and evaluate every model, judge and promote: one market.",
    )

    @dg.schedule(
        name="retrain_hourly",
        cron_schedule="0 * * * *",
        execution_timezone="UTC",
        job=training_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Every hour, one run per market: rebuild its training set, retrain and evaluate every model, "
                    "judge the candidate and promote it when it passes the gate.",
    )
    def retrain_hourly(context: dg.ScheduleEvaluationContext):
        moment = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        return [dg.RunRequest(run_key=f"{key}@{moment}", partition_key=key)
                for key in partitions.get_partition_keys()]

    training_automation = dg.AutomationConditionSensorDefinition(
        name="training_automation",
        target=TRAINING_SELECTION,
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        description=(
            "Evaluates the training assets' automation conditions: new indicator_table partitions of a market "
            "rebuild that market's training set, which retrains its models and re-runs the promotion gate."
        ),
    )
    return [training_job], [retrain_hourly], [training_automation]
