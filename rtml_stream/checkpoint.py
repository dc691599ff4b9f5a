"""Checkpoints of the sidecar's state, and the two ways to start warm.

A checkpoint holds, per market, every timeframe's candle builder state
(``CandleBuilder.snapshot()``: open windows, watermark, last close) plus the feature engine's
indicator state, and the last trade id folded in. It is written atomically (temporary file,
fsync, rename) to ``<dir>/<exchange>/<symbol>.ckpt`` on a cadence and at shutdown, one file
per market, so processes that split symbols never share a file. Files written before the
builder had a snapshot API hold the same fields and still load; ``CHECKPOINT_FORMAT`` changes
only when old files can no longer be read (they are then refused and the market is rebuilt).

On start (``restore_markets``), each market is restored from its checkpoint; if there is none
(or it is of another feature-set version or timeframe list), it is rebuilt from the candles
the offline store holds (``FeatureEngine.warm_from`` over the full stored history, so values
are exact at once); otherwise it starts cold.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import structlog

from rtml_core.errors import InputError
from rtml_core.features import FeatureEngine
from rtml_stream.pipeline import MarketState, Pipeline

log = structlog.get_logger("rtml_stream.checkpoint")

CHECKPOINT_FORMAT = 1


class TimeframeState(msgspec.Struct, frozen=True):
    builder: dict[str, Any]  # CandleBuilder.snapshot()
    engine: bytes


class MarketCheckpoint(msgspec.Struct, frozen=True):
    format: int
    feature_set_version: str
    exchange: str
    symbol: str
    timeframes: dict[str, TimeframeState]
    last_trade_id: int | None
    last_trade_time_ns: int | None
    written_at_ns: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MarketCheckpoint)


def market_checkpoint(pipeline: Pipeline, state: MarketState, now_ns: int | None = None) -> MarketCheckpoint:
    return MarketCheckpoint(
        format=CHECKPOINT_FORMAT,
        feature_set_version=pipeline.version,
        exchange=state.exchange,
        symbol=state.symbol,
        timeframes={tf: TimeframeState(b.snapshot(), e.snapshot())
                    for tf, b, e in zip(state.timeframes, state.builders, state.engines)},
        last_trade_id=state.last_trade_id,
        last_trade_time_ns=state.last_trade_time_ns,
        written_at_ns=time.time_ns() if now_ns is None else now_ns,
    )


def state_from_checkpoint(pipeline: Pipeline, cp: MarketCheckpoint) -> MarketState:
    """A market state continuing exactly where the checkpointed one stopped."""
    if cp.format != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint format {cp.format} is not {CHECKPOINT_FORMAT}", source="checkpoint")
    if cp.feature_set_version != pipeline.version:
        raise InputError(f"checkpoint is of feature set {cp.feature_set_version}, not {pipeline.version}",
                         source="checkpoint")
    missing = [tf for tf in pipeline.timeframes if tf not in cp.timeframes]
    if missing:
        raise InputError(f"checkpoint has no state for timeframe(s) {', '.join(missing)}", source="checkpoint")
    state = pipeline.market(cp.exchange, cp.symbol)
    for i, tf in enumerate(pipeline.timeframes):
        state.builders[i].load_state(cp.timeframes[tf].builder)
        state.engines[i] = FeatureEngine.restore(cp.timeframes[tf].engine, pipeline.feature_set)
    state.last_trade_id = cp.last_trade_id
    state.last_trade_time_ns = cp.last_trade_time_ns
    if cp.last_trade_id is not None:
        state.resume_after_id = cp.last_trade_id
    return state


# -- files ---------------------------------------------------------------------------------

class Checkpointer:
    """Reads and atomically writes one checkpoint file per market under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.saved = 0
        self.last_saved_at_ns: int | None = None

    def path(self, exchange: str, symbol: str) -> Path:
        return self.directory / exchange / f"{symbol}.ckpt"

    def save(self, pipeline: Pipeline) -> list[Path]:
        """Write every market's checkpoint now; return the files written."""
        return self.write(self.encode(pipeline))

    def encode(self, pipeline: Pipeline) -> list[tuple[Path, bytes]]:
        """Every market's checkpoint as (file, bytes), to write later (``write``)."""
        now = time.time_ns()
        return [(self.path(state.exchange, state.symbol), _encoder.encode(market_checkpoint(pipeline, state, now)))
                for state in list(pipeline.markets.values())]

    def write(self, files: list[tuple[Path, bytes]]) -> list[Path]:
        """Write encoded checkpoints atomically; return the files written."""
        for target, data in files:
            _atomic_write(target, data)
        self.saved += 1
        self.last_saved_at_ns = time.time_ns()
        return [target for target, _ in files]

    def load(self, exchange: str, symbol: str) -> MarketCheckpoint | None:
        path = self.path(exchange, symbol)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError as error:
            raise InputError(f"not a sidecar checkpoint: {error}", source=str(path)) from error


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# -- rebuild from the offline store ----------------------------------------------------------

def rebuild_from_offline(pipeline: Pipeline, store, exchange: str, symbol: str) -> MarketState | None:
    """Warm every timeframe from the stored candles; None when the store holds none of them."""
    frames = {tf: store.read_candles(exchange, symbol, tf, exact=True) for tf in pipeline.timeframes}
    if all(frame.empty for frame in frames.values()):
        return None
    state = pipeline.market(exchange, symbol)
    resume = []
    for i, tf in enumerate(pipeline.timeframes):
        frame = frames[tf]
        if frame.empty:
            resume.append(-(2**63))
            continue
        floats = pd.DataFrame({
            "time": frame["time"],
            **{c: [float(v) for v in frame[c]] for c in ("open", "high", "low", "close", "volume")},
            "vwap": [float("nan") if v is None or v != v else float(v) for v in frame["vwap"]],
        })
        engine = FeatureEngine(pipeline.feature_set)
        engine.warm_from(floats)
        state.engines[i] = engine
        last_start = int(frame["time"].iloc[-1].value)
        end = last_start + pipeline.tf_ns[i]
        state.builders[i].resume_at(end, Decimal(frame["close"].iloc[-1]))
        resume.append(end)
    state.set_resume_times(resume)
    return state


def restore_markets(
    pipeline: Pipeline,
    markets: Iterable[tuple[str, str]],
    *,
    checkpointer: Checkpointer | None,
    offline_store: Callable[[], object] | object | None = None,
) -> dict[tuple[str, str], str]:
    """Restore each market: ``checkpoint``, ``offline`` (rebuilt) or ``cold``; return how each started."""
    how: dict[tuple[str, str], str] = {}
    store = None
    for exchange, symbol in markets:
        started = "cold"
        if checkpointer is not None:
            try:
                cp = checkpointer.load(exchange, symbol)
                if cp is not None:
                    pipeline.install(state_from_checkpoint(pipeline, cp))
                    started = "checkpoint"
            except InputError as error:
                log.warning("checkpoint_unusable", exchange=exchange, symbol=symbol, error=str(error))
                pipeline.markets.pop((exchange, symbol), None)
        if started == "cold" and offline_store is not None:
            try:
                if store is None:
                    store = offline_store() if callable(offline_store) else offline_store
                if rebuild_from_offline(pipeline, store, exchange, symbol) is not None:
                    started = "offline"
            except Exception as error:  # noqa: BLE001 - a store that is down means a cold start, not a crash
                log.warning("offline_rebuild_failed", exchange=exchange, symbol=symbol, error=repr(error))
                pipeline.markets.pop((exchange, symbol), None)
        if started == "cold":
            pipeline.market(exchange, symbol)
        log.info("market_started", exchange=exchange, symbol=symbol, started=started)
        how[(exchange, symbol)] = started
    return how
