"""``rtml archive``: the trades of the JetStream stream into the offline store (docs/broker.md)."""

from __future__ import annotations

import asyncio

import click

from rtml_core.settings import Settings


@click.command("archive")
@click.option("--source", "source", default=None,
              help="NATS URL, e.g. nats://127.0.0.1:4222 (default RTML_BROKER_URL).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--health-port", type=int, default=None,
              help="/metrics and /health port (default RTML_BROKER_ARCHIVE_METRICS_PORT; 0 = any free port, -1 = off).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--log-format", type=click.Choice(("auto", "json", "console")), default="auto", show_default=True)
def archive(source, duration, health_port, as_json, log_format) -> None:
    """Write every streamed trade into the offline store's trades table until stopped."""
    from rtml_cli.ingest import running
    from rtml_core.logs import configure_logging
    from rtml_stream.broker.build import build_archiver
    from rtml_stream.broker.jetstream import BrokerConfig
    from rtml_stream.command import echo_summary, run_until_signalled

    settings = Settings()
    configure_logging(settings.log_level, json_logs=None if log_format == "auto" else log_format == "json")
    config = BrokerConfig.from_settings(settings, source)
    archiver = build_archiver(settings, config, health_port=health_port)
    summary = asyncio.run(run_until_signalled(running(archiver, duration_s=duration)))
    echo_summary(summary, as_json,
                 f"{summary['trades']} trades archived from {config.stream} in {summary['seconds']:.1f} s")
