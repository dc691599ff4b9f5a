"""``rtml serve``: the prediction API under uvicorn (settings from RTML_* at start)."""

from __future__ import annotations

import os
import shutil
import tempfile

import click

from api.auth import check_auth_config, parse_keys
from rtml_core.settings import Settings


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each loads the champion; rate limits are shared through Redis and "
              "/metrics sums all workers).")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request (costs throughput; /metrics counts requests anyway).")
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Serve predictions: POST /v1/predict, /v1/predict/batch, WS /v1/predictions/stream, /metrics."""
    import uvicorn

    settings = Settings()
    check_auth_config(parse_keys(settings.api_keys), settings.api_auth_disabled)  # fail before forking
    os.environ["RTML_API_WORKERS"] = str(workers)  # the workers' Settings see how many they are
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="rtml-api-metrics-")  # one /metrics over every worker
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "api.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
            access_log=access_log, log_level=settings.log_level.lower(), loop="auto", http="auto",
            ws="websockets",
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
