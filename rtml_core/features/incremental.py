"""Incremental engine: one closed candle in, the whole feature set out, O(window) state.

Values equal ``compute_features`` (pandas-ta over the full history) for every row, warm-up
rows included. State can be snapshotted to bytes and restored in another process.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import msgspec
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.features.batch import prepare_candles
from rtml_core.features.definitions import DEFAULT_FEATURE_SET, FeatureSet
from rtml_core.features.indicators import KINDS, REPLAY_HORIZON, Node
from rtml_core.schemas import Candle

SNAPSHOT_FORMAT = 2


class _Snapshot(msgspec.Struct, frozen=True):
    format: int
    feature_set_version: str
    count: int
    last_time_ns: int | None
    nodes: list  # each node's exact state
    tail: list  # the last REPLAY_HORIZON candles (open, high, low, close, volume, vwap)


_INF = math.inf


def _refuse(time_ns: int, *values: float) -> None:
    names = ("open", "high", "low", "close", "volume")
    shown = ", ".join(f"{name}={value!r}" for name, value in zip(names, values))
    raise InputError(
        f"candle at {time_ns} ns: prices must be finite and > 0, volume finite and >= 0 ({shown})",
        source="stream",
    )


class FeatureEngine:
    """Incremental features for one market (exchange, symbol, timeframe).

    ``update``/``update_values`` commit a closed candle and return ``{feature: value}`` (NaN
    during warm-up); ``peek`` previews an open candle without committing it.
    """

    def __init__(self, feature_set: FeatureSet = DEFAULT_FEATURE_SET):
        self.feature_set = feature_set
        keys: list[tuple] = []
        nodes: list[Node] = []
        offsets: dict[tuple, int] = {}
        width = 0
        for spec in feature_set:
            if spec.node_key not in offsets:
                kind = KINDS[spec.indicator]
                offsets[spec.node_key] = width
                width += len(kind.outputs)
                keys.append(spec.node_key)
                nodes.append(kind.node(**spec.params))
        self._nodes = nodes
        self._names = tuple(feature_set.names)
        self._pick = tuple(
            offsets[spec.node_key] + KINDS[spec.indicator].outputs.index(spec.output) for spec in feature_set
        )
        if self._pick == tuple(range(width)):
            self._pick = None  # features in node order: no reordering per update
        self._bind()
        self._tail: deque[tuple] = deque(maxlen=REPLAY_HORIZON)
        self.count = 0
        self.last_time_ns: int | None = None

    def _bind(self) -> None:
        self._updates = [node.update for node in self._nodes]

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def version(self) -> str:
        return self.feature_set.version

    def _check_time(self, time_ns: int) -> None:
        last = self.last_time_ns
        if last is not None and time_ns <= last:
            raise InputError(
                f"candle at {time_ns} ns is not after the last committed candle at {last} ns", source="stream"
            )

    def update_values(
        self,
        time_ns: int,
        open: float,  # noqa: A002
        high: float,
        low: float,
        close: float,
        volume: float,
        vwap: float | None = None,
    ) -> dict[str, float]:
        """Commit one closed candle (floats) and return every feature's value."""
        if self.last_time_ns is not None and time_ns <= self.last_time_ns:
            self._check_time(time_ns)
        vwap = _validated_vwap(time_ns, open, high, low, close, volume, vwap)
        self._tail.append((open, high, low, close, volume, vwap))
        flat: list[float] = []
        extend = flat.extend
        for update in self._updates:
            extend(update(open, high, low, close, volume, vwap))
        self.last_time_ns = time_ns
        self.count += 1
        return self._named(flat)

    def update(self, candle: Candle) -> dict[str, float]:
        """Commit one closed ``Candle`` (Decimal prices are converted to float once, here)."""
        return self.update_values(*_candle_floats(candle))

    def peek_values(
        self,
        time_ns: int,
        open: float,  # noqa: A002
        high: float,
        low: float,
        close: float,
        volume: float,
        vwap: float | None = None,
    ) -> dict[str, float]:
        """The values ``update_values`` would return for this candle; commits nothing."""
        self._check_time(time_ns)
        vwap = _validated_vwap(time_ns, open, high, low, close, volume, vwap)
        flat: list[float] = []
        for node in self._nodes:
            flat.extend(node.peek(open, high, low, close, volume, vwap))
        return self._named(flat)

    def _named(self, flat: list[float]) -> dict[str, float]:
        """The nodes' flat outputs as ``name -> value`` in the feature set's order."""
        if self._pick is None:
            return dict(zip(self._names, flat))
        return dict(zip(self._names, [flat[i] for i in self._pick]))

    def peek(self, candle: Candle) -> dict[str, float]:
        """Preview an open (still forming) candle without committing it."""
        return self.peek_values(*_candle_floats(candle))

    def warm_from(self, candles: pd.DataFrame) -> dict[str, float] | None:
        """Feed stored candles (columns time, open, high, low, close, volume[, vwap]) in order;
        return the values of the last one. Rebuilds exact state from the full history."""
        columns = prepare_candles(candles)
        last = None
        rows = zip(
            columns["time_ns"].tolist(),
            columns["open"].tolist(),
            columns["high"].tolist(),
            columns["low"].tolist(),
            columns["close"].tolist(),
            columns["volume"].tolist(),
            columns["vwap"].tolist(),
        )
        for row in rows:
            last = self.update_values(*row)
        return last

    def run(self, rows: Iterable[tuple]) -> list[dict[str, float]]:
        """``update_values`` over rows of (time_ns, open, high, low, close, volume, vwap)."""
        return [self.update_values(*row) for row in rows]

    def snapshot(self) -> bytes:
        """The engine's state as bytes (msgpack): restore it with ``FeatureEngine.restore``."""
        return msgspec.msgpack.encode(
            _Snapshot(
                format=SNAPSHOT_FORMAT,
                feature_set_version=self.feature_set.version,
                count=self.count,
                last_time_ns=self.last_time_ns,
                nodes=[node.state() for node in self._nodes],
                tail=list(self._tail),
            )
        )

    @classmethod
    def restore(cls, data: bytes, feature_set: FeatureSet = DEFAULT_FEATURE_SET) -> FeatureEngine:
        """An engine continuing exactly where the snapshotted one stopped."""
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.DecodeError as error:
            raise InputError(f"not a feature engine snapshot: {error}", source="snapshot") from error
        if snap.format != SNAPSHOT_FORMAT:
            raise InputError(f"snapshot format {snap.format} is not {SNAPSHOT_FORMAT}", source="snapshot")
        if snap.feature_set_version != feature_set.version:
            raise InputError(
                f"snapshot is of feature set {snap.feature_set_version}, not {feature_set.version}", source="snapshot"
            )
        engine = cls(feature_set)
        if len(snap.nodes) != len(engine._nodes):
            raise InputError("snapshot does not match the feature set's indicators", source="snapshot")
        tail = [tuple(row) for row in snap.tail]
        for node, state in zip(engine._nodes, snap.nodes):
            node.load(state, tail)
        engine._bind()
        engine._tail.extend(tail)
        engine.count = snap.count
        engine.last_time_ns = snap.last_time_ns
        return engine

    from_snapshot = restore


def _validated_vwap(time_ns: int, open: float, high: float, low: float, close: float,  # noqa: A002
                    volume: float, vwap: float | None) -> float:
    """Refuse a non-finite or non-positive candle; the vwap to use ((h+l+c)/3 when absent)."""
    if not (0.0 < open < _INF and 0.0 < high < _INF and 0.0 < low < _INF and 0.0 < close < _INF
            and 0.0 <= volume < _INF):
        _refuse(time_ns, open, high, low, close, volume)
    if vwap is None or not vwap > 0 or vwap == math.inf:
        return (high + low + close) / 3.0
    return vwap


def _candle_floats(candle: Candle) -> tuple:
    """A ``Candle``'s fields as the float arguments of ``update_values``/``peek_values``."""
    return (candle.start_ns, float(candle.open), float(candle.high), float(candle.low), float(candle.close),
            float(candle.volume), None if candle.vwap is None else float(candle.vwap))
