"""Shared parts of the broker tests: a stream of its own per test (deleted after), the real Kraken
trades of data/kraken_xbtusdt_trades_rest.json played by the local Kraken WebSocket server, the
batch rows of the same trades, and subprocess helpers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from rtml_core.ingest import read_trades
from rtml_core.schemas import Trade
from rtml_core.symbols import to_exchange_symbol
from rtml_stream.broker.codec import decode_trades
from rtml_stream.broker.jetstream import BrokerConfig
from rtml_stream.broker.leases import lease_bucket
from rtml_stream.pipeline import Pipeline
from tests.conftest import DATA
from tests.stream.wsservers import Pause, Session, kraken_rest_trades, kraken_ws_trade_message

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
KRAKEN_FILE = DATA / "kraken_xbtusdt_trades_rest.json"
PAIR, ROWS = kraken_rest_trades(KRAKEN_FILE)
TIMEFRAMES = ("1m", "5m")
LATENESS_NS = 2_000_000_000  # RTML_STREAM_ALLOWED_LATENESS_MS default


def exchange_trades(symbol: str = "BTC-USDT") -> list[Trade]:
    """The trades the local exchange sends, as the source normalizes them (WS v2 carries microseconds)."""
    trades = read_trades(KRAKEN_FILE, "kraken-rest", exchange="kraken", symbol="BTC-USDT")
    return [msgspec.structs.replace(t, symbol=symbol, time_ns=t.time_ns // 1000 * 1000) for t in trades]


def expected_output(trades: Sequence[Trade]):
    """Batch rows and candles of the same trades: closed by later trades only, as the broker's trade clock."""
    pipeline = Pipeline(TIMEFRAMES, allowed_lateness_ns=LATENESS_NS)
    pipeline.on_trades(list(trades))
    return pipeline.drain()


def messages(symbols: Sequence[str], rows=ROWS, per_message: int = 50, pause_s: float = 0.0) -> list:
    """Kraken WS v2 trade updates of ``rows`` for each symbol, interleaved; a pause after each round.

    Every symbol replays the same real trades (the one Kraken capture the repository holds)."""
    steps: list = []
    for i in range(0, len(rows), per_message):
        for symbol in symbols:
            steps.append(kraken_ws_trade_message(rows[i:i + per_message], to_exchange_symbol("kraken", symbol)))
        if pause_s:
            steps.append(Pause(pause_s))
    return steps


def session(symbols: Sequence[str], rows=ROWS, **options) -> Session:
    return Session(messages(symbols, rows, **options))


def wire_symbols(symbols: Sequence[str]) -> tuple[str, ...]:
    return tuple(to_exchange_symbol("kraken", s) for s in symbols)


@pytest.fixture
def broker(nats_url: str):
    """A BrokerConfig on a stream of this test's own, deleted (with its lease bucket) afterwards."""
    name = f"RTMLTEST_{uuid.uuid4().hex[:10].upper()}"
    config = BrokerConfig(url=nats_url, stream=name, subject_prefix=name.lower(), lease_ttl_s=1.0, max_age_s=3600,
                          max_bytes=256 * 2**20, book_snapshot_s=1.0)
    yield config

    async def cleanup() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for delete in (lambda: js.delete_stream(name), lambda: js.delete_key_value(lease_bucket(name))):
            try:
                await delete()
            except Exception:  # noqa: BLE001 - not created by this test
                pass
        await nc.close()

    asyncio.run(cleanup())


async def stream_trades(config: BrokerConfig) -> list[Trade]:
    """Every trade the stream holds on ``subject``, in stream order (an ephemeral ordered read)."""
    nc = await nats.connect(config.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"{config.subject_prefix}.>", stream=config.stream, ordered_consumer=True)
        info = await js.stream_info(config.stream)
        out: list[Trade] = []
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=5)
            if msg.subject.startswith(f"{config.subject_prefix}.trades."):
                out.extend(decode_trades(msg.data).trades)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def env_for(tmp_path: Path, config: BrokerConfig, redis_url: str, prefix: str, offline_url: str | None = None,
            **extra: str) -> dict[str, str]:
    env = {**os.environ, "RTML_HOME": str(tmp_path / "home"), "RTML_ONLINE_URL": redis_url,
           "RTML_ONLINE_PREFIX": prefix, "RTML_ONLINE_HISTORY": "2000", "RTML_STREAM_DAGSTER": "off",
           "RTML_BROKER_URL": config.url, "RTML_BROKER_STREAM": config.stream, "RTML_BROKER_SUBJECT_PREFIX": config.subject_prefix, "RTML_BROKER_TICK_S": "0.2",
           "RTML_BROKER_LEASE_TTL_S": str(config.lease_ttl_s), "RTML_BROKER_BOOK_SNAPSHOT_S": "1",
           "RTML_LOG_LEVEL": "WARNING"}
    if offline_url:
        env["RTML_OFFLINE_URL"] = offline_url
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "rtml_cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=log.open("ab"), text=True)


def health(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return None


async def wait_until(condition, *, timeout: float, what: str, process: subprocess.Popen | None = None,
                     log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited {process.returncode}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {log.read_text()[-3000:]}" if log else ""))
        await asyncio.sleep(0.1)


def rows_equal(got, want) -> bool:
    """Same event times and versions; values equal (NaN equal to NaN)."""
    if [(r.event_time_ns, r.feature_set_version) for r in got] != [(r.event_time_ns, r.feature_set_version)
                                                                    for r in want]:
        return False
    for a, b in zip(got, want):
        for name, value in b.values.items():
            other = a.values.get(name)
            if value != value:
                if other == other:
                    return False
            elif other is None or abs(other - value) > 1e-9 * max(1.0, abs(value)):
                return False
    return True


def online_rows(store, exchange: str, symbol: str, timeframe: str) -> list:
    return list(reversed(store.read_history(exchange, symbol, timeframe, 5000)))


def decode_json_lines(text: str) -> dict:
    return msgspec.json.decode(text.strip().splitlines()[-1])


class TcpProxy:
    """127.0.0.1:<port> forwarding to NATS; ``cut()`` drops every connection and stops listening
    (the broker unreachable, as in a network outage), ``restore()`` listens again on the same port."""

    def __init__(self, target_url: str) -> None:
        host_port = target_url.split("://", 1)[1]
        self.target_host, port = host_port.rsplit(":", 1)
        self.target_port = int(port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def restore(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
