"""Source hot paths beside the common way of writing them, measured in the same run.

    .venv/bin/python -m bench.sources [--quick]

Rows:
- Kraken v2 ``trade`` messages (50 trades each, the REST file's real trades as WS v2 JSON):
  ``KrakenSource.handle`` (msgspec typed decode into exact Decimals, id-gap check, metrics)
  vs ``json.loads(parse_float=Decimal)`` + dict access (same exact output) and vs plain
  ``json.loads`` with floats (not exact).
- Kraken ``book`` updates with the CRC32 checksum verified on every message (the real
  capture's snapshot, then its updates over and over): ``KrakenSource.handle`` on a sorted
  book vs a dict book sorted on every checksum.
- Replay of the 500,000 real ES ticks: ``ReplaySource.batches()`` at max speed vs iterating
  the importer directly (the replay's overhead).
- ``TradeFlow.add_values`` (bounded window state) per trade.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from decimal import Decimal
from pathlib import Path

from rtml_core.book import TradeFlow
from rtml_core.ingest import read_trades
from rtml_core.schemas import Trade
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.kraken import KrakenSource
from rtml_stream.sources.replay import ReplaySource

ROOT = Path(__file__).resolve().parents[1]
TICKS = ROOT / "data" / "es_futures_ticks_2013-09.csv.gz"
KRAKEN_REST = ROOT / "data" / "kraken_xbtusdt_trades_rest.json"
KRAKEN_BOOK = ROOT / "tests" / "fixtures" / "kraken_book_v2_capture.jsonl"


def _trade_messages(repeat: int) -> list[bytes]:
    """Real trades as Kraken v2 messages, ids renumbered so the repeats stay sequential."""
    rows = json.loads(KRAKEN_REST.read_text())["result"]["XBTUSDT"]
    messages = []
    next_id = 1
    for _ in range(repeat):
        for start in range(0, len(rows), 50):
            items = []
            for price, qty, when, side, _kind, _misc, _id in rows[start : start + 50]:
                stamp = (
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(when)))
                    + f".{int(when % 1 * 1e6):06d}Z"
                )
                items.append(
                    f'{{"symbol":"BTC/USDT","side":"{"buy" if side == "b" else "sell"}","price":{price},'
                    f'"qty":{qty},"ord_type":"limit","trade_id":{next_id},"timestamp":"{stamp}"}}'
                )
                next_id += 1
            messages.append(
                ('{"channel":"trade","type":"update","data":[' + ",".join(items) + "]}").encode()
            )
    return messages


def _parse_ns(text: str) -> int:
    from rtml_stream.sources.base import parse_rfc3339_ns

    return parse_rfc3339_ns(text)


def _peer_trades_exact(messages: list[bytes]) -> int:
    count = 0
    for raw in messages:
        message = json.loads(raw, parse_float=Decimal)
        if message.get("channel") != "trade":
            continue
        for item in message["data"]:
            Trade(
                "kraken",
                item["symbol"].replace("/", "-"),
                item["trade_id"],
                _parse_ns(item["timestamp"]),
                item["price"],
                item["qty"],
                item["side"],
            )
            count += 1
    return count


def _peer_trades_float(messages: list[bytes]) -> int:
    count = 0
    for raw in messages:
        message = json.loads(raw)
        for item in message["data"]:
            (
                item["symbol"],
                item["trade_id"],
                item["timestamp"],
                float(item["price"]),
                float(item["qty"]),
            )
            count += 1
    return count


async def _ours(source: KrakenSource, messages: list[bytes]) -> int:
    count = 0
    for raw in messages:
        count += len(await source.handle(raw))
    return count


def _book_messages(repeat: int) -> list[bytes]:
    lines = KRAKEN_BOOK.read_text().splitlines()
    snapshot, updates = lines[2], lines[5:8]
    return [snapshot.encode()] + [u.encode() for _ in range(repeat) for u in [snapshot, *updates]][
        1:
    ]


def _peer_book(messages: list[bytes]) -> int:
    """The common way: dict book, sorted for every checksum, str(float) digits (Decimal kept exact)."""
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    verified = 0
    for raw in messages:
        message = json.loads(raw, parse_float=Decimal)
        data = message["data"][0]
        if message["type"] == "snapshot":
            bids.clear()
            asks.clear()
        for side, levels in ((bids, data["bids"]), (asks, data["asks"])):
            for level in levels:
                if level["qty"] == 0:
                    side.pop(level["price"], None)
                else:
                    side[level["price"]] = level["qty"]
        for side, reverse in ((bids, True), (asks, False)):
            for price in sorted(side, reverse=reverse)[10:]:
                del side[price]
        text = "".join(
            f"{p:f}".replace(".", "").lstrip("0") + f"{q:f}".replace(".", "").lstrip("0")
            for p, q in [*sorted(asks.items())[:10], *sorted(bids.items(), reverse=True)[:10]]
        )
        verified += zlib.crc32(text.encode()) == data["checksum"]
    return verified


def _timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, a smoke run")
    args = parser.parse_args(argv)
    trade_repeat, book_repeat, tick_limit, flow_n = (
        (2, 50, 50_000, 50_000) if args.quick else (20, 2_000, 500_000, 1_000_000)
    )
    rows: list[tuple[str, str, float, str]] = []

    messages = _trade_messages(trade_repeat)
    source = KrakenSource(["BTC-USDT"], channels=("trade",), backfill=None, metrics=StreamMetrics())
    seconds, count = _timed(lambda: asyncio.run(_ours(source, messages)))
    rows.append(
        ("kraken trade msgs", "rtml KrakenSource.handle (exact)", count / seconds, "trades/s")
    )
    seconds, count = _timed(lambda: _peer_trades_exact(messages))
    rows.append(
        ("kraken trade msgs", "json.loads(Decimal) + dicts (exact)", count / seconds, "trades/s")
    )
    seconds, count = _timed(lambda: _peer_trades_float(messages))
    rows.append(
        ("kraken trade msgs", "json.loads floats, no Trade (inexact)", count / seconds, "trades/s")
    )

    books = _book_messages(book_repeat)
    book_source = KrakenSource(
        ["BTC-USD"], channels=("book",), backfill=None, metrics=StreamMetrics()
    )
    book_source._has_snapshot.add(
        "BTC-USD"
    )  # every message is verified; none triggers a resubscribe
    seconds, _ = _timed(lambda: asyncio.run(_ours(book_source, books)))
    failures = book_source.metrics.total("checksum_failures")
    rows.append(
        (
            "kraken book + CRC32",
            f"rtml KrakenSource.handle ({failures:.0f} failures)",
            len(books) / seconds,
            "msgs/s",
        )
    )
    seconds, verified = _timed(lambda: _peer_book(books))
    rows.append(
        (
            "kraken book + CRC32",
            f"dict book, sort per msg ({len(books) - verified} failures)",
            len(books) / seconds,
            "msgs/s",
        )
    )

    async def replay() -> int:
        total = 0
        source = ReplaySource.from_file(TICKS, "ticks-csv", symbol="ES-USD", preset="mlfinpy-ticks")
        async for batch in source.batches():
            total += len(batch)
            if total >= tick_limit:
                await source.close()
        return total

    seconds, count = _timed(lambda: asyncio.run(replay()))
    rows.append(
        ("replay ES ticks", "ReplaySource.batches() max speed", count / seconds, "trades/s")
    )

    def plain() -> int:
        total = 0
        for _trade in read_trades(TICKS, "ticks-csv", symbol="ES-USD", preset="mlfinpy-ticks"):
            total += 1
            if total >= tick_limit:
                break
        return total

    seconds, count = _timed(plain)
    rows.append(("replay ES ticks", "importer loop alone (no source)", count / seconds, "trades/s"))

    flow = TradeFlow(window_ns=60_000_000_000)
    add = flow.add_values

    def flow_run() -> int:
        for i in range(flow_n):
            add(i * 1_000_000, 100.0 + (i % 13) * 0.01, 0.5, "buy" if i % 3 else "sell")
        return flow_n

    seconds, count = _timed(flow_run)
    rows.append(
        (
            "trade flow 60s window",
            f"TradeFlow.add_values (state {len(flow)} entries)",
            count / seconds,
            "trades/s",
        )
    )

    width = max(len(r[1]) for r in rows)
    print(f"{'case':<22} {'implementation':<{width}} {'rate':>14}")
    for case, name, rate, unit in rows:
        print(f"{case:<22} {name:<{width}} {rate:>12,.0f} {unit}")


if __name__ == "__main__":
    main()
