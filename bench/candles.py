"""``rtml candles`` on the 500,000 real ES ticks, beside pandas ``resample('1min').ohlc()``.

    .venv/bin/python -m bench.candles [--quick] [--repeat N] [--timeframe 1m]

Rows: the whole command in-process (read gz CSV -> exact Decimal candles -> CSV), its parts,
the command as a subprocess (interpreter start included), and the peer: pandas reading the
same file and resampling float prices (not exact, no vwap/trade ids/tick rule), run here in
the same process. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rtml_core.candles import build_candles, write_candles_csv
from rtml_core.ingest import read_trades

ROOT = Path(__file__).resolve().parents[1]
TICKS = ROOT / "data" / "es_futures_ticks_2013-09.csv.gz"


def _best(repeat: int, run) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _pandas_peer(path: Path, rule: str, out: Path) -> int:
    import pandas as pd

    frame = pd.read_csv(path, parse_dates=["DateTime"], index_col="DateTime")
    bars = frame["Price"].resample(rule).ohlc()
    bars["volume"] = frame["Volume"].resample(rule).sum()
    bars = bars.dropna()
    bars.to_csv(out)
    return len(bars)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 ticks, one run (a smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeframe", default="1m")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    import pandas as pd  # imported before any timing, so the peer is not charged for it

    rule = {"s": "s", "m": "min", "h": "h", "d": "D"}[args.timeframe[-1]]
    rule = args.timeframe[:-1] + rule

    with tempfile.TemporaryDirectory(prefix="rtml-bench-candles-") as tmp:
        work = Path(tmp)
        source = TICKS
        if args.quick:
            source = work / "ticks_50k.csv.gz"
            with gzip.open(TICKS, "rt") as src, gzip.open(source, "wt") as dst:
                dst.writelines(itertools.islice(src, 50_001))
        ticks = sum(1 for _ in gzip.open(source, "rt")) - 1
        out = work / "candles.csv"

        def whole() -> None:
            trades = read_trades(source, "ticks-csv", default_symbol="ES-USD")
            write_candles_csv(build_candles(trades, args.timeframe), out)

        parsed: list = []

        def parse() -> None:
            parsed[:] = list(read_trades(source, "ticks-csv", default_symbol="ES-USD"))

        rows: list = []
        results = [
            ("rtml candles, in-process (gz CSV -> exact candles -> CSV)", _best(repeat, whole))
        ]
        results.append(("  part: parse ticks to Trade (Decimal)", _best(repeat, parse)))
        results.append(
            (
                "  part: candle builder on parsed trades",
                _best(
                    repeat,
                    lambda: rows.__setitem__(slice(None), build_candles(parsed, args.timeframe)),
                ),
            )
        )
        command = [
            sys.executable,
            "-m",
            "rtml_cli",
            "candles",
            str(source),
            "--format",
            "ticks-csv",
            "--timeframe",
            args.timeframe,
            "--output",
            str(out),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        results.append(
            (
                "rtml candles, CLI subprocess (with interpreter start)",
                _best(
                    repeat,
                    lambda: subprocess.run(command, check=True, capture_output=True, env=env),
                ),
            )
        )
        alone = [
            sys.executable,
            "-c",
            "import sys; from rtml_cli.candles import candles; candles(sys.argv[1:])",
            *command[4:],
        ]
        results.append(
            (
                "  same, importing only its own command module",
                _best(
                    repeat, lambda: subprocess.run(alone, check=True, capture_output=True, env=env)
                ),
            )
        )
        peer_out = work / "peer.csv"
        peer_rows = [0]
        results.append(
            (
                "peer: pandas read_csv + resample().ohlc() on float64",
                _best(
                    repeat, lambda: peer_rows.__setitem__(0, _pandas_peer(source, rule, peer_out))
                ),
            )
        )
        peer = pd.read_csv(peer_out)

    print(
        f"\n{ticks:,} real ES ticks -> {len(rows):,} {args.timeframe} candles "
        f"(pandas: {peer_rows[0]:,} non-empty bars); best of {repeat}\n"
    )
    width = max(len(name) for name, _ in results)
    print(f"| {'what':<{width}} | seconds |   ticks/s |")
    print(f"|{'-' * (width + 2)}|--------:|----------:|")
    for name, seconds in results:
        print(f"| {name:<{width}} | {seconds:7.3f} | {ticks / seconds:>9,.0f} |")
    ours = pd.DataFrame(
        {
            k: [float(getattr(c, k)) for c in rows]
            for k in ("open", "high", "low", "close", "volume")
        }
    )
    same = all(
        (ours[k].to_numpy() == peer[k].to_numpy()).all() for k in ("open", "high", "low", "close")
    )
    close_volume = bool(((ours["volume"] - peer["volume"]).abs() < 1e-6).all())
    print(
        f"\nsame OHLC as pandas: {'yes' if same else 'NO'}; "
        f"same volume: {'yes' if close_volume else 'NO'}"
    )
    if not (same and close_volume):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
