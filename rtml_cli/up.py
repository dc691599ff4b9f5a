"""``rtml up``: the whole system in one command, under honcho's process manager.

Starts the Dagster webserver and daemon, the streaming sidecar (or, with ``RTML_BROKER_URL`` set,
the broker layout's ingest, stream and archive processes: docs/broker.md) and the prediction API as child
processes (``honcho.manager.Manager``: each in its own session, output forwarded line by line
with a ``time name |`` prefix; when one stops, or on Ctrl-C/SIGTERM, all get SIGTERM and,
after ``STOP_GRACE_S`` seconds, SIGKILL). The sidecar replaying a finite file may finish on its own
(exit 0) without stopping the rest.

Stores: PostgreSQL and Redis when ``RTML_OFFLINE_URL`` / ``RTML_ONLINE_URL`` say so, else the
embedded SQLite files under ``RTML_HOME``. Dagster: the embedded SQLite instance in
``RTML_HOME/dagster_home``, or, when ``RTML_DAGSTER_PG_URL`` is set, the repository's
``dagster.yaml`` (runs, events and schedules in PostgreSQL) copied to ``RTML_HOME/dagster_pg``.
``plan_stack`` is pure (settings and options in, commands and environments out); ``run_stack``
does the process work.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import click

from rtml_core.errors import InputError, RtmlError
from rtml_core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPLAY = REPO_ROOT / "data" / "kraken_xbtusdt_trades_rest.json"
"""1,000 real Kraken XBT/USDT trades (data/README.md), replayed as kraken BTC-USD."""
CODE_LOCATION = "rtml_assets.definitions"
STREAM_EXCHANGES = ("replay", "kraken", "binance", "coinbase")
RUNNING_BY_DEFAULT = {
    "market_history_sync": "new days of the open-ended markets, 00:15 UTC",
    "monitoring_schedule": "live skill, drift, freshness, every 15 min",
    "retrain_hourly": "markets with new feature partitions, hourly",
    "training_automation": "retrains a market when its new feature partitions land",
}
"""The schedules and sensors of the code location that run as soon as the Dagster daemon does."""
STOP_GRACE_S = 20
"""Seconds between SIGTERM and SIGKILL (honcho's default 5 s is shorter than Dagster's shutdown)."""


@dataclass(frozen=True)
class Service:
    """One child process: its name, argv, extra environment and where it listens."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    health: str | None = None  # answers 200 once the service is ready
    may_finish: bool = False  # exit 0 does not stop the others (a finished replay)

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class UpOptions:
    host: str = "127.0.0.1"
    dagster_port: int = 3000
    api_port: int = 8000
    stream_port: int = 9108
    exchange: str = "replay"
    symbols: str = "BTC-USD"
    replay_file: Path = DEFAULT_REPLAY
    replay_speed: str = "1"
    services: tuple[str, ...] = ("dagster-webserver", "dagster-daemon", "sidecar", "api")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _bin(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise InputError(f"{name} is not installed in this environment (pip install dagster-webserver)")
    return found


def dagster_home(settings: Settings, environ: Mapping[str, str]) -> Path:
    """The DAGSTER_HOME ``rtml up`` uses (created): PostgreSQL when RTML_DAGSTER_PG_URL is set."""
    if environ.get("RTML_DAGSTER_PG_URL"):
        source = REPO_ROOT / "dagster.yaml"
        if not source.exists():
            raise InputError("RTML_DAGSTER_PG_URL is set but the repository's dagster.yaml is missing",
                             source=str(source))
        home = (settings.home / "dagster_pg").resolve()
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, home / "dagster.yaml")
        return home
    from rtml_cli.dagster_home import embedded_dagster_home

    return embedded_dagster_home(settings)


def plan_stack(settings: Settings, options: UpOptions, environ: Mapping[str, str]) -> tuple[list[Service], dict]:
    """The services to start and the environment they share (no process is started here)."""
    if options.exchange not in STREAM_EXCHANGES:
        raise InputError(f"--exchange {options.exchange!r}: use one of {', '.join(STREAM_EXCHANGES)}")
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    url_host = _url_host(options.host)
    dagster_url = f"http://{url_host}:{options.dagster_port}"
    env = {
        "RTML_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home(settings, environ)),
        "PYTHONUNBUFFERED": "1",
        "RTML_STREAM_METRICS_HOST": options.host,
        "RTML_STREAM_DAGSTER_URL": environ.get("RTML_STREAM_DAGSTER_URL", dagster_url),
    }
    api_env: dict[str, str] = {}
    if not settings.api_keys and not settings.api_auth_disabled:
        if not _is_loopback(options.host):
            raise InputError(f"--host {options.host} exposes the API beyond this machine: set RTML_API_KEYS "
                             "(or RTML_API_AUTH_DISABLED=true if you really mean it)")
        api_env["RTML_API_AUTH_DISABLED"] = "true"  # loopback only, the embedded default
    if options.exchange == "replay" and "RTML_API_SERVE_STALE" not in environ:
        api_env["RTML_API_SERVE_STALE"] = "true"  # replayed trades carry their old times: answer, flagged stale
    python = sys.executable
    stream = [python, "-m", "rtml_stream", "--exchange", options.exchange, "--symbols", options.symbols,
              "--health-port", str(options.stream_port)]
    if options.exchange == "replay":
        if not Path(options.replay_file).is_file():
            raise InputError("replay file not found", source=str(options.replay_file))
        stream += ["--replay", str(options.replay_file), "--speed", options.replay_speed, "--no-checkpoint"]
        if str(options.replay_file).endswith(".json"):
            stream += ["--no-book"]
    services = [
        Service("dagster-webserver", (_bin("dagster-webserver"), "-h", options.host, "-p", str(options.dagster_port),
                                      "-m", CODE_LOCATION), url=dagster_url, health=f"{dagster_url}/server_info"),
        Service("dagster-daemon", (_bin("dagster-daemon"), "run", "-m", CODE_LOCATION)),
        Service("sidecar", tuple(stream), url=f"http://{url_host}:{options.stream_port}/health",
                health=f"http://{url_host}:{options.stream_port}/health",
                may_finish=options.exchange == "replay"),
        Service("api", (python, "-m", "rtml_cli", "serve", "--host", options.host, "--port", str(options.api_port)),
                env=api_env, url=f"http://{url_host}:{options.api_port}",
                health=f"http://{url_host}:{options.api_port}/health"),
    ]
    if settings.broker_url:
        services = _broker_layout(settings, options, services, url_host)
    unknown = set(options.services) - {s.name for s in services} - ({"sidecar"} if settings.broker_url else set())
    if unknown:
        raise InputError(f"unknown service(s) {', '.join(sorted(unknown))}")
    wanted = set(options.services) | (set(BROKER_SERVICES) if "sidecar" in options.services else set())
    return [s for s in services if s.name in wanted], env


BROKER_SERVICES = ("ingest", "stream", "archive")


def _broker_layout(settings: Settings, options: UpOptions, services: list[Service], url_host: str) -> list[Service]:
    """RTML_BROKER_URL set: ingest -> NATS JetStream -> stream (features) and archive, instead of the sidecar
    (docs/broker.md); ``--only sidecar`` keeps all three."""
    if options.exchange == "replay":
        raise InputError("RTML_BROKER_URL is set: the broker layout ingests a live exchange "
                         "(--exchange kraken|binance|coinbase), or unset it to replay through the sidecar")
    python, url = sys.executable, settings.broker_url
    ingest_port = settings.broker_ingest_metrics_port or 9110
    archive_port = settings.broker_archive_metrics_port or 9111
    market = ["--exchange", options.exchange, "--symbols", options.symbols]
    health = {name: f"http://{url_host}:{port}/health" for name, port in
              (("ingest", ingest_port), ("stream", options.stream_port), ("archive", archive_port))}
    broker = [
        Service("ingest", (python, "-m", "rtml_cli", "ingest", *market, "--to", url, "--health-port", str(ingest_port)),
                url=health["ingest"], health=health["ingest"]),
        Service("stream", (python, "-m", "rtml_cli", "stream", "--source", url, *market,
                           "--health-port", str(options.stream_port)), url=health["stream"], health=health["stream"]),
        Service("archive", (python, "-m", "rtml_cli", "archive", "--source", url, "--health-port", str(archive_port)),
                url=health["archive"], health=health["archive"]),
    ]
    out = []
    for service in services:
        out.extend(broker if service.name == "sidecar" else [service])
    return out


def redact_online(url: str) -> str:
    """The online-store URL without its credentials."""
    if "@" not in url:
        return url
    return url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[1]


def describe(settings: Settings, services: list[Service], env: Mapping[str, str]) -> list[str]:
    """What ``rtml up`` prints before starting: the stores and where each service listens."""
    from sqlalchemy.engine import make_url

    offline = make_url(settings.resolved_offline_url).render_as_string(hide_password=True)
    online = redact_online(settings.resolved_online_url)
    pg = "PostgreSQL (RTML_DAGSTER_PG_URL)" if "dagster_pg" in env["DAGSTER_HOME"] else "embedded SQLite"
    lines = [
        f"rtml up: RTML_HOME={env['RTML_HOME']}",
        f"  offline store   {offline}",
        f"  online store    {online}",
        f"  dagster home    {env['DAGSTER_HOME']} ({pg})",
    ]
    labels = {"dagster-webserver": "Dagster UI", "sidecar": "sidecar health", "api": "prediction API",
              "ingest": "ingest health", "stream": "features health", "archive": "archive health"}
    if settings.broker_url:
        lines.append(f"  broker          {settings.broker_url} (stream {settings.broker_stream})")
    for service in services:
        where = service.url or "(no port)"
        if service.name == "api":
            where += "  (POST /v1/predict, /schema/swagger)"
        lines.append(f"  {labels.get(service.name, service.name):<15} {where}")
    if "dagster-daemon" in {s.name for s in services}:
        lines.append("  schedules       on: " + ", ".join(f"{name} ({what})" for name, what in RUNNING_BY_DEFAULT.items())
                     + "; switch them in the UI")
    lines.append("Ctrl-C stops everything.")
    return lines


def watch_ready(services: list[Service], say, stop: threading.Event, timeout_s: float = 600.0) -> None:
    """Poll each service's health URL; ``say`` one line as each answers 200, and when all have."""
    import httpx

    started = time.monotonic()
    waiting = {s.name: s.health for s in services if s.health}
    total = len(waiting)
    while waiting and not stop.is_set() and time.monotonic() - started < timeout_s:
        for name, url in list(waiting.items()):
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    del waiting[name]
                    say(f"{name} ready ({url}) after {time.monotonic() - started:.0f}s")
            except httpx.HTTPError:
                pass
        if waiting:
            stop.wait(1.0)
    if total and not waiting:
        say(f"all {total} services answer: the system is up")


def preflight(settings: Settings) -> None:
    """Open both stores once before starting anything: a wrong URL or a server that is down fails
    here in one clear line, and the offline schema (prediction log included) is created once."""
    import sqlalchemy as sa

    from rtml_core.prediction_log import migrate_predictions
    from rtml_core.stores.offline import open_offline_store
    from rtml_core.stores.online import open_online_store

    offline_url = sa.make_url(settings.resolved_offline_url).render_as_string(hide_password=True)
    try:
        store = open_offline_store(settings.resolved_offline_url)
        try:
            migrate_predictions(store)
        finally:
            store.close()
    except sa.exc.SQLAlchemyError as error:
        raise RtmlError(f"offline store {offline_url} is not usable: {getattr(error, 'orig', None) or error}") from None
    online_url = redact_online(settings.resolved_online_url)
    try:
        online = open_online_store(settings.resolved_online_url, settings.online_prefix, settings.online_history)
        try:
            reachable = online.ping()
        finally:
            online.close()
    except (OSError, RtmlError) as error:
        raise RtmlError(f"online store {online_url} is not usable: {error}") from None
    if not reachable:
        raise RtmlError(f"online store {online_url} does not answer")
    if settings.broker_url:
        import asyncio

        import nats

        async def probe() -> None:
            nc = await nats.connect(settings.broker_url, connect_timeout=3, allow_reconnect=False)
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()

        try:
            asyncio.run(probe())
        except Exception as error:  # noqa: BLE001 - any failure: one clear line
            raise RtmlError(f"broker {settings.broker_url} is not usable (NATS with JetStream): {error!r}") from None


def run_stack(services: list[Service], env: Mapping[str, str], output=None) -> int:
    """Run the services under honcho until one fails or a signal arrives; the exit status."""
    import honcho.manager
    from honcho.manager import SIGNALS, Manager
    from honcho.printer import Message, Printer

    honcho.manager.KILL_WAIT = STOP_GRACE_S  # read by Manager.loop at each tick

    finishers = {s.name for s in services if s.may_finish}

    class StackManager(Manager):
        """honcho's Manager, except that a ``may_finish`` service exiting 0 stops nothing."""

        def _any_stopped(self):
            return any(p.get("returncode") not in (None, 0) or (p.get("returncode") == 0 and name not in finishers)
                       for name, p in self._processes.items())

    printer = Printer(output or sys.stdout)
    manager = StackManager(printer)
    base = {**os.environ, **env}
    for service in services:
        manager.add_process(service.name, service.command, env={**base, **service.env})

    def say(text: str) -> None:
        printer.write(Message(type="line", data=text, time=datetime.now(), name="rtml up", colour=None))

    stop = threading.Event()
    watcher = threading.Thread(target=watch_ready, args=(services, say, stop), name="rtml-up-ready", daemon=True)
    watcher.start()
    try:
        manager.loop()
    finally:
        stop.set()
        watcher.join(5)
    if manager.returncode in {s["rc"] for s in SIGNALS.values()}:
        return manager.returncode
    codes = [p.get("returncode") for p in manager._processes.values()]
    failed = [code for code in codes if code is not None and code > 0]  # < 0: ended by the stop signal
    if failed:
        return failed[0]
    return 1 if any(code is not None and code < 0 for code in codes) else 0


@click.command("up")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every service listens on.")
@click.option("--dagster-port", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--stream-port", default=9108, show_default=True, type=click.IntRange(1, 65535),
              help="The sidecar's /health and /metrics port.")
@click.option("--exchange", type=click.Choice(STREAM_EXCHANGES), default="replay", show_default=True,
              envvar="RTML_UP_EXCHANGE", help="The sidecar's source: a live exchange, or replay of real ticks.")
@click.option("--symbols", default="BTC-USD", show_default=True, envvar="RTML_UP_SYMBOLS",
              help="Comma-separated symbols the sidecar streams (replay: the file's one symbol).")
@click.option("--replay", "replay_file", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_REPLAY,
              show_default="data/kraken_xbtusdt_trades_rest.json", help="Trades file the replay plays.")
@click.option("--replay-speed", default="1", show_default=True,
              help="1 = real time (the bundled file lasts ~7 hours), N = N x, max = as fast as possible.")
@click.option("--only", default=None, help="Comma-separated subset: dagster-webserver,dagster-daemon,sidecar,api.")
def up(host, dagster_port, api_port, stream_port, exchange, symbols, replay_file, replay_speed, only) -> None:
    """Start the Dagster webserver and daemon, the streaming sidecar and the API; Ctrl-C stops all."""
    settings = Settings()
    options = UpOptions(host=host, dagster_port=dagster_port, api_port=api_port, stream_port=stream_port,
                        exchange=exchange, symbols=symbols, replay_file=replay_file, replay_speed=replay_speed,
                        **({"services": tuple(s.strip() for s in only.split(",") if s.strip())} if only else {}))
    services, env = plan_stack(settings, options, os.environ)
    preflight(settings)
    for line in describe(settings, services, env):
        click.echo(line)
    sys.exit(run_stack(services, env))
