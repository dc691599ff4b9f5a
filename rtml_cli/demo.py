"""``rtml demo``: the main job end to end on the embedded default, as a sequence of named steps.

Each step is a ``DemoStep(name, run)``; ``run(demo)`` does its work (usually materializing
assets in-process on the embedded Dagster instance) and returns the lines it reports.
Later parts of rtml add theirs with ``DEMO_STEPS.append(DemoStep(...))`` (training, stream,
API) from their own module, imported at the bottom of this file.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import dagster as dg

from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import range_tags
from rtml_assets.selections import without_freshness
from rtml_cli.demo_live import (
    SKIPPED,
    history_markets,
    is_demo_market,
    prediction_step,
    stream_step,
)
from rtml_core.errors import InputError
from rtml_core.settings import Settings

QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""Dagster's own console log stays quiet; the demo prints one line per run and each error's cause."""


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: str
    metadata: dict[str, object]


@dataclass
class RunOutcome:
    """What one in-process run materialized and checked."""

    market: MarketSource
    success: bool
    seconds: float
    metadata: dict[str, dict[str, object]] = field(default_factory=dict)  # asset -> metadata
    checks: list[CheckOutcome] = field(default_factory=list)
    error: str | None = None

    def checks_line(self) -> str:
        passed = [c for c in self.checks if c.passed]
        warned = [c.name.split("_", 3)[-1] for c in self.checks if not c.passed and c.severity == "WARN"]
        failed = [c.name.split("_", 3)[-1] for c in self.checks if not c.passed and c.severity != "WARN"]
        text = f"{len(passed)}/{len(self.checks)} checks passed"
        if warned:
            text += f", warned: {', '.join(warned)}"
        if failed:
            text += f", FAILED: {', '.join(failed)}"
        return text


@dataclass
class Demo:
    """What the steps share: settings, the code location, the Dagster instance, the results."""

    settings: Settings
    defs: dg.Definitions
    markets: list[MarketSource]
    instance: dg.DagsterInstance
    echo: Callable[[str], None] = click.echo
    outcomes: dict[str, list[RunOutcome]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    source_markets: list[MarketSource] = field(default_factory=list)
    """The catalog as configured (``markets`` may stop earlier: the live steps replay the rest)."""
    latest_row: object | None = None
    """The newest online feature row the stream step wrote."""

    def progress(self, items: Sequence, label: str):
        """A progress bar over ``items`` on a terminal (plain output elsewhere), naming the current
        one; use it in a ``with`` block and iterate what it gives."""
        return click.progressbar(items, label=f"    {label}", show_pos=True, file=click.get_text_stream("stderr"),
                                 item_show_func=lambda item: getattr(item, "key", None))

    def materialize(self, step: str, market: MarketSource, asset_names: Sequence[str],
                    run_config: dict | None = None) -> RunOutcome:
        """Materialize ``asset_names`` (and their checks) for every day of ``market``, in one run."""
        started = time.perf_counter()
        selection = without_freshness(self.defs, asset_names)
        result = dg.materialize(
            [*self.defs.assets, *self.defs.asset_checks],
            selection=selection,
            instance=self.instance,
            resources=self.defs.resources,
            tags={**range_tags(market), "rtml/demo_step": step},
            run_config={**QUIET_RUN, **(run_config or {})},
            raise_on_error=False,
        )
        outcome = RunOutcome(market, result.success, time.perf_counter() - started)
        for event in result.all_events:
            if event.event_type_value == "ASSET_MATERIALIZATION":
                materialization = event.event_specific_data.materialization
                name = materialization.asset_key.to_user_string()
                outcome.metadata.setdefault(name, {k: v.value for k, v in materialization.metadata.items()})
            elif event.event_type_value == "ASSET_CHECK_EVALUATION":
                evaluation = event.event_specific_data
                outcome.checks.append(CheckOutcome(
                    evaluation.check_name, evaluation.passed, evaluation.severity.value,
                    {k: v.value for k, v in evaluation.metadata.items()},
                ))
            elif event.event_type_value == "STEP_FAILURE" and outcome.error is None:
                outcome.error = f"{event.step_key}: {_root_cause(event.event_specific_data.error)}"
        self.outcomes.setdefault(step, []).append(outcome)
        if not outcome.success:
            self.failures.append(f"{step}: {market.key}: {outcome.error or 'run failed'}")
        return outcome


def _root_cause(error) -> str:
    """The innermost error's message (Dagster wraps the asset's own exception)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    lines = error.message.strip().splitlines()
    return lines[-1] if lines else error.cls_name


@dataclass(frozen=True)
class DemoStep:
    name: str
    run: Callable[[Demo], list[str]]
    """Does the step's work and returns the summary lines to print."""


def _span(metadata: dict[str, object]) -> str:
    first, last = str(metadata.get("first", "-")), str(metadata.get("last", "-"))
    return f"{first[:16]} .. {last[:16]}"


def market_history_step(demo: Demo) -> list[str]:
    """Import the bundled real history and materialize the validated candles with their checks."""
    lines = []
    with demo.progress(demo.markets, "importing and validating") as markets:
        for market in markets:
            assets = ["raw_trades", "validated_candles"] if market.has_trades else ["validated_candles"]
            outcome = demo.materialize("market history", market, assets)
            candles = outcome.metadata.get("validated_candles", {})
            trades = outcome.metadata.get("raw_trades", {})
            source = f"{trades.get('rows', 0):,} trades -> " if market.has_trades else "candle file -> "
            lines.append(
                f"{market.key:<22} {source}{candles.get('rows', 0):,} candles  {_span(candles)}  "
                f"gaps {candles.get('gaps', '-')} (longest {candles.get('longest_gap_seconds', 0) / 60:,.0f} min)  "
                f"{outcome.checks_line()}  [{outcome.seconds:.1f}s]"
            )
            if outcome.error:
                lines.append(f"{'':<22} error: {outcome.error}")
    return lines


def features_step(demo: Demo) -> list[str]:
    """Materialize the indicator table (full-history warm-up) for every market."""
    lines = []
    with demo.progress(demo.markets, "computing indicator tables") as markets:
        for market in markets:
            outcome = demo.materialize("features", market, ["indicator_table"])
            table = outcome.metadata.get("indicator_table", {})
            lines.append(
                f"{market.key:<22} {table.get('rows', 0):,} feature rows x {table.get('features', '-')} features  "
                f"version {table.get('feature_set_version', '-')}  {outcome.checks_line()}  [{outcome.seconds:.1f}s]"
            )
            if outcome.error:
                lines.append(f"{'':<22} error: {outcome.error}")
    return lines


def training_step(demo: Demo) -> list[str]:
    """Train every market with enough history (its own partition, horizon one candle): the baselines,
    Lasso, XGBoost, the gate's verdict on the candidate and the market's champion, as they are."""
    from rtml_cli.train import check_training_input, report_lines, run_training

    lines = []
    if not any(is_demo_market(m) for m in demo.markets):
        lines.append(SKIPPED)
    with demo.progress(demo.markets, "training") as markets:
        for market in markets:
            try:
                request = check_training_input(demo.settings, market, None)
            except InputError as error:
                lines.append(f"{market.key}: not trained: {error}")
                continue
            report = run_training(demo.defs, demo.instance, market, request.horizon_s,
                                  tags={"rtml/demo_step": "training"})
            lines.extend(report_lines(report))
            if not report.success:
                demo.failures.append(f"training: {market.key}: {report.error or 'run failed'}")
    return lines


DEMO_STEPS: list[DemoStep] = [
    DemoStep("market history", market_history_step),
    DemoStep("features", features_step),
    DemoStep("training", training_step),
    DemoStep("stream", stream_step),
    DemoStep("prediction", prediction_step),
]


def run_demo(settings: Settings, steps: Sequence[DemoStep] | None = None,
             echo: Callable[[str], None] = click.echo, *, record_runs: bool = False) -> Demo:
    """Build the code location on ``settings`` and run each step in order, printing as it goes."""
    from rtml_assets.definitions import build_definitions, market_catalog
    from rtml_cli.dagster_home import embedded_dagster_home, embedded_instance

    source_markets = market_catalog(settings)
    markets = history_markets(source_markets)
    defs = build_definitions(settings, markets)
    echo(f"rtml demo: RTML_HOME={settings.home.resolve()}")
    echo(f"  offline store  {_redacted(settings.resolved_offline_url)}")
    echo(f"  dagster home   {embedded_dagster_home(settings)}")
    started = time.perf_counter()
    with embedded_instance(settings, persistent=record_runs) as instance:
        demo = Demo(settings, defs, markets, instance, echo, source_markets=source_markets)
        for number, step in enumerate(steps if steps is not None else DEMO_STEPS, start=1):
            echo(f"\n[{number}] {step.name}")
            step_started = time.perf_counter()
            for line in step.run(demo):
                echo(f"    {line}")
            echo(f"    ({time.perf_counter() - step_started:.1f}s)")
            if demo.failures:
                break
    echo(f"\ndone in {time.perf_counter() - started:.1f}s" + (" with failures:" if demo.failures else ""))
    for failure in demo.failures:
        echo(f"  {failure}")
    if not demo.failures:
        home = embedded_dagster_home(settings)
        echo(f"open the Dagster UI on the same stores:  RTML_HOME={settings.home} DAGSTER_HOME={home} "
             "dagster dev -w workspace.yaml" + ("" if record_runs else "  (rtml demo --record-runs keeps the runs)"))
    return demo


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def reset_embedded_home(settings: Settings) -> list[Path]:
    """Remove what earlier demos left in RTML_HOME (embedded stores, artifacts, checkpoints,
    Dagster home), so the demo shows the whole loop again; refuses to touch configured servers."""
    if settings.offline_url or settings.online_url:
        raise InputError("--fresh resets only the embedded stores; unset RTML_OFFLINE_URL and RTML_ONLINE_URL")
    home = settings.home
    names = ["offline.sqlite", "offline.sqlite-wal", "offline.sqlite-shm", "online.sqlite", "online.sqlite-wal",
             "online.sqlite-shm", "artifacts", "checkpoints", "dagster_home"]
    removed = [home / name for name in names if (home / name).exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


@click.command("demo")
@click.option("--record-runs", is_flag=True,
              help="Keep the Dagster runs and check results in RTML_HOME/dagster_home (slower).")
@click.option("--fresh", is_flag=True,
              help="Start from empty embedded stores under RTML_HOME (a rerun otherwise continues from them: "
                   "the replay day is then already processed and part of the training data).")
def demo(record_runs: bool, fresh: bool) -> None:
    """Run the main job end to end on the embedded default: import the bundled real history,
    validate it, compute the indicator table, and print a summary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.BetaWarning)
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        settings = Settings()
        if fresh:
            for path in reset_embedded_home(settings):
                click.echo(f"removed {path}")
        result = run_demo(settings, record_runs=record_runs)
    if result.failures:
        raise SystemExit(1)
