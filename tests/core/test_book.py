"""OrderBook and the microstructure features, checked against values worked out by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from rtml_core.book import (
    OrderBook,
    TradeFlow,
    book_features,
    depth,
    depth_imbalance,
    microprice,
    mid_price,
    spread_bps,
    top_imbalance,
)
from rtml_core.schemas import BookLevel, BookUpdate, Trade

S = 1_000_000_000


def levels(*pairs: tuple[str, str]) -> list[BookLevel]:
    return [BookLevel(Decimal(p), Decimal(q)) for p, q in pairs]


def sample_book(depth_limit: int | None = None) -> OrderBook:
    book = OrderBook(depth_limit)
    book.apply_snapshot(
        levels(("99.0", "5"), ("100.0", "2"), ("99.5", "3")),
        levels(("102.0", "10"), ("100.5", "1"), ("101.0", "4")),
    )
    return book


def test_levels_are_sorted_best_first() -> None:
    book = sample_book()
    assert book.top_bids(3) == [
        (Decimal("100.0"), Decimal(2)),
        (Decimal("99.5"), Decimal(3)),
        (Decimal("99.0"), Decimal(5)),
    ]
    assert book.top_asks(2) == [(Decimal("100.5"), Decimal(1)), (Decimal("101.0"), Decimal(4))]
    assert book.best_bid() == (Decimal("100.0"), Decimal(2))
    assert book.best_ask() == (Decimal("100.5"), Decimal(1))
    assert len(book) == 6 and not book.is_crossed()


def test_updates_set_sizes_and_zero_removes() -> None:
    book = sample_book()
    book.apply_update(levels(("100.0", "0"), ("99.5", "7"), ("98.0", "0")), levels(("100.25", "2")))
    assert book.best_bid() == (Decimal("99.5"), Decimal(7))
    assert book.best_ask() == (Decimal("100.25"), Decimal(2))
    assert len(book.bids) == 2 and len(book.asks) == 4


def test_snapshot_replaces_everything_and_skips_zero_levels() -> None:
    book = sample_book()
    book.apply(
        BookUpdate(
            "x",
            "BTC-USD",
            0,
            tuple(levels(("50", "1"), ("49", "0"))),
            tuple(levels(("51", "2"))),
            is_snapshot=True,
        )
    )
    assert book.top_bids(5) == [(Decimal(50), Decimal(1))]
    assert book.top_asks(5) == [(Decimal(51), Decimal(2))]


def test_depth_truncation_drops_levels_beyond_the_depth_for_good() -> None:
    book = sample_book(depth_limit=2)
    assert [p for p, _ in book.top_bids(5)] == [Decimal("100.0"), Decimal("99.5")]
    assert [p for p, _ in book.top_asks(5)] == [Decimal("100.5"), Decimal("101.0")]
    dropped = book.apply_update(levels(("99.75", "1")), levels(("100.75", "2")))  # better levels
    assert dropped == ([Decimal("99.5")], [Decimal("101.0")])  # pushed beyond the depth
    assert [p for p, _ in book.top_bids(5)] == [Decimal("100.0"), Decimal("99.75")]
    book.apply_update(levels(("100.0", "0")), [])  # the exchange would send the level that enters
    assert [p for p, _ in book.top_bids(5)] == [Decimal("99.75")]
    with pytest.raises(ValueError):
        OrderBook(0)


def test_crossed_book_is_reported() -> None:
    book = sample_book()
    book.apply_update(levels(("100.5", "1")), [])
    assert book.is_crossed()


def test_book_features_by_hand() -> None:
    book = sample_book()
    assert mid_price(book) == 100.25
    assert spread_bps(book) == pytest.approx(0.5 / 100.25 * 10_000)  # 49.8753...
    assert top_imbalance(book) == pytest.approx((2 - 1) / (2 + 1))
    assert depth_imbalance(book, 2) == pytest.approx(0.0)  # (2+3) vs (1+4)
    assert depth_imbalance(book, 3) == pytest.approx((10 - 15) / 25)
    assert microprice(book) == pytest.approx(
        (100.0 * 1 + 100.5 * 2) / 3
    )  # leans to the ask: more bid size
    assert depth(book, 1) == (2.0, 1.0)
    assert depth(book, 3) == (10.0, 15.0)
    assert depth(book, 50) == (10.0, 15.0)
    features = book_features(book, levels=3)
    assert features == {
        "book_mid": 100.25,
        "book_microprice": pytest.approx(301 / 3),
        "book_spread_bps": pytest.approx(49.87531172069826),
        "book_imbalance_top": pytest.approx(1 / 3),
        "book_imbalance_3": pytest.approx(-0.2),
        "book_bid_depth_3": 10.0,
        "book_ask_depth_3": 15.0,
    }
    assert all(isinstance(v, float) for v in features.values())


def test_features_of_a_one_sided_book_are_nan() -> None:
    book = OrderBook()
    book.apply_snapshot(levels(("100", "1")), [])
    for value in (
        mid_price(book),
        spread_bps(book),
        top_imbalance(book),
        microprice(book),
        depth_imbalance(book, 5),
    ):
        assert math.isnan(value)
    assert depth(book, 5) == (1.0, 0.0)


def _trade(seconds: float, side: str, size: str, price: str) -> Trade:
    return Trade("x", "BTC-USD", 0, int(seconds * S), Decimal(price), Decimal(size), side)


def test_trade_flow_by_hand() -> None:
    flow = TradeFlow(window_ns=10 * S)
    flow.add(_trade(0, "buy", "1", "100"))
    flow.add(_trade(2, "sell", "3", "101"))
    flow.add(_trade(5, "buy", "2", "99"))
    assert (flow.buy_volume, flow.sell_volume, flow.trade_count) == (3.0, 3.0, 3)
    assert flow.volume_imbalance == 0.0
    assert flow.realized_volatility == pytest.approx(
        math.hypot(math.log(101 / 100), math.log(99 / 101))
    )

    flow.add(_trade(11, "sell", "1", "100"))  # the window is now (1s, 11s]: the t=0 trade leaves
    assert (flow.buy_volume, flow.sell_volume, flow.trade_count) == (2.0, 4.0, 3)
    assert flow.volume_imbalance == pytest.approx((2 - 4) / 6)
    # returns between trades both inside the window: 101->99 and 99->100 (100->101 left with t=0)
    assert flow.realized_volatility == pytest.approx(
        math.hypot(math.log(99 / 101), math.log(100 / 99))
    )

    flow.advance(20 * S)  # (10s, 20s]: only the t=11 trade
    assert (flow.buy_volume, flow.sell_volume, flow.trade_count) == (0.0, 1.0, 1)
    assert flow.volume_imbalance == -1.0 and flow.realized_volatility == 0.0

    flow.advance(21 * S)  # (11s, 21s]: a trade exactly at the cutoff has left
    assert flow.trade_count == 0 and math.isnan(flow.volume_imbalance)
    assert flow.features() == {
        "flow_buy_volume": 0.0,
        "flow_sell_volume": 0.0,
        "flow_volume_imbalance": pytest.approx(float("nan"), nan_ok=True),
        "flow_trade_count": 0.0,
        "flow_realized_vol": 0.0,
    }


def test_trade_flow_counts_unknown_sides_as_trades_only() -> None:
    flow = TradeFlow(window_ns=S)
    flow.add(_trade(0.1, "unknown", "5", "100"))
    flow.add(_trade(0.2, "buy", "1", "100"))
    assert flow.trade_count == 2 and flow.buy_volume == 1.0 and flow.volume_imbalance == 1.0


def test_trade_flow_state_stays_bounded() -> None:
    flow = TradeFlow(window_ns=S)
    for i in range(100_000):  # 100 s of trades, one per millisecond
        flow.add_values(i * 1_000_000, 100.0 + (i % 7) * 0.01, 0.5, "buy" if i % 3 else "sell")
    assert len(flow) == 1000
    assert flow.trade_count == 1000
    expected_buy = sum(0.5 for i in range(99_000, 100_000) if i % 3)
    assert flow.buy_volume == pytest.approx(expected_buy, rel=1e-9)
    with pytest.raises(ValueError):
        TradeFlow(window_ns=0)
