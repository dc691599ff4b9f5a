"""The served champion: an immutable bundle behind one reference, swapped atomically.

A request reads ``holder.current`` once and uses that bundle to the end, so a promotion
during the request can never mix two models' names, versions and weights. The poller loads
and verifies the new model off the event loop, then swaps the reference in one assignment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from api.inference import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """Everything a prediction needs from one model version, never mutated after load."""

    version: str
    kind: str
    feature_names: tuple[str, ...]
    feature_set_version: str
    horizon_s: int
    timeframe: str
    residual_std: float
    predictor: Predictor
    metrics: Mapping[str, Any] = field(default_factory=dict)
    marker: Hashable = None  # the registry's champion marker this bundle was loaded for
    loaded_at_ns: int = field(default_factory=time.time_ns)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kind": self.kind,
            "feature_names": list(self.feature_names),
            "feature_set_version": self.feature_set_version,
            "horizon_s": self.horizon_s,
            "timeframe": self.timeframe,
            "residual_std": self.residual_std,
            "metrics": dict(self.metrics),
            "inference_path": self.predictor.path,
            "inference_max_abs_diff": self.predictor.max_abs_diff,
            "loaded_at_ns": self.loaded_at_ns,
        }


@runtime_checkable
class ChampionSource(Protocol):
    """Where the champion comes from (the model registry, through ``RegistryChampionSource``)."""

    def champion_marker(self) -> Hashable | None:
        """Cheap; changes whenever the champion changes, rollbacks included. None: no champion."""

    def load_champion(self) -> ServedModel | None:
        """Load and verify the current champion (slow: runs off the event loop)."""

    def list_models(self) -> list[dict[str, Any]]:
        """Every registered version with its metrics."""


class ChampionHolder:
    """One reference to the current ``ServedModel``; readers never lock."""

    __slots__ = ("current", "swaps", "last_error")

    def __init__(self) -> None:
        self.current: ServedModel | None = None
        self.swaps = 0
        self.last_error: str | None = None

    def swap(self, model: ServedModel | None) -> ServedModel | None:
        previous, self.current = self.current, model
        self.swaps += 1
        return previous


async def refresh_champion(
    holder: ChampionHolder,
    source: ChampionSource,
    on_swap: Callable[[ServedModel | None, ServedModel | None], None] | None = None,
) -> bool:
    """Load the champion when its marker differs from the served one; True when swapped."""
    marker = await asyncio.to_thread(source.champion_marker)
    current = holder.current
    if current is not None and marker == current.marker:
        return False
    if marker is None and current is None:
        return False
    model = await asyncio.to_thread(source.load_champion) if marker is not None else None
    if model is not None and current is not None and model.marker == current.marker:
        return False
    previous = holder.swap(model)
    log.info("champion %s -> %s", previous and previous.version, model and model.version)
    if on_swap is not None:
        on_swap(previous, model)
    return True


async def poll_champion(
    holder: ChampionHolder,
    source: ChampionSource,
    interval_s: float,
    on_swap: Callable[[ServedModel | None, ServedModel | None], None] | None = None,
) -> None:
    """Background task: refresh every ``interval_s``; a failing registry never kills the loop."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await refresh_champion(holder, source, on_swap)
            holder.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - logged, reported by /ready, retried
            holder.last_error = f"{type(error).__name__}: {error}"[:300]
            log.warning("champion refresh failed: %s", holder.last_error)


def served_from_loaded(loaded, marker: Hashable, real_rows=None) -> ServedModel:
    """A ``ServedModel`` from the registry's ``LoadedModel``: tree models get a compiled path."""
    from api.inference import python_predictor, tree_predictor

    booster = getattr(loaded.predictor, "booster", None)
    if loaded.kind == "xgboost" and booster is not None:
        predictor = tree_predictor(booster, len(loaded.feature_names), real_rows)
    else:
        predictor = python_predictor(loaded.predictor.predict)
    return ServedModel(
        version=str(loaded.version), kind=loaded.kind, feature_names=tuple(loaded.feature_names),
        feature_set_version=loaded.feature_set_version, horizon_s=int(loaded.horizon_s),
        timeframe=loaded.timeframe, residual_std=float(loaded.residual_std), predictor=predictor,
        metrics=dict(loaded.metrics or {}), marker=marker,
    )


class RegistryChampionSource:
    """``ChampionSource`` over ``rtml_core.registry.ModelRegistry`` (promotion epoch as marker)."""

    CACHED_VERSIONS = 4

    def __init__(self, registry) -> None:
        self.registry = registry
        self._compiled: dict[str, ServedModel] = {}  # version -> verified bundle, for fast rollbacks

    def champion_marker(self) -> Hashable | None:
        return self.registry.champion_epoch() or None

    def load_champion(self) -> ServedModel | None:
        marker = self.registry.champion_epoch()  # read first: a promotion racing us is seen next poll
        champion = self.registry.champion()
        if champion is None:
            return None
        cached = self._compiled.get(str(champion.version))
        if cached is not None:  # verified when first loaded; artifacts are immutable (sha256-named)
            return replace(cached, marker=marker, loaded_at_ns=time.time_ns())
        served = served_from_loaded(self.registry.load_model(champion.version), marker)
        self._compiled[served.version] = served
        while len(self._compiled) > self.CACHED_VERSIONS:
            self._compiled.pop(next(iter(self._compiled)))
        return served

    def list_models(self) -> list[dict[str, Any]]:
        champion = self.registry.champion()
        rows = []
        for meta in self.registry.list():
            rows.append({
                "version": str(meta.version), "kind": meta.kind,
                "champion": champion is not None and meta.version == champion.version,
                "feature_set_version": meta.feature_set_version,
                "feature_names": list(meta.feature_names), "horizon_s": meta.horizon_s,
                "timeframe": meta.timeframe, "residual_std": meta.residual_std,
                "metrics": meta.metrics,
                "details": {k: v for k, v in meta.to_dict().items() if k in (
                    "created_at", "exchange", "symbol", "train_start", "train_end", "training_rows",
                    "training_set_hash", "run_id", "code_version", "params")},
            })
        return rows

    def close(self) -> None:
        self.registry.close()
