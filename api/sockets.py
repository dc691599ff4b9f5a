"""Bounded prediction WebSockets: who may open one, and one store subscription per market.

``SocketGate`` admits a socket or says why not: connects per second per client (API key, or
address without auth), open sockets per client and per worker. ``UpdateHub`` holds one
``MarketFeed`` of the online store for the whole worker (one Redis connection however many
markets and sockets) and fans each new row out to every socket watching its market.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import monotonic, time

from api.shared import count_shared
from rtml_core.schemas import FeatureRow
from rtml_core.stores.online_base import OnlineStoreUnavailable

log = logging.getLogger(__name__)

QUEUE_ROWS = 8
"""Rows kept per socket while it is slow to send; older ones are dropped (the newest matters)."""
MAX_TRACKED_CLIENTS = 10_000


class SocketRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class SocketGate:
    """Connect rate and open-socket caps, per client and per worker (one event loop: no locks)."""

    def __init__(self, *, max_open: int, max_open_per_client: int, connects_per_s: int) -> None:
        self.max_open = max_open
        self.max_open_per_client = max_open_per_client
        self.connects_per_s = connects_per_s
        self.open: dict[str, int] = {}
        self.total = 0
        self._connects: dict[str, deque[float]] = {}

    async def admit(self, client: str, shared=None) -> None:
        """Count a socket of ``client`` as open, or raise ``SocketRefused`` (close code, reason).

        ``shared``: the online store when several workers share the connect rate (``api.shared``).
        """
        if self.connects_per_s > 0:
            count = await count_shared(shared, f"wsconnect:{client}:{int(time())}", 2)
            if count is not None and count > self.connects_per_s:
                raise SocketRefused(4429, f"more than {self.connects_per_s} connects per second")
            now = monotonic()
            recent = self._connects.get(client)
            if recent is None:
                if len(self._connects) >= MAX_TRACKED_CLIENTS:
                    self._connects = {c: q for c, q in self._connects.items() if q and q[-1] > now - 1.0}
                recent = self._connects[client] = deque(maxlen=self.connects_per_s)
            if len(recent) == self.connects_per_s and recent[0] > now - 1.0:
                raise SocketRefused(4429, f"more than {self.connects_per_s} connects per second")
            recent.append(now)
        if self.total >= self.max_open:
            raise SocketRefused(1013, f"this server holds its maximum of {self.max_open} sockets; retry later")
        if self.open.get(client, 0) >= self.max_open_per_client:
            raise SocketRefused(1008, f"at most {self.max_open_per_client} open sockets per API key")
        self.open[client] = self.open.get(client, 0) + 1
        self.total += 1

    def release(self, client: str) -> None:
        left = self.open.get(client, 0) - 1
        if left > 0:
            self.open[client] = left
        else:
            self.open.pop(client, None)
        self.total -= 1


class UpdateHub:
    """One ``MarketFeed`` of the online store per worker, fanned out to every watching socket."""

    def __init__(self, store) -> None:
        self.store = store
        self._feed = None
        self._pump: asyncio.Task | None = None
        self._queues: dict[tuple[str, str, str], set[asyncio.Queue]] = {}
        self._added: dict[tuple[str, str, str], asyncio.Future] = {}  # the feed listens for the market

    @property
    def markets(self) -> int:
        return len(self._queues)

    @asynccontextmanager
    async def watch(self, exchange: str, symbol: str, timeframe: str) -> AsyncIterator[asyncio.Queue]:
        """A queue of the rows that become the market's latest from now on (listening on return).

        Raises what opening the feed raised (``OnlineStoreUnavailable``). A queue gets an
        exception instead of a row when the feed fails.
        """
        market = (exchange, symbol, timeframe)
        if self._feed is None:
            self._feed = self.store.feed()
        queue: asyncio.Queue = asyncio.Queue(QUEUE_ROWS)
        self._queues.setdefault(market, set()).add(queue)
        try:
            added = self._added.get(market)
            if added is None:  # the first watcher adds the market; later ones wait for it
                added = self._added[market] = asyncio.get_running_loop().create_future()
                try:
                    await self._feed.add(*market)
                    added.set_result(None)
                except BaseException as error:
                    del self._added[market]
                    added.set_exception(error if isinstance(error, Exception) else
                                        OnlineStoreUnavailable("the feed stopped opening (cancelled)"))
                    added.exception()  # retrieved: the watchers waiting below re-raise it
                    raise
            await asyncio.shield(added)
            if self._pump is None or self._pump.done():
                self._pump = asyncio.create_task(self._forward())
            yield queue
        finally:
            queues = self._queues.get(market)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[market]
                    if self._added.get(market) is not None and self._added[market].done():
                        del self._added[market]
                        self._feed.discard(*market)

    async def _forward(self) -> None:
        while True:
            try:
                async for row in self._feed:
                    for queue in self._queues.get((row.exchange, row.symbol, row.timeframe), ()):
                        _put_newest(queue, row)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the watchers close their sockets
                log.warning("online-store feed failed: %r", error)
                for queues in self._queues.values():
                    for queue in queues:
                        _put_newest(queue, error)
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.aclose()


def _put_newest(queue: asyncio.Queue, item: FeatureRow | BaseException) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


def socket_client(scope) -> str:
    """Whom a socket counts against: its API key (hashed), else its client address."""
    from api.auth import HEADER, client_address, key_identity

    presented = next((value for name, value in scope["headers"] if name == HEADER), None)
    if presented:
        return key_identity(presented.decode("latin-1"))
    return "ip:" + client_address(scope)
