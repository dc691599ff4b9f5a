"""L2 order book and the market-microstructure features computed from it and from trade flow.

``OrderBook`` keeps exact ``Decimal`` price levels (sorted, best first), applies snapshots and
diffs, and optionally truncates to a depth (Kraken requires this before its checksum). The
feature functions are pure and return floats (``nan`` when a side of the book is empty).
``TradeFlow`` accumulates taker volume, trade count and realized volatility over a sliding
event-time window with bounded state.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from itertools import islice

from sortedcontainers import SortedDict

from rtml_core.schemas import BookLevel, BookUpdate, Trade

NAN = float("nan")
_ZERO = Decimal(0)

Level = tuple[Decimal, Decimal]


class OrderBook:
    """Price levels of one symbol: ``bids`` best (highest) first, ``asks`` best (lowest) first.

    ``depth`` (levels per side) truncates the book after every change, as an exchange that
    publishes a depth-limited book (Kraken) expects; ``None`` keeps every level.
    """

    __slots__ = ("asks", "bids", "depth")

    def __init__(self, depth: int | None = None) -> None:
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self.bids: SortedDict = SortedDict(operator.neg)
        self.asks: SortedDict = SortedDict()

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    def apply_snapshot(self, bids: Iterable[BookLevel], asks: Iterable[BookLevel]) -> None:
        """Replace the whole book; zero-size levels are ignored."""
        self.clear()
        self.apply_update(bids, asks)

    def apply_update(
        self, bids: Iterable[BookLevel], asks: Iterable[BookLevel]
    ) -> tuple[list[Decimal], list[Decimal]]:
        """Set each level's size; a size of 0 removes the level. Truncates to ``depth``.

        Returns the bid and ask prices the truncation dropped (usually none).
        """
        _apply_side(self.bids, bids)
        _apply_side(self.asks, asks)
        if self.depth is not None:
            return self.truncate(self.depth)
        return [], []

    def apply(self, update: BookUpdate) -> None:
        if update.is_snapshot:
            self.apply_snapshot(update.bids, update.asks)
        else:
            self.apply_update(update.bids, update.asks)

    def truncate(self, depth: int) -> tuple[list[Decimal], list[Decimal]]:
        """Drop the levels beyond the best ``depth`` on each side; returns their prices."""
        dropped: tuple[list[Decimal], list[Decimal]] = ([], [])
        for side, out in ((self.bids, dropped[0]), (self.asks, dropped[1])):
            while len(side) > depth:
                out.append(side.popitem(-1)[0])
        return dropped

    def top_bids(self, levels: int) -> list[Level]:
        return list(islice(self.bids.items(), levels))

    def top_asks(self, levels: int) -> list[Level]:
        return list(islice(self.asks.items(), levels))

    def best_bid(self) -> Level | None:
        return self.bids.peekitem(0) if self.bids else None

    def best_ask(self) -> Level | None:
        return self.asks.peekitem(0) if self.asks else None

    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask (a broken book)."""
        return bool(
            self.bids and self.asks and self.bids.peekitem(0)[0] >= self.asks.peekitem(0)[0]
        )

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

    def __repr__(self) -> str:
        return f"OrderBook(depth={self.depth}, bid={self.best_bid()}, ask={self.best_ask()}, levels={len(self)})"


def _apply_side(side: SortedDict, levels: Iterable[BookLevel]) -> None:
    for level in levels:
        if level.size == _ZERO:
            side.pop(level.price, None)
        else:
            side[level.price] = level.size


# --- book features (pure, float outputs) ---------------------------------------------------


def mid_price(book: OrderBook) -> float:
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return NAN
    return float((bid[0] + ask[0]) / 2)


def spread_bps(book: OrderBook) -> float:
    """Best ask minus best bid, in basis points of the mid price."""
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return NAN
    mid = (bid[0] + ask[0]) / 2
    return float((ask[0] - bid[0]) / mid * 10_000)


def top_imbalance(book: OrderBook) -> float:
    """(best bid size - best ask size) / (sum), in [-1, 1]; positive means more bid support."""
    return depth_imbalance(book, 1)


def depth_imbalance(book: OrderBook, levels: int) -> float:
    """(bid size - ask size) / (sum) over the best ``levels`` levels of each side."""
    bid_depth, ask_depth = _depth(book, levels)
    total = bid_depth + ask_depth
    if not book.bids or not book.asks or total == 0:
        return NAN
    return float((bid_depth - ask_depth) / total)


def microprice(book: OrderBook) -> float:
    """Size-weighted mid: (bid * ask_size + ask * bid_size) / (bid_size + ask_size)."""
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return NAN
    (bid_price, bid_size), (ask_price, ask_size) = bid, ask
    return float((bid_price * ask_size + ask_price * bid_size) / (bid_size + ask_size))


def depth(book: OrderBook, levels: int) -> tuple[float, float]:
    """Summed size of the best ``levels`` bid levels and ask levels (base units)."""
    bid_depth, ask_depth = _depth(book, levels)
    return float(bid_depth), float(ask_depth)


def _depth(book: OrderBook, levels: int) -> tuple[Decimal, Decimal]:
    bid_depth = sum(islice(book.bids.values(), levels), _ZERO)
    ask_depth = sum(islice(book.asks.values(), levels), _ZERO)
    return bid_depth, ask_depth


def book_features(book: OrderBook, levels: int = 10) -> dict[str, float]:
    """Every book feature under a stable name (``levels`` is the N of the N-level features)."""
    bid_depth, ask_depth = depth(book, levels)
    return {
        "book_mid": mid_price(book),
        "book_microprice": microprice(book),
        "book_spread_bps": spread_bps(book),
        "book_imbalance_top": top_imbalance(book),
        f"book_imbalance_{levels}": depth_imbalance(book, levels),
        f"book_bid_depth_{levels}": bid_depth,
        f"book_ask_depth_{levels}": ask_depth,
    }


# --- trade flow ------------------------------------------------------------------------------


class TradeFlow:
    """Taker buy/sell volume, trade count and realized volatility over a sliding time window.

    The window is ``(latest - window_ns, latest]`` in event time. State is one small entry per
    trade inside the window (older entries are evicted as time advances). Realized volatility is
    ``sqrt(sum r_i^2)`` over the log returns between consecutive trades that are both in the
    window. Trades with side ``unknown`` count as trades but in neither volume.
    """

    __slots__ = (
        "_buy",
        "_entries",
        "_evictions",
        "_last_price",
        "_latest_ns",
        "_sell",
        "_sum_sq",
        "window_ns",
    )

    def __init__(self, window_ns: int) -> None:
        if window_ns <= 0:
            raise ValueError(f"window_ns must be positive, got {window_ns}")
        self.window_ns = window_ns
        self._entries: deque[list] = deque()  # [time_ns, buy_size, sell_size, squared log return]
        self._buy = 0.0
        self._sell = 0.0
        self._sum_sq = 0.0
        self._last_price: float | None = None
        self._latest_ns: int | None = None
        self._evictions = 0

    def add(self, trade: Trade) -> None:
        self.add_values(trade.time_ns, float(trade.price), float(trade.size), trade.side)

    def add_values(self, time_ns: int, price: float, size: float, side: str) -> None:
        """Add one trade (out-of-order times are accepted; the window follows the latest)."""
        buy = size if side == "buy" else 0.0
        sell = size if side == "sell" else 0.0
        sq = 0.0
        if self._entries and self._last_price is not None and self._last_price > 0 and price > 0:
            sq = math.log(price / self._last_price) ** 2
        self._last_price = price
        self._entries.append([time_ns, buy, sell, sq])
        self._buy += buy
        self._sell += sell
        self._sum_sq += sq
        if self._latest_ns is None or time_ns > self._latest_ns:
            self._latest_ns = time_ns
        self._evict(self._latest_ns)

    def _evict(self, now_ns: int) -> None:
        cutoff = now_ns - self.window_ns
        entries = self._entries
        evicted = False
        while entries and entries[0][0] <= cutoff:
            _, buy, sell, sq = entries.popleft()
            self._buy -= buy
            self._sell -= sell
            self._sum_sq -= sq
            self._evictions += 1
            evicted = True
        if evicted and entries:  # the new oldest trade's return pointed at an evicted trade
            self._sum_sq -= entries[0][3]
            entries[0][3] = 0.0
        if evicted and self._evictions >= len(
            entries
        ):  # amortized O(1); no rounding drift builds up
            self._recompute()

    def _recompute(self) -> None:
        """Exact sums from the entries (running sums of floats drift as values come and go)."""
        entries = self._entries
        self._buy = math.fsum(e[1] for e in entries)
        self._sell = math.fsum(e[2] for e in entries)
        self._sum_sq = math.fsum(e[3] for e in entries)
        self._evictions = 0

    def advance(self, now_ns: int) -> None:
        """Move the window forward to ``now_ns`` without a trade (e.g. on a timer)."""
        if self._latest_ns is None or now_ns > self._latest_ns:
            self._latest_ns = now_ns
        self._evict(self._latest_ns)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def latest_ns(self) -> int | None:
        """The newest event time the window has seen (a trade's or ``advance``'s), or None."""
        return self._latest_ns

    @property
    def buy_volume(self) -> float:
        return max(self._buy, 0.0)

    @property
    def sell_volume(self) -> float:
        return max(self._sell, 0.0)

    @property
    def trade_count(self) -> int:
        return len(self._entries)

    @property
    def volume_imbalance(self) -> float:
        """(taker buy - taker sell) / (buy + sell) in [-1, 1]; nan with no sided volume."""
        buy, sell = self.buy_volume, self.sell_volume
        total = buy + sell
        return (buy - sell) / total if total > 0 else NAN

    @property
    def realized_volatility(self) -> float:
        return math.sqrt(max(self._sum_sq, 0.0))

    def features(self) -> dict[str, float]:
        return {
            "flow_buy_volume": self.buy_volume,
            "flow_sell_volume": self.sell_volume,
            "flow_volume_imbalance": self.volume_imbalance,
            "flow_trade_count": float(len(self._entries)),
            "flow_realized_vol": self.realized_volatility,
        }
