"""Bad candle input is refused by row; ``rtml features`` in both modes writes the same file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.errors import InputError
from rtml_core.features import DEFAULT_FEATURE_SET, compute_features
from tests.features.realdata import real_candles


def _frame(rows=8):
    candles = real_candles("btc_usd_30m_2017-2019.csv").iloc[:rows].copy()
    return candles.reset_index(drop=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["volume"]), "missing column"),
        (lambda f: f.assign(time=f["time"].iloc[[0, 1, 2, 4, 3, 5, 6, 7]].to_numpy()), "row 4: time .* earlier"),
        (lambda f: f.assign(time=f["time"].iloc[[0, 1, 2, 3, 3, 5, 6, 7]].to_numpy()), "row 4: time .* repeats"),
        (lambda f: f.assign(close=f["close"].astype(object).where(f.index != 5, "abc")), "row 5: close is not a finite number"),
        (lambda f: f.assign(low=f["low"].where(f.index != 6, -1.0)), "row 6: low must be positive"),
        (lambda f: f.assign(volume=f["volume"].where(f.index != 2, -3.0)), "row 2: volume must not be negative"),
    ],
)
def test_bad_frames_name_the_row(change, message):
    with pytest.raises(InputError, match=message):
        compute_features(change(_frame()))


def _write_csv(path, frame):
    out = frame.assign(time=frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"), note="ignored")
    out.to_csv(path, index=False)


def test_cli_batch_and_stream_write_the_same_file(tmp_path):
    source = tmp_path / "candles.csv"
    _write_csv(source, real_candles("eth_usd_30m_2017-2019.csv").iloc[:1_500])
    runner = CliRunner()
    for mode in ("batch", "stream"):
        result = runner.invoke(cli, ["features", str(source), "--output", str(tmp_path / f"{mode}.csv"), "--mode", mode])
        assert result.exit_code == 0, result.output
    batch_bytes = (tmp_path / "batch.csv").read_bytes()
    assert batch_bytes == (tmp_path / "stream.csv").read_bytes()
    written = pd.read_csv(tmp_path / "batch.csv")
    assert list(written.columns) == ["time", *DEFAULT_FEATURE_SET.names]
    assert len(written) == 1_500
    assert written["time"].iloc[0] == "2017-10-01T00:00:00Z"
    expected = compute_features(real_candles("eth_usd_30m_2017-2019.csv").iloc[:1_500])
    for name in DEFAULT_FEATURE_SET.names:  # repr round-trips every float exactly
        assert np.array_equal(written[name].to_numpy(float), expected[name].to_numpy(float), equal_nan=True), name


def test_cli_bad_input_names_the_line_and_leaves_no_output(tmp_path):
    source = tmp_path / "candles.csv"
    frame = real_candles("btc_usd_30m_2017-2019.csv").iloc[:50].copy()
    frame.loc[30, "time"] = frame.loc[29, "time"]
    _write_csv(source, frame)
    output = tmp_path / "out.csv"
    for mode in ("batch", "stream"):
        result = CliRunner().invoke(cli, ["features", str(source), "--output", str(output), "--mode", mode])
        assert result.exit_code == 2
        assert f"{source}, line 32: time" in result.output
        assert "repeats" in result.output
        assert not output.exists()
        assert list(tmp_path.iterdir()) == [source]


def test_cli_non_numeric_value(tmp_path):
    source = tmp_path / "candles.csv"
    source.write_text("time,open,high,low,close,volume\n1,1,2,0.5,1.5,3\n2,1,2,x,1.5,3\n")
    result = CliRunner().invoke(cli, ["features", str(source), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 2
    assert "line 3: low is not a finite number: 'x'" in result.output


def test_cli_list_prints_definitions_and_warmups():
    result = CliRunner().invoke(cli, ["features", "--list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert DEFAULT_FEATURE_SET.version in lines[0]
    for spec in DEFAULT_FEATURE_SET:
        line = next(line for line in lines if line.startswith(spec.name + " "))
        assert f" {spec.warmup} " in line and spec.description in line
