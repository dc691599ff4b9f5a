"""Training domain: training sets, models, evaluation, promotion and retraining.

Wiring in definitions.py::

    assets=[..., *training_assets], asset_checks=[..., *training_checks],
    schedules=training_schedules, sensors=training_sensors,
    resources={..., **training_resources(offline_store, str(settings.resolved_artifacts_dir))}
"""

from rtml_assets.training.assets import TRAINING_ASSETS as training_assets
from rtml_assets.training.checks import TRAINING_CHECKS as training_checks
from rtml_assets.training.resources import ModelRegistryResource, training_resources
from rtml_assets.training.schedules import TRAINING_SCHEDULES as training_schedules
from rtml_assets.training.schedules import TRAINING_SENSORS as training_sensors

__all__ = [
    "ModelRegistryResource",
    "training_assets",
    "training_checks",
    "training_resources",
    "training_schedules",
    "training_sensors",
]
