"""Retraining on new data only: an hourly schedule (one run per market whose newest feature partition
materialized after its last training set) and the declarative automation (retrain a market when new
feature partitions of that market land), both running by default wherever the Dagster daemon runs
(``rtml up`` starts one) and switchable in the UI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

from rtml_assets.training.assets import GROUP, INDICATOR_TABLE, MODELS_GROUP

TRAINING_SELECTION = dg.AssetSelection.groups(GROUP, MODELS_GROUP)
TRAINING_SET = dg.AssetKey("training_set")
FEATURE_ASSETS = (INDICATOR_TABLE, dg.AssetKey("microstructure_table"))
"""The per-(day, market) feature tables whose new partitions make a market worth retraining."""


def markets_with_new_features(markets: Iterable[str], feature_ids: Iterable[Mapping[str, int]],
                              trained_ids: Mapping[str, int]) -> list[str]:
    """The markets whose newest feature partition materialized after their last training set.

    ``feature_ids`` maps each feature table's ``date|market`` partitions, ``trained_ids`` each market,
    to the storage id of its latest materialization (ids grow with time in the event log). A market
    with no feature partition has nothing to train on; one never trained has everything new.
    """
    newest: dict[str, int] = {}
    for ids in feature_ids:
        for partition, storage_id in ids.items():
            market = partition.split("|", 1)[-1]  # multi-partition keys sort their dimensions: date|market
            newest[market] = max(newest.get(market, storage_id), storage_id)
    return [market for market in markets if market in newest and newest[market] > trained_ids.get(market, -1)]


def latest_ids(instance: dg.DagsterInstance, key: dg.AssetKey) -> Mapping[str, int]:
    """Partition -> storage id of ``key``'s latest materialization of it (empty if never)."""
    return instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)


def build_training_schedules(partitions: dg.StaticPartitionsDefinition,
                             feature_assets: Sequence[dg.AssetKey] = FEATURE_ASSETS) -> tuple[list, list, list]:
    """(jobs, schedules, sensors) of the training assets partitioned by ``partitions``; the hourly
    schedule compares each market's ``feature_assets`` partitions with its last training set."""
    training_job = dg.define_asset_job(
        "training_job", selection=TRAINING_SELECTION, partitions_def=partitions,
        description="Build the training set, train and evaluate every model, judge and promote: one market.",
    )

    @dg.schedule(
        name="retrain_hourly",
        cron_schedule="0 * * * *",
        execution_timezone="UTC",
        job=training_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour, one run per market with new feature partitions since its last training set: "
                    "rebuild its training set, retrain and evaluate every model, judge the candidate and promote "
                    "it when it passes the gate. Markets with nothing new are skipped.",
    )
    def retrain_hourly(context: dg.ScheduleEvaluationContext):
        moment = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        keys = partitions.get_partition_keys()
        fresh = markets_with_new_features(keys, [latest_ids(context.instance, key) for key in feature_assets],
                                          latest_ids(context.instance, TRAINING_SET))
        if not fresh:
            return dg.SkipReason(f"no market has feature partitions newer than its training set ({len(keys)} checked)")
        return [dg.RunRequest(run_key=f"{key}@{moment}", partition_key=key) for key in fresh]

    training_automation = dg.AutomationConditionSensorDefinition(
        name="training_automation",
        target=TRAINING_SELECTION,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description=(
            "Evaluates the training assets' automation conditions: new indicator_table partitions of a market "
            "rebuild that market's training set, which retrains its models and re-runs the promotion gate."
        ),
    )
    return [training_job], [retrain_hourly], [training_automation]
