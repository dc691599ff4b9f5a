"""One Settings model, built once at each entry point and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every environment variable rtml reads, with the prefix ``RTML_``."""

    model_config = SettingsConfigDict(env_prefix="RTML_", extra="ignore")

    home: Path = Field(default=Path(".rtml"), description="Where embedded stores and artifacts live.")
    offline_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the offline store; default a SQLite file under RTML_HOME. "
        "Use postgresql+psycopg://user@host/db for PostgreSQL.",
    )
    online_url: str | None = Field(
        default=None,
        description="redis://host:port/db for Redis; default an embedded SQLite file under RTML_HOME.",
    )
    online_prefix: str = Field(default="rtml", description="Key prefix of every online-store key.")
    online_history: int = Field(
        default=100, ge=1, description="Newest feature rows kept per market and timeframe in the online store."
    )
    artifacts_dir: Path | None = Field(
        default=None, description="Model artifact directory; default RTML_HOME/artifacts."
    )
    log_level: str = Field(default="INFO", description="Log level of every rtml process.")
    markets_file: Path | None = Field(
        default=None, description="YAML list of markets and their source files (docs/dagster.md); "
        "default the real history bundled under data/."
    )
    # Prediction API (docs/api.md explains each one)
    api_keys: str = Field(default="", description="Comma-separated API keys accepted in X-API-Key.")
    api_auth_disabled: bool = Field(default=False, description="Serve without API keys (embedded demo only).")
    api_default_exchange: str = Field(default="kraken", description="Exchange when a request names none.")
    api_default_timeframe: str = Field(default="1m", description="Timeframe when a request names none.")
    api_max_feature_age_ms: int | None = Field(
        default=None, description="Oldest feature row served as fresh; default two timeframes plus 10 s."
    )
    api_serve_stale: bool = Field(default=False, description="Answer stale rows flagged stale instead of 503.")
    api_rate_limit: int = Field(default=1000, description="Requests per second per client (API key or IP); 0 = off.")
    api_max_body_bytes: int = Field(default=16_384, description="Largest request body accepted.")
    api_max_batch: int = Field(default=50, description="Most symbols in one batch prediction.")
    api_model_poll_s: float = Field(default=2.0, description="Seconds between registry polls for a new champion.")
    api_log_predictions: bool = Field(default=True, description="Log served predictions to the offline store.")
    api_workers: int = Field(default=1, ge=1, description="Worker processes serving the API (`rtml serve --workers` "
                             "sets it): above 1, rate limits are counted in Redis and metrics across workers.")
    api_max_ws: int = Field(default=1000, ge=1, description="Most open prediction WebSockets per worker process.")
    api_max_ws_per_key: int = Field(default=20, ge=1, description="Most open prediction WebSockets per API key "
                                    "(per client address without auth), per worker process.")
    api_ws_connect_rate: int = Field(default=5, ge=0, description="WebSocket connects per second per API key "
                                     "(or client address); 0 = off.")
    api_failed_key_limit: int = Field(default=10, ge=0, description="Requests with a missing or wrong API key per "
                                      "minute per client address before 429; 0 = off.")
    exec_max_position: float = Field(default=1.0, description="Largest position, as a fraction of capital.")
    exec_fee_bps: float = Field(default=10.0, description="Taker fee per side, basis points.")
    exec_spread_bps: float = Field(default=2.0, description="Spread assumed when no live book spread is known.")
    exec_vol_target: float = Field(default=0.5, description="Annualized volatility the position is sized to.")
    exec_atr_stop_mult: float = Field(default=2.0, description="Stop loss distance in ATR(14) multiples.")
    exec_atr_take_mult: float = Field(default=3.0, description="Take profit distance in ATR(14) multiples.")
    # Streaming sidecar (docs/stream.md explains each one)
    stream_timeframes: str = Field(default="1m,5m", description="Comma-separated candle timeframes of the stream.")
    stream_allowed_lateness_ms: int = Field(default=2000, ge=0, description="Event-time lateness a trade may have "
                                            "before its candle closes without it (later: a correction).")
    stream_coalesce_ms: float = Field(default=100.0, gt=0, description="Live microstructure values written at most this often.")
    stream_flow_window_s: float = Field(default=60.0, gt=0, description="Trade-flow window of the live features.")
    stream_book_levels: int = Field(default=10, ge=1, description="N of the N-level book features.")
    stream_fill_gaps: bool = Field(default=True, description="Emit flat candles for intervals without trades.")
    stream_checkpoint_dir: Path | None = Field(default=None, description="Checkpoints; default RTML_HOME/checkpoints.")
    stream_checkpoint_interval_s: float = Field(default=30.0, gt=0, description="Seconds between checkpoints.")
    stream_metrics_port: int = Field(default=9108, ge=0, description="/metrics and /health port; 0 = off.")
    stream_metrics_host: str = Field(default="127.0.0.1", description="Address the health server listens on.")
    stream_online_buffer: int = Field(default=100_000, ge=1, description="Items buffered while the online store is down.")
    stream_offline_buffer: int = Field(default=200_000, ge=1, description="Items buffered while the offline store is down.")
    stream_offline_log: bool = Field(default=True, description="Append closed candles and feature rows offline.")
    stream_stale_after_s: float = Field(default=120.0, gt=0, description="/health: no source message for this long is unhealthy.")
    stream_dagster: str = Field(default="auto", description="Report online_features to Dagster: off, instance "
                                "(DAGSTER_HOME), a webserver URL, or auto (URL in RTML_STREAM_DAGSTER_URL, else "
                                "DAGSTER_HOME if set, else off).")
    stream_dagster_url: str | None = Field(default=None, description="Dagster webserver URL for auto mode.")
    stream_dagster_interval_s: float = Field(default=60.0, gt=0, description="Seconds between Dagster reports per market.")
    stream_max_future_s: float = Field(default=5.0, gt=0, description="A trade or book update stamped more than this "
                                       "ahead of the feed's clock and of the wall clock is malformed (never in a candle).")
    stream_max_fill_candles: int = Field(default=1440, ge=0, description="Longest gap filled with flat candles; a "
                                         "longer one is recorded as a gap (metric, log, offline candle_gaps).")
    stream_max_backfill_age_s: float = Field(default=3600.0, gt=0, description="Oldest trade gap backfilled from "
                                             "REST after a disconnect or restart; an older one is recorded unfilled.")
    # Message broker layout: NATS JetStream between ingest and features (docs/broker.md explains each one)
    broker_url: str | None = Field(default=None, description="nats://host:4222: `rtml up` runs ingest, stream "
                                   "and archive processes through JetStream instead of the single sidecar.")
    broker_stream: str = Field(default="RTML_MARKET_DATA", description="JetStream stream of the market data.")
    broker_subject_prefix: str = Field(default="rtml", description="First token of the stream's subjects "
                                       "(<prefix>.trades.<exchange>.<symbol>); streams on one server need their own.")
    broker_max_age_s: float = Field(default=7 * 86_400.0, ge=0, description="Stream retention: oldest message "
                                    "age kept, seconds; 0 = no limit.")
    broker_max_bytes: int = Field(default=10 * 2**30, ge=0, description="Stream retention: bytes kept; 0 = no limit.")
    broker_duplicate_window_s: float = Field(default=120.0, gt=0, description="JetStream duplicate window "
                                             "(same Nats-Msg-Id dropped), seconds.")
    broker_replicas: int = Field(default=1, ge=1, le=5, description="Stream, consumer and lease replicas "
                                 "(3 on a JetStream cluster).")
    broker_group: str = Field(default="features", description="Consumer group of the feature service (one per "
                              "feature set); durable consumers are <group>_<exchange>_<symbol>.")
    broker_lease_ttl_s: float = Field(default=3.0, gt=0, description="A dead feature service's markets are "
                                      "taken over after this many seconds.")
    broker_ack_wait_s: float = Field(default=900.0, gt=0, description="JetStream ack wait; at least twice the "
                                     "longest timeframe plus 60 s is used.")
    broker_max_ack_pending: int = Field(default=100_000, ge=1, description="Messages a consumer may hold "
                                        "unacknowledged (the trades of open candles).")
    broker_publish_buffer: int = Field(default=100_000, ge=1, description="Messages the ingestor buffers while "
                                       "NATS is down; beyond it the oldest are dropped and counted.")
    broker_book_snapshot_s: float = Field(default=10.0, gt=0, description="Seconds between full book snapshots "
                                          "the ingestor publishes.")
    broker_tick_s: float = Field(default=1.0, gt=0, description="While the exchange feed is quiet, the "
                                 "ingestor publishes its clock this often (quiet candles close on it).")
    broker_ingest_metrics_port: int = Field(default=9110, ge=0, description="/metrics and /health port of "
                                            "`rtml ingest`; 0 = off.")
    broker_archive_metrics_port: int = Field(default=9111, ge=0, description="/metrics and /health port of "
                                             "`rtml archive`; 0 = off.")

    @property
    def resolved_checkpoint_dir(self) -> Path:
        return (self.stream_checkpoint_dir or self.home / "checkpoints").resolve()

    @property
    def resolved_offline_url(self) -> str:
        if self.offline_url:
            return self.offline_url
        return f"sqlite:///{(self.home / 'offline.sqlite').resolve()}"

    @property
    def resolved_online_url(self) -> str:
        if self.online_url:
            return self.online_url
        return f"sqlite:///{(self.home / 'online.sqlite').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.home / "artifacts").resolve()
