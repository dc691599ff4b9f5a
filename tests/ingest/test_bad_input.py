"""Bad input names the file, the line and the problem; the CLI exits 2 and writes nothing."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.errors import InputError
from rtml_core.ingest import read_candles, read_trades
from tests.ingest.realdata import BTC_30M, ES_TICKS, KRAKEN_TRADES, write_binance_trades


def _es_head(path: Path, lines: int = 200) -> list[str]:
    with gzip.open(ES_TICKS, "rt") as handle:
        head = list(itertools.islice(handle, lines))
    path.write_text("".join(head))
    return head


def _error(call) -> InputError:
    with pytest.raises(InputError) as caught:
        call()
    return caught.value


def test_kraken_json_syntax_error_names_its_line(tmp_path):
    lines = KRAKEN_TRADES.read_text().splitlines(keepends=True)
    at = next(i for i in range(40, 60) if lines[i].rstrip().endswith(","))
    lines[at] = lines[at].replace(",", "", 1)  # drop a comma inside a trade
    path = tmp_path / "broken.json"
    path.write_text("".join(lines))
    error = _error(lambda: list(read_trades(path, "kraken-rest")))
    assert error.source == str(path) and error.line in (at + 1, at + 2) and "JSON" in error.problem


def test_kraken_bad_price_names_the_line_of_its_trade(tmp_path):
    text = KRAKEN_TRADES.read_text()
    position = text.index('"105383.80000"')  # the third trade's price
    path = tmp_path / "bad_price.json"
    path.write_text(text[:position] + '"105383.8O000"' + text[position + 14 :])
    error = _error(lambda: list(read_trades(path, "kraken-rest")))
    assert error.line == text.count("\n", 0, position) + 1 - 1  # the line of the trade's '['
    assert "trade 3" in error.problem and "price" in error.problem
    assert str(error).startswith(f"{path}, line {error.line}: ")


def test_missing_column(tmp_path):
    path = tmp_path / "ticks.csv"
    head = _es_head(path)
    path.write_text("DateTime,Bid,Volume\n" + "".join(head[1:]))
    error = _error(lambda: list(read_trades(path, "ticks-csv", symbol="ES-USD")))
    assert error.line == 1 and "missing column for price" in error.problem
    error = _error(
        lambda: list(
            read_trades(
                _es_copy(tmp_path), "ticks-csv", symbol="ES-USD", mapping={"price": "Close"}
            )
        )
    )
    assert "missing column 'Close'" in error.problem


def _es_copy(tmp_path: Path) -> Path:
    path = tmp_path / "es.csv"
    _es_head(path)
    return path


def test_malformed_rows_name_their_line(tmp_path):
    path = tmp_path / "ticks.csv"
    head = _es_head(path)
    head[57] = "2013-09-01 17:00:01.xyz,1640.25,3\n"
    head[120] = "2013-09-01 17:00:02.000,-1640.25,3\n"
    path.write_text("".join(head))
    error = _error(lambda: list(read_trades(path, "ticks-csv", symbol="ES-USD")))
    assert (error.line, error.source) == (58, str(path)) and "time" in error.problem
    head[57] = "2013-09-01 17:00:01.100,1640.25,3\n"
    path.write_text("".join(head))
    error = _error(lambda: list(read_trades(path, "ticks-csv", symbol="ES-USD")))
    assert error.line == 121 and "price" in error.problem
    head[120] = "2013-09-01 17:00:02.000,1640.25\n"
    path.write_text("".join(head))
    error = _error(lambda: list(read_trades(path, "ticks-csv", symbol="ES-USD")))
    assert error.line == 121 and "expected 3 columns" in error.problem


def test_binance_bad_flag_and_short_row(tmp_path):
    path = tmp_path / "BTCUSDT-trades-2025-11-10.csv"
    write_binance_trades(path, header=True, micros=False)
    lines = path.read_text().splitlines(keepends=True)
    lines[6] = lines[6].replace(",True,True", ",maybe,True").replace(",False,True", ",maybe,True")
    path.write_text("".join(lines))
    error = _error(lambda: list(read_trades(path, "binance-trades")))
    assert error.line == 7 and "is_buyer_maker" in error.problem
    lines[6] = "1,2,3\n"
    path.write_text("".join(lines))
    assert _error(lambda: list(read_trades(path, "binance-trades"))).line == 7


@pytest.mark.parametrize("symbol", ["BTC$-USD", "BTC/US D", "ÄBC-USD", "BTC-USD;DROP"])
def test_odd_symbol_characters(symbol):
    error = _error(
        lambda: list(itertools.islice(read_trades(ES_TICKS, "ticks-csv", symbol=symbol), 1))
    )
    assert error.source == str(ES_TICKS) and "symbol" in error.problem


def test_odd_symbol_in_a_symbol_column_names_the_line(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(
        "time,price,size,symbol\n1378054800083,1640.25,8,ES-USD\n1378054800084,1640.25,1,E$-USD\n"
    )
    error = _error(lambda: list(read_trades(path, "ticks-csv")))
    assert error.line == 3 and "E$-USD" in error.problem


def test_wrong_format_names(tmp_path):
    assert "unknown format" in _error(lambda: read_trades(KRAKEN_TRADES, "kraken")).problem
    assert "holds trades" in _error(lambda: read_candles(KRAKEN_TRADES, "kraken-rest")).problem
    # a trades file read as an OHLC reply: the rows are not OHLC rows
    error = _error(lambda: list(read_candles(KRAKEN_TRADES, "kraken-ohlc")))
    assert error.source == str(KRAKEN_TRADES) and error.line == 5
    # the ES ticks read as a Binance dump: its header has 3 columns, not 6
    error = _error(lambda: list(read_trades(ES_TICKS, "binance-trades", symbol="ES-USD")))
    assert error.line == 1 and "expected 6 columns" in error.problem


def test_candle_time_off_its_timeframe(tmp_path):
    error = _error(
        lambda: list(read_candles(BTC_30M, "candles-csv", timeframe="1h", symbol="BTC-USD"))
    )
    assert error.line == 3 and "1h boundary" in error.problem


# -- the command line --------------------------------------------------------------------


def _run(args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def test_cli_bad_file_exits_2_with_file_and_line_and_writes_nothing(tmp_path):
    path = tmp_path / "ticks.csv"
    head = _es_head(path)
    head[150] = "2013-09-01 17:00:02.000,16x0.25,3\n"
    path.write_text("".join(head))
    out = tmp_path / "out.csv"
    result = _run(["candles", path, "--format", "ticks-csv", "--timeframe", "1m", "--output", out])
    assert result.exit_code == 2
    assert (
        result.stderr.strip() == f"error: {path}, line 151: price '16x0.25' is not a decimal number"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ticks.csv"]  # no output, no temp file


def test_cli_failure_keeps_an_earlier_output_untouched(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("earlier result\n")
    result = _run(["candles", KRAKEN_TRADES, "--format", "binance-trades", "--output", out])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {KRAKEN_TRADES}")
    assert out.read_text() == "earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--format", "kraken"], "unknown format 'kraken'"),
        (["--format", "kraken-rest", "--timeframe", "7x"], "timeframe '7x'"),
        (["--format", "kraken-rest", "--symbol", "BTC!USD"], "BTC!USD"),
        (["--format", "kraken-ohlc"], "holds candles"),
    ],
)
def test_cli_bad_options(tmp_path, args, needle):
    out = tmp_path / "out.csv"
    result = _run(["candles", KRAKEN_TRADES, *args, "--output", out])
    assert result.exit_code == 2 and needle in result.stderr and result.stderr.startswith("error: ")
    assert not out.exists()


def test_cli_missing_input_file(tmp_path):
    result = _run(
        ["candles", tmp_path / "nope.csv", "--format", "ticks-csv", "--output", tmp_path / "o.csv"]
    )
    assert result.exit_code == 2 and "nope.csv" in result.stderr


def test_undecodable_bytes_and_truncated_gzip_name_their_line(tmp_path):
    path = tmp_path / "latin1.csv"
    head = _es_head(tmp_path / "es.csv", 40)
    path.write_bytes(
        "".join(head[:30]).encode()
        + b"2013-09-01 17:00:01.000,1640.25,3\xff\n"
        + "".join(head[30:]).encode()
    )
    error = _error(lambda: list(read_trades(path, "ticks-csv", symbol="ES-USD")))
    assert error.line == 31 and "UTF-8" in error.problem
    truncated = tmp_path / "ticks.csv.gz"
    truncated.write_bytes(ES_TICKS.read_bytes()[:50_000])
    error = _error(lambda: list(read_trades(truncated, "ticks-csv", symbol="ES-USD")))
    assert error.source == str(truncated) and error.line > 1000 and "cannot read" in error.problem


def test_cli_unwritable_output(tmp_path):
    result = _run(
        ["candles", KRAKEN_TRADES, "--format", "kraken-rest", "--output", tmp_path / "no" / "o.csv"]
    )
    assert result.exit_code == 2 and "cannot write" in result.stderr


def test_csv_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "ticks.csv"
    head = _es_head(path, 20)
    head[9] = '2013-09-01 17:00:00.500,"1640.25' + "9" * 200_000 + "\n"
    path.write_text("".join(head))
    error = _error(lambda: list(read_trades(path, "ticks-csv", symbol="ES-USD")))
    assert error.source == str(path) and error.line >= 10 and "not valid CSV" in error.problem
