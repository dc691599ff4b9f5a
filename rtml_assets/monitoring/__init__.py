"""Monitoring domain (group ``monitoring``): live model performance, feature drift, freshness.

Wiring in definitions.py::

    assets=[..., *monitoring_assets], asset_checks=[..., *monitoring_checks],
    schedules=[..., *monitoring_schedules]   # freshness checks every 5 minutes; live skill, drift
                                             # and freshness every 15 (on by default)

The assets need the ``offline_store`` and ``model_registry`` resources (training's); the checks
target ``validated_candles`` and the sidecar's ``online_features`` external asset.
"""

from rtml_assets.monitoring.assets import MONITORING_ASSETS as monitoring_assets
from rtml_assets.monitoring.checks import MONITORING_CHECKS as monitoring_checks
from rtml_assets.monitoring.checks import MONITORING_SCHEDULES
from rtml_assets.monitoring.schedules import MONITORING_SCHEDULE

monitoring_schedules = [*MONITORING_SCHEDULES, MONITORING_SCHEDULE]

__all__ = ["monitoring_assets", "monitoring_checks", "monitoring_schedules"]
