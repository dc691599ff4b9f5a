"""The model registry as a Dagster resource (metadata in the offline store, artifacts on disk)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from rtml_assets.resources import OfflineStoreResource
from rtml_core.registry import ModelRegistry


class ModelRegistryResource(dg.ConfigurableResource):
    """The registry in ``offline_store``'s database, artifacts under ``artifacts_dir``."""

    offline_store: OfflineStoreResource
    artifacts_dir: str = Field(description="Directory of model artifacts (RTML_ARTIFACTS_DIR or RTML_HOME/artifacts).")

    _registry: ModelRegistry | None = PrivateAttr(default=None)

    def get_registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = ModelRegistry(self.offline_store.get_store(), self.artifacts_dir)
        return self._registry

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._registry = None


def training_resources(offline_store: OfflineStoreResource, artifacts_dir: str) -> dict[str, object]:
    """The resources the training assets need beside ``offline_store``."""
    return {"model_registry": ModelRegistryResource(offline_store=offline_store, artifacts_dir=str(artifacts_dir))}
