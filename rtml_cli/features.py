"""``rtml features``: list the feature set, or compute it over a candle CSV (batch or stream)."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import click
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.features.batch import features_from_columns, prepare_candles
from rtml_core.features.definitions import DEFAULT_FEATURE_SET, FeatureSet
from rtml_core.features.incremental import FeatureEngine


def format_value(value: float) -> str:
    """Shortest text that reads back as the same float (``repr``); empty for NaN."""
    return "" if value != value else repr(float(value))


def read_candle_csv(path: Path) -> tuple[pd.DataFrame, dict]:
    """The CSV as text columns plus its checked numeric columns (errors name the file line)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read CSV: {error}", source=str(path)) from error
    frame.columns = [str(name).strip().lower() for name in frame.columns]
    columns = prepare_candles(frame, source=str(path), line_offset=2)
    return frame, columns


def batch_rows(frame: pd.DataFrame, columns: dict, feature_set: FeatureSet) -> list[list[float]]:
    result = features_from_columns(columns, frame["time"], feature_set)
    return result[feature_set.names].to_numpy(dtype=float).tolist()


def stream_rows(columns: dict, feature_set: FeatureSet) -> list[list[float]]:
    engine = FeatureEngine(feature_set)
    names = feature_set.names
    rows = []
    for row in zip(
        columns["time_ns"].tolist(),
        columns["open"].tolist(),
        columns["high"].tolist(),
        columns["low"].tolist(),
        columns["close"].tolist(),
        columns["volume"].tolist(),
        columns["vwap"].tolist(),
    ):
        values = engine.update_values(*row)
        rows.append([values[name] for name in names])
    return rows


def write_features_csv(path: Path, times: list[str], names: list[str], rows: list[list[float]]) -> None:
    """Write atomically: a temp file in the same folder, renamed over ``path`` when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["time", *names])
            for time, values in zip(times, rows):
                writer.writerow([time, *map(format_value, values)])
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def list_features(feature_set: FeatureSet) -> str:
    width = max(len(name) for name in feature_set.names)
    lines = [f"feature set {feature_set.version}: {len(feature_set)} features, warm-up {feature_set.warmup} candles", ""]
    lines.append(f"{'feature'.ljust(width)}  warm-up  definition")
    for spec in feature_set:
        lines.append(f"{spec.name.ljust(width)}  {spec.warmup:>7}  {spec.description}")
    return "\n".join(lines)


@click.command("features")
@click.argument("input_csv", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Output CSV (time + one column per feature).")
@click.option("--mode", type=click.Choice(["batch", "stream"]), default="batch", show_default=True,
              help="batch: pandas-ta over the whole file; stream: the incremental engine, one candle at a time.")
@click.option("--list", "show_list", is_flag=True, help="Print each feature with its definition and warm-up length.")
def features(input_csv: Path | None, output: Path | None, mode: str, show_list: bool) -> None:
    """Compute the feature set over INPUT_CSV (columns time,open,high,low,close,volume[,vwap])."""
    feature_set = DEFAULT_FEATURE_SET
    if show_list:
        click.echo(list_features(feature_set))
        return
    if input_csv is None or output is None:
        raise click.UsageError("give INPUT_CSV and --output OUT.csv (or --list)")
    frame, columns = read_candle_csv(input_csv)
    if mode == "batch":
        rows = batch_rows(frame, columns, feature_set)
    else:
        rows = stream_rows(columns, feature_set)
    write_features_csv(output, frame["time"].tolist(), feature_set.names, rows)
    click.echo(f"{len(rows)} rows, {len(feature_set)} features (set {feature_set.version}, {mode}) -> {output}")
