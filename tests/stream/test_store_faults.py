"""Stores that hang or go down never stall the stream and never lose a row: a Redis that accepts
connections and never answers (a local TCP server in front of the real one), PostgreSQL down at
SIGTERM (the same in front of the real PostgreSQL), then both back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Literal

import httpx
from sqlalchemy.engine import make_url

from rtml_core.ingest import read_trades
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_stream.app import build_sidecar
from rtml_stream.pipeline import Pipeline
from rtml_stream.sources.replay import ReplaySource
from tests.conftest import DATA
from tests.stream.helpers import first_lines, free_port, health, wait_for_value

ES_TICKS = DATA / "es_futures_ticks_2013-09.csv.gz"
REPO = Path(__file__).resolve().parents[2]
NS = 1_000_000_000


class TcpSwitch:
    """A local TCP server in front of a real one: ``forward`` (a transparent proxy), ``hang``
    (accepts, reads, never answers) or ``down`` (accepts and drops at once). Switching drops
    every open connection, as a restart of the real server would."""

    def __init__(self, host: str, port: int, mode: Literal["forward", "hang", "down"] = "forward") -> None:
        self.target = (host, port)
        self.mode = mode
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpSwitch:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def switch(self, mode: Literal["forward", "hang", "down"]) -> None:
        self.mode = mode
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.switch("down")
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            if self.mode == "hang":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.transport.abort()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except OSError:
            writer.transport.abort()
        finally:
            self._writers.discard(writer)


def es_ticks(n: int) -> list:
    return list(islice(read_trades(ES_TICKS, "ticks-csv", exchange="replay", symbol="ES-USD"), n))


# --- a Redis that accepts and never answers, for 30 s --------------------------------------------

async def test_a_hung_redis_never_stalls_the_loop_and_every_row_arrives_afterwards(tmp_path, redis_url,
                                                                                   redis_prefix) -> None:
    real = make_url(redis_url.replace("redis://", "redis+x://"))
    switch = await TcpSwitch(real.host or "127.0.0.1", real.port or 6379, mode="hang").start()
    ticks = es_ticks(20_000)
    span_s = (ticks[-1].time_ns - ticks[0].time_ns) / NS
    settings = Settings(home=tmp_path / "home", online_url=f"redis://127.0.0.1:{switch.port}/0",
                        online_prefix=redis_prefix, online_history=10_000, stream_dagster="off",
                        offline_url=f"sqlite:///{tmp_path / 'offline.sqlite'}")
    source = ReplaySource(ticks, speed=span_s / 40)  # the ticks over 40 s of wall time
    sidecar = build_sidecar(settings, source, [("replay", "ES-USD")], timeframes=["1m"], health_port=0)
    stop = asyncio.Event()
    running = asyncio.create_task(sidecar.run(stop))
    await wait_for_value(lambda: sidecar.health_server is not None and sidecar.health_server.port, timeout=10)
    url = f"http://127.0.0.1:{sidecar.health_server.port}/health"
    answers, worst_lag = [], 0.0
    async with httpx.AsyncClient() as client:
        hung_until = time.monotonic() + 30
        while time.monotonic() < hung_until:
            started = time.monotonic()
            reply = await client.get(url, timeout=5)
            answers.append((time.monotonic() - started, reply.status_code))
            worst_lag = max(worst_lag, sidecar.loop_lag_s)
            await asyncio.sleep(0.2)
        rows_while_hung = sidecar.pipeline.rows_out
        switch.switch("forward")
        await wait_for_value(lambda: source.replayed == len(ticks), timeout=60)
        stop.set()
        summary = await asyncio.wait_for(running, timeout=60)
    await switch.close()
    sidecar.close()
    assert len(answers) > 100 and max(seconds for seconds, _ in answers) < 1.0
    assert {status for _, status in answers[10:]} == {503}  # unhealthy (hung, then failing), and answering
    assert worst_lag < 0.25 and rows_while_hung > 10
    assert summary.online["pending"] == 0 and summary.online["dropped"] == {}
    store = open_online_store(redis_url, prefix=redis_prefix, history=10_000)
    history = store.read_history("replay", "ES-USD", "1m", 10_000)
    store.close()
    offline = open_offline_store(settings.resolved_offline_url)
    logged = offline.read_features("replay", "ES-USD", "1m", sidecar.pipeline.version)
    offline.close()
    assert len(history) == summary.rows == len(logged)  # every row arrived
    assert sorted(r.event_time_ns for r in history) == [int(t.value) + 60 * NS for t in logged["time"]]


# --- SIGTERM while PostgreSQL is down, then a restart with it up ---------------------------------

async def test_sigterm_with_postgresql_down_loses_nothing_after_a_restart(tmp_path, redis_url, redis_prefix,
                                                                          fresh_postgres_url) -> None:
    es_slice = first_lines(ES_TICKS, tmp_path / "es_20k.csv", 20_000)
    real = make_url(fresh_postgres_url)
    switch = await TcpSwitch(real.host or "127.0.0.1", real.port or 5432).start()
    through = real.set(host="127.0.0.1", port=switch.port).render_as_string(hide_password=False)
    port = free_port()
    env = {**os.environ, "RTML_HOME": str(tmp_path / "home"), "RTML_ONLINE_URL": redis_url,
           "RTML_ONLINE_PREFIX": redis_prefix, "RTML_OFFLINE_URL": through, "RTML_STREAM_DAGSTER": "off",
           "RTML_STREAM_CHECKPOINT_INTERVAL_S": "1"}
    args = [sys.executable, "-m", "rtml_stream", "--exchange", "replay", "--replay", str(es_slice), "--symbols",
            "ES-USD", "--timeframes", "1m,5m", "--json", "--health-port", str(port)]
    log = tmp_path / "sidecar.log"
    with log.open("a") as stderr:
        first = subprocess.Popen([*args, "--speed", "1000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=stderr, text=True)
    try:
        async with asyncio.timeout(90):
            while (status := await health(port)) is None or status["trades"] < 6_000:
                assert first.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
            switch.switch("down")  # PostgreSQL goes away with rows still to write
            down_at = status["trades"]
            while (status := await health(port)) is None or status["trades"] < down_at + 3_000 \
                    or status["offline"]["healthy"]:
                assert first.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
        assert status["offline"]["pending"] > 0
        first.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(first.communicate, timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 3, log.read_text()[-3000:]  # stopped with rows still buffered
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["offline_pending"] > 0 and "checkpoint_held_back" in log.read_text()
    switch.switch("forward")
    again = await asyncio.to_thread(subprocess.run, [*args, "--speed", "max"], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=180)
    await switch.close()
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["started"] == {"replay:ES-USD": "checkpoint"} and second["late_trades"] == 0
    assert second["duplicates_skipped"] < stopped["trades"] - 2_000  # restarted from before the buffered rows
    reference = Pipeline(("1m", "5m"), allowed_lateness_ns=2 * NS)
    reference.on_trades(read_trades(es_slice, "ticks-csv", exchange="replay", symbol="ES-USD"))
    reference.flush_open()
    expected = reference.drain()
    store = open_offline_store(fresh_postgres_url)
    for tf in ("1m", "5m"):
        want = [c for c in expected.candles if c.timeframe == tf]
        got = store.read_candles("replay", "ES-USD", tf, exact=True)
        assert [int(t.value) for t in got["time"]] == [c.start_ns for c in want]
        assert [str(v) for v in got["close"]] == [str(c.close) for c in want]
        assert [str(v) for v in got["volume"]] == [str(c.volume) for c in want]
        assert list(got["trade_count"]) == [c.trade_count for c in want]
        features = store.read_features("replay", "ES-USD", tf, reference.version)
        assert len(features) == len([r for r in expected.rows if r.timeframe == tf])
    store.close()
