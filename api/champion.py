"""The served champions, one per market: an immutable bundle behind one reference, swapped atomically.

The registry keeps one champion per market (exchange, symbol, timeframe, horizon).
``holder.current`` is the most recently promoted champion and carries every market's
champion in ``markets`` (keyed by (exchange, symbol, timeframe); when a market has champions
for several horizons, the most recently promoted one is served). A request reads
``holder.current`` once and uses that bundle to the end, so a promotion during the request can
never mix two models' names, versions and weights. The poller loads and verifies the new
champions off the event loop, then swaps the reference in one assignment.
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


MarketKey = tuple[str | None, str | None, str]
"""(exchange, symbol, timeframe): what a request names and a champion is served for."""


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
    exchange: str | None = None
    symbol: str | None = None
    calibrator: Any = None  # rtml_core.training.calibration.Calibrator; None: registered before calibration
    served_fit: str | None = None
    markets: Mapping[MarketKey, ServedModel] = field(default_factory=dict)
    """Every market's champion (this one included), set on the most recently promoted one."""

    @property
    def market(self) -> MarketKey:
        return (self.exchange, self.symbol, self.timeframe)

    def for_market(self, exchange: str, symbol: str, timeframe: str) -> ServedModel | None:
        return self.markets.get((exchange, symbol, timeframe))

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kind": self.kind,
            "exchange": self.exchange,
            "symbol": self.symbol,
            "feature_names": list(self.feature_names),
            "feature_set_version": self.feature_set_version,
            "horizon_s": self.horizon_s,
            "timeframe": self.timeframe,
            "residual_std": self.residual_std,
            "metrics": dict(self.metrics),
            "inference_path": self.predictor.path,
            "inference_max_abs_diff": self.predictor.max_abs_diff,
            "loaded_at_ns": self.loaded_at_ns,
            "calibration": self.calibrator.to_dict() if self.calibrator is not None else None,
            "served_fit": self.served_fit,
        }


@runtime_checkable
class ChampionSource(Protocol):
    """Where the champion comes from (the model registry, through ``RegistryChampionSource``)."""

    def champion_marker(self) -> Hashable | None:
        """Cheap; changes whenever the champion changes, rollbacks included. None: no champion."""

    def load_champion(self) -> ServedModel | None:
        """Load and verify the champions (slow: runs off the event loop): the most recently
        promoted one, with every market's champion in ``markets``."""

    def list_models(self) -> list[dict[str, Any]]:
        """Every registered version with its metrics."""


class ChampionHolder:
    """One reference to the current ``ServedModel``; readers never lock."""

    __slots__ = ("current", "last_error", "swaps")

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
    from rtml_core.training.calibration import Calibrator

    booster = getattr(loaded.predictor, "booster", None)
    if loaded.kind == "xgboost" and booster is not None:
        predictor = tree_predictor(booster, len(loaded.feature_names), real_rows)
    else:
        predictor = python_predictor(loaded.predictor.predict)
    calibration = getattr(loaded, "calibration", None)
    return ServedModel(
        version=str(loaded.version), kind=loaded.kind, feature_names=tuple(loaded.feature_names),
        feature_set_version=loaded.feature_set_version, horizon_s=int(loaded.horizon_s),
        timeframe=loaded.timeframe, residual_std=float(loaded.residual_std), predictor=predictor,
        metrics=dict(loaded.metrics or {}), marker=marker, exchange=getattr(loaded, "exchange", None),
        symbol=getattr(loaded, "symbol", None),
        calibrator=Calibrator.from_dict(calibration) if calibration else None,
        served_fit=getattr(loaded, "served_fit", None),
    )


class RegistryChampionSource:
    """``ChampionSource`` over ``rtml_core.registry.ModelRegistry`` (promotion epoch as marker)."""

    CACHED_VERSIONS = 4

    def __init__(self, registry) -> None:
        self.registry = registry
        self._compiled: dict[str, ServedModel] = {}  # version -> verified bundle, for fast rollbacks

    def champion_marker(self) -> Hashable | None:
        return self.registry.champion_epoch() or None

    def _served(self, version: int, marker: Hashable) -> ServedModel:
        cached = self._compiled.get(str(version))
        if cached is not None:  # verified when first loaded; artifacts are immutable (sha256-named)
            return replace(cached, marker=marker, loaded_at_ns=time.time_ns())
        served = served_from_loaded(self.registry.load_model(version), marker)
        self._compiled[served.version] = served
        return served

    def load_champion(self) -> ServedModel | None:
        marker = self.registry.champion_epoch()  # read first: a promotion racing us is seen next poll
        champions = self.registry.champions()  # market -> (epoch, version), oldest promotion first
        if not champions:
            return None
        markets: dict[MarketKey, ServedModel] = {}
        for _, meta in sorted(champions.values(), key=lambda pair: pair[0]):
            served = self._served(meta.version, marker)  # a newer horizon of the same market wins
            markets[served.market] = served
        newest = served
        keep = {m.version for m in markets.values()}
        spare = [v for v in self._compiled if v not in keep]  # former champions, oldest first
        for version in spare[: max(0, len(spare) - self.CACHED_VERSIONS)]:
            self._compiled.pop(version)
        markets = {key: replace(model, markets={}) for key, model in markets.items()}
        return replace(newest, markets=markets)

    def list_models(self, exchange: str | None = None, symbol: str | None = None,
                    timeframe: str | None = None) -> list[dict[str, Any]]:
        champions = {meta.version for _, meta in self.registry.champions().values()}
        rows = []
        for meta in self.registry.list(exchange, symbol, timeframe):
            rows.append({
                "version": str(meta.version), "kind": meta.kind,
                "champion": meta.version in champions,
                "exchange": meta.exchange, "symbol": meta.symbol,
                "feature_set_version": meta.feature_set_version,
                "feature_names": list(meta.feature_names), "horizon_s": meta.horizon_s,
                "timeframe": meta.timeframe, "residual_std": meta.residual_std,
                "metrics": meta.metrics,
                "details": {k: v for k, v in meta.to_dict().items() if k in (
                    "created_at", "exchange", "symbol", "train_start", "train_end", "training_rows",
                    "training_set_hash", "run_id", "code_version", "params", "served_fit", "calibration")},
            })
        return rows

    def close(self) -> None:
        self.registry.close()
