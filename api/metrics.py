"""Prometheus metrics of one API process, in a registry of its own (one per app).

With several workers (``rtml serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR``), every
worker writes its values to files in that directory and ``/metrics`` answers the sum over all
workers (gauges: the newest or largest value of the live workers), whichever worker the scrape
reaches: prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import os
from time import perf_counter

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter(
            "rtml_api_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "rtml_api_request_latency_seconds", "Time from request to response start, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.errors = Counter(
            "rtml_api_errors", "Error answers by kind (unknown_symbol, stale_features, ...).",
            ["kind"], registry=self.registry,
        )
        self.feature_age = Gauge(
            "rtml_api_feature_age_seconds", "Age of the feature row behind the last prediction.",
            ["exchange", "symbol", "timeframe"], registry=self.registry, multiprocess_mode="mostrecent",
        )
        self.model_info = Gauge(
            "rtml_api_model_info", "1 for the model version being served.",
            ["version", "kind", "inference_path"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.model_swaps = Counter(
            "rtml_api_model_swaps", "Champion hot-swaps (promotions and rollbacks).", registry=self.registry
        )
        self.predictions = Counter(
            "rtml_api_predictions", "Predictions served (HTTP, batch items and stream pushes).",
            ["source"], registry=self.registry,
        )
        self.champion_load_failures = Counter(
            "rtml_api_champion_load_failures", "Promoted champions that failed to load (the previous "
            "one kept serving).", registry=self.registry,
        )
        self.champion_load_failing = Gauge(
            "rtml_api_champion_load_failing", "1 while the registry's champion fails to load.",
            registry=self.registry, multiprocess_mode="livemax",
        )
        self._served: tuple[str, str, str] | None = None
        self._children: dict[tuple, object] = {}  # labelled children, looked up once per label set

    def _child(self, metric, labels: tuple):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def feature_age_child(self, exchange: str, symbol: str, timeframe: str):
        return self._child(self.feature_age, (exchange, symbol, timeframe))

    def prediction_counter(self, source: str):
        return self._child(self.predictions, (source,))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request: its latency by route and its count by route, method and status."""
        self._child(self.latency, (route,)).observe(seconds)
        self._child(self.requests, (route, method, status)).inc()

    def serving(self, version: str | None, kind: str | None, path: str | None, swapped: bool = True) -> None:
        if self._served is not None:
            if self.multiprocess:  # other workers' files keep the series: 0 says "not served here"
                self.model_info.labels(*self._served).set(0)
            else:
                self.model_info.remove(*self._served)
            self._served = None
        if version is not None:
            self._served = (version, kind or "", path or "")
            self.model_info.labels(*self._served).set(1)
        if swapped:
            self.model_swaps.inc()

    def champion_load_failed(self, failed: bool) -> None:
        """A promoted champion failed to load (True) or loads work again (False)."""
        if failed:
            self.champion_load_failures.inc()
        self.champion_load_failing.set(1 if failed else 0)

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def worker_exited(self) -> None:
        """At shutdown: this worker's live gauges leave the aggregate (multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Counts and times every routed request (raw ASGI: a few microseconds)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics: ApiMetrics = scope["litestar_app"].state.metrics
        started = perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                metrics.observe_request(scope.get("path_template", "unrouted"), scope["method"], status[0],
                                        perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as error:  # answered by the app's exception handlers, outside this middleware
            metrics.observe_request(scope.get("path_template", "unrouted"), scope["method"],
                                    getattr(error, "status_code", 500), perf_counter() - started)
            raise
