"""``microstructure_table`` records, per (day, market), the order-book group the sidecar's pipeline
logged: here the real Kraken XBT/USDT trades through the real pipeline (no book: the flow values
only), one row per closed candle, each as of its close."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd

from rtml_assets.features.microstructure import build_microstructure_asset
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import market_day_partitions
from rtml_assets.resources import OfflineStoreResource
from rtml_core.features.microstructure import MICROSTRUCTURE
from rtml_core.ingest import read_trades
from rtml_core.stores.offline import open_offline_store
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import feature_frame
from tests.conftest import DATA

TRADES = DATA / "kraken_xbtusdt_trades_rest.json"
MARKET = MarketSource(exchange="kraken", symbol="BTC-USDT", timeframe="1m", source=TRADES, format="kraken-rest",
                      first_day=dt.date(2025, 11, 10), last_day=dt.date(2025, 11, 11))


def test_a_day_of_logged_rows_is_one_row_per_candle_as_of_its_close(sqlite_url):
    trades = list(read_trades(TRADES, "kraken-rest", exchange="kraken", symbol="BTC-USDT"))
    pipeline = Pipeline(("1m",), fill_gaps=False)
    pipeline.on_trades(trades)
    out = pipeline.drain()
    store = open_offline_store(sqlite_url)
    store.write_candles(out.candles)
    store.register_feature_set(MICROSTRUCTURE.version, list(MICROSTRUCTURE.names), MICROSTRUCTURE.to_json())
    store.write_features(feature_frame(out.microstructure, MICROSTRUCTURE.names), exchange="kraken",
                         symbol="BTC-USDT", timeframe="1m", feature_set_version=MICROSTRUCTURE.version)
    logged = store.read_features("kraken", "BTC-USDT", "1m", MICROSTRUCTURE.version)
    store.close()
    times = np.array([trade.time_ns for trade in trades])
    for row in logged.itertuples():
        end = int(row.time.value) + 60 * 1_000_000_000
        in_window = int(((times > end - 60 * 1_000_000_000) & (times < end)).sum())
        assert row.ms_trade_count == in_window  # the flow window ending at the close, closing trade not in
        assert np.isnan(row.ms_spread_bps)  # no book in a REST trade file

    partitions = market_day_partitions([MARKET])
    asset = build_microstructure_asset([MARKET], partitions, dg.AssetSpec("validated_candles",
                                                                          partitions_def=partitions))
    result = dg.materialize([asset], partition_key="2025-11-10|kraken_BTC-USDT_1m",
                            resources={"offline_store": OfflineStoreResource(url=sqlite_url)})
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    first_day = logged[logged["time"] < pd.Timestamp("2025-11-11", tz="UTC")]
    assert metadata["rows"].value == len(first_day) > 100
    assert metadata["feature_set_version"].value == MICROSTRUCTURE.version
    assert f"| {len(first_day)} | 0 |" in metadata["markets"].value  # rows, none with a book
