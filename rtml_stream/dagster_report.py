"""The sidecar's online features as a Dagster external asset, reported from the stream.

``rtml_assets.online.online_features_spec()`` is the ``AssetSpec`` the code location includes
(group ``online``, facts in ``rtml_core.online_asset``), with a time-window ``FreshnessPolicy``
(warn after 3 minutes without a report, fail after 10), so the UI shows the asset stale and can
alert when the stream stops. The sidecar reports materializations of it through
Dagster's API, throttled to one per market per ``interval_s``, with metadata: exchange, symbol,
timeframes, last event time, rows written, lag from candle close to the online write.

Two ways to reach Dagster (``DagsterTarget``):
- ``instance``: ``DagsterInstance.get()`` (``DAGSTER_HOME``) and ``report_runless_asset_event``;
  needs no webserver (the embedded/demo case: the same instance the UI reads).
- a webserver URL: ``POST {url}/report_asset_materialization/online_features`` (the REST API of
  external assets; the real deployment, where the sidecar has no access to the instance's storage).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import structlog

from rtml_core.online_asset import ONLINE_FEATURES_ASSET
from rtml_core.schemas import FeatureRow
from rtml_core.times import iso_from_ns

log = structlog.get_logger("rtml_stream.dagster")

@dataclass
class _MarketReport:
    rows: int = 0
    rows_since_report: int = 0
    timeframes: set[str] = field(default_factory=set)
    last_event_ns: int = 0
    last_lag_ms: float | None = None
    last_report_at: float | None = None


class DagsterTarget:
    """Where reports go: a Dagster instance (``"instance"``) or a webserver URL."""

    def __init__(self, target: str, *, timeout_s: float = 5.0, instance=None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._instance = instance  # a DagsterInstance to use instead of DagsterInstance.get()

    @property
    def kind(self) -> str:
        return "instance" if self.target == "instance" else "webserver"

    def report(self, metadata: dict, description: str) -> None:
        if self.kind == "instance":
            import dagster as dg

            if self._instance is None:
                self._instance = dg.DagsterInstance.get()
            self._instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=ONLINE_FEATURES_ASSET, metadata=metadata, description=description)
            )
            return
        url = f"{self.target.rstrip('/')}/report_asset_materialization/{ONLINE_FEATURES_ASSET}"
        reply = httpx.post(url, json={"metadata": metadata, "description": description}, timeout=self.timeout_s)
        reply.raise_for_status()


def resolve_target(mode: str, url: str | None) -> DagsterTarget | None:
    """``off`` -> None; ``instance``; ``http(s)://...``; ``auto``: the URL, else DAGSTER_HOME, else None."""
    mode = (mode or "auto").strip()
    if mode == "off":
        return None
    if mode == "auto":
        if url:
            return DagsterTarget(url)
        return DagsterTarget("instance") if os.environ.get("DAGSTER_HOME") else None
    if mode == "instance" or mode.startswith(("http://", "https://")):
        return DagsterTarget(mode)
    raise ValueError(f"RTML_STREAM_DAGSTER={mode!r}: use off, auto, instance or a webserver URL")


class DagsterReporter:
    """Collects what the sidecar wrote per market; ``report_due`` sends at most one report per market
    per ``interval_s`` (reporting is best effort: a failure is logged and counted, never raised)."""

    def __init__(self, target: DagsterTarget, *, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.interval_s = interval_s
        self.clock = clock
        self.markets: dict[tuple[str, str], _MarketReport] = {}
        self.reported = 0
        self.failures = 0

    def note_rows(self, rows: Sequence[FeatureRow], lags_ms: dict[tuple, float] | None = None) -> None:
        for row in rows:
            market = self.markets.setdefault((row.exchange, row.symbol), _MarketReport())
            market.rows += 1
            market.rows_since_report += 1
            market.timeframes.add(row.timeframe)
            if row.event_time_ns > market.last_event_ns:
                market.last_event_ns = row.event_time_ns
            if lags_ms:
                lag = lags_ms.get((row.exchange, row.symbol, row.timeframe, row.event_time_ns))
                if lag is not None:
                    market.last_lag_ms = lag

    def report_due(self, *, force: bool = False) -> int:
        """Report the markets whose interval has passed (all with new rows when ``force``)."""
        now = self.clock()
        sent = 0
        for (exchange, symbol), market in self.markets.items():
            if not market.rows_since_report:
                continue
            if not force and market.last_report_at is not None and now - market.last_report_at < self.interval_s:
                continue
            metadata = {
                "exchange": exchange,
                "symbol": symbol,
                "timeframes": ",".join(sorted(market.timeframes)),
                "last_event_time_ns": market.last_event_ns,
                "last_event_time": iso_from_ns(market.last_event_ns),
                "rows_written": market.rows,
                "rows_since_last_report": market.rows_since_report,
                "event_lag_s": round(time.time() - market.last_event_ns / 1e9, 3),
            }
            if market.last_lag_ms is not None:
                metadata["close_to_online_ms"] = round(market.last_lag_ms, 3)
            try:
                self.target.report(metadata, f"rtml stream wrote {market.rows_since_report} rows of {exchange} {symbol}")
            except Exception as error:  # noqa: BLE001 - Dagster down must not stop the stream
                self.failures += 1
                log.warning("dagster_report_failed", target=self.target.target, error=repr(error))
                market.last_report_at = now  # try again next interval
                continue
            market.last_report_at = now
            market.rows_since_report = 0
            self.reported += 1
            sent += 1
        return sent
