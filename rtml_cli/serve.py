"""``rtml serve``: the prediction API under uvicorn (settings from RTML_* at start)."""

from __future__ import annotations

import click

from api.auth import check_auth_config, parse_keys
from rtml_core.settings import Settings


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each loads the champion and has its own metrics and rate limits).")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request (costs throughput; /metrics counts requests anyway).")
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Serve predictions: POST /v1/predict, /v1/predict/batch, WS /v1/predictions/stream, /metrics."""
    import uvicorn

    settings = Settings()
    check_auth_config(parse_keys(settings.api_keys), settings.api_auth_disabled)  # fail before forking
    uvicorn.run(
        "api.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
        access_log=access_log, log_level=settings.log_level.lower(), loop="auto", http="auto",
        ws="websockets",
    )
