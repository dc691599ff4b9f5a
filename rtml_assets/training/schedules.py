"""Retraining: an hourly schedule and the declarative automation (retrain when new feature
partitions land), both visible in the UI and stopped until switched on there."""

from __future__ import annotations

import dagster as dg

from rtml_assets.training.assets import GROUP, MODELS_GROUP

TRAINING_SELECTION = dg.AssetSelection.groups(GROUP, MODELS_GROUP)

retrain_hourly = dg.ScheduleDefinition(
    name="retrain_hourly",
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    target=TRAINING_SELECTION,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Rebuild the training set, retrain and evaluate every model, gate and promote: hourly.",
)

training_automation = dg.AutomationConditionSensorDefinition(
    name="training_automation",
    target=TRAINING_SELECTION,
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description=(
        "Evaluates the training assets' automation conditions: new indicator_table partitions "
        "rebuild the training set, which retrains the models and re-runs the promotion gate."
    ),
)

TRAINING_SCHEDULES = [retrain_hourly]
TRAINING_SENSORS = [training_automation]
