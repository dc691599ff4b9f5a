"""Training domain: training sets, models, evaluation, the gate, promotion and retraining,
one Dagster partition per market.

Wiring in definitions.py::

    training = build_training_assets(markets)
    jobs, schedules, sensors = build_training_schedules(training.partitions)
    assets=[..., *training.assets], asset_checks=[..., *training.checks],
    resources={..., **training_resources(offline_store, str(settings.resolved_artifacts_dir))}
"""

from rtml_assets.training.assets import TrainingAssets, build_training_assets
from rtml_assets.training.resources import ModelRegistryResource, training_resources
from rtml_assets.training.schedules import build_training_schedules

__all__ = [
    "ModelRegistryResource",
    "TrainingAssets",
    "build_training_assets",
    "build_training_schedules",
    "training_resources",
]
