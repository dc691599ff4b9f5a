"""The broker processes built from Settings (the entry points only parse options and call these)."""

from __future__ import annotations

from collections.abc import Sequence

from rtml_core.settings import Settings
from rtml_core.stores.online import open_online_store
from rtml_stream.app import health_port_from, pipeline_from_settings
from rtml_stream.broker.archive import Archiver
from rtml_stream.broker.features import FeatureService, FeatureServiceOptions
from rtml_stream.broker.ingest import Ingestor
from rtml_stream.broker.jetstream import BrokerConfig
from rtml_stream.corrections import StreamOfflineSink
from rtml_stream.metrics import StreamMetrics
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import OnlineSink


def build_ingestor(settings: Settings, config: BrokerConfig, source, *, health_port: int | None = None) -> Ingestor:
    return Ingestor(source, config, metrics=getattr(source, "metrics", None),
                    health_host=settings.stream_metrics_host,
                    health_port=health_port_from(health_port, settings.broker_ingest_metrics_port),
                    stale_after_s=settings.stream_stale_after_s)


def build_feature_service(settings: Settings, config: BrokerConfig, markets: Sequence[tuple[str, str]], *,
                          timeframes: Sequence[str] | None = None, health_port: int | None = None,
                          from_start: bool = False, duration_s: float | None = None,
                          metrics: StreamMetrics | None = None) -> FeatureService:
    from rtml_core.stores.offline import open_offline_store

    def pipeline() -> Pipeline:  # one per market: each moves on its own feed clock
        return pipeline_from_settings(settings, timeframes)

    version = pipeline()
    settings.home.mkdir(parents=True, exist_ok=True)
    online_store = open_online_store(settings.resolved_online_url, prefix=settings.online_prefix,
                                     history=settings.online_history)
    online_sink = OnlineSink(online_store, coalesce_ms=settings.stream_coalesce_ms,
                             max_buffer=settings.stream_online_buffer)
    offline_url = settings.resolved_offline_url
    factory = (lambda: open_offline_store(offline_url))  # noqa: E731 - opened lazily: PostgreSQL may be down
    offline_sink = StreamOfflineSink(factory, max_buffer=settings.stream_offline_buffer,
                                     feature_specs={version.version: version.feature_set.stored_spec(),
                                                    version.microstructure.version: version.microstructure.to_json()})
    options = FeatureServiceOptions(coalesce_ms=settings.stream_coalesce_ms, health_host=settings.stream_metrics_host,
                                    health_port=health_port_from(health_port, settings.stream_metrics_port),
                                    from_start=from_start, duration_s=duration_s)
    return FeatureService(config, pipeline, online_sink, markets, offline_sink=offline_sink,
                          offline_store_factory=factory, metrics=metrics, options=options)


def build_archiver(settings: Settings, config: BrokerConfig, *, health_port: int | None = None) -> Archiver:
    from rtml_core.stores.offline import open_offline_store

    offline_url = settings.resolved_offline_url
    settings.home.mkdir(parents=True, exist_ok=True)
    return Archiver(config, lambda: open_offline_store(offline_url), health_host=settings.stream_metrics_host,
                    health_port=health_port_from(health_port, settings.broker_archive_metrics_port))
