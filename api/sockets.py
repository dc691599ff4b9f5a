"""Bounded prediction WebSockets: who may open one, and one store subscription per market.

``SocketGate`` admits a socket or says why not: connects per second per client (API key, or
address without auth), open sockets per client and per worker. ``UpdateHub`` holds one
online-store subscription per market for the whole worker and fans each new row out to every
socket watching that market, so store connections grow with markets watched, not with sockets
(and the per-worker cap bounds both).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import monotonic

from rtml_core.schemas import FeatureRow

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

    def admit(self, client: str) -> None:
        """Count a socket of ``client`` as open, or raise ``SocketRefused`` (close code, reason)."""
        if self.connects_per_s > 0:
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


class _Feed:
    """One market's subscription and the queues of the sockets watching it."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None
        self.ready = asyncio.get_running_loop().create_future()  # the subscription is open (or failed)


class UpdateHub:
    """One online-store subscription per market per worker, fanned out to every watcher."""

    def __init__(self, store) -> None:
        self.store = store
        self._feeds: dict[tuple[str, str, str], _Feed] = {}

    @property
    def subscriptions(self) -> int:
        return len(self._feeds)

    @asynccontextmanager
    async def watch(self, exchange: str, symbol: str, timeframe: str) -> AsyncIterator[asyncio.Queue]:
        """A queue of the rows that become the market's latest from now on (listening on return).

        Raises what opening the subscription raised (``OnlineStoreUnavailable``). A queue gets
        an exception instead of a row when the subscription ends.
        """
        market = (exchange, symbol, timeframe)
        feed = self._feeds.get(market)
        if feed is None:
            feed = self._feeds[market] = _Feed()
            feed.task = asyncio.create_task(self._pump(market, feed))
        queue: asyncio.Queue = asyncio.Queue(QUEUE_ROWS)
        feed.queues.add(queue)
        try:
            await asyncio.shield(feed.ready)
            yield queue
        finally:
            feed.queues.discard(queue)
            if not feed.queues and self._feeds.get(market) is feed:
                del self._feeds[market]
                feed.task.cancel()
                await asyncio.gather(feed.task, return_exceptions=True)

    async def _pump(self, market: tuple[str, str, str], feed: _Feed) -> None:
        subscription = self.store.subscribe(*market)
        try:
            try:
                await subscription.open()
            except Exception as error:  # noqa: BLE001 - every watcher learns it from ``ready``
                feed.ready.set_exception(error)
                if self._feeds.get(market) is feed:
                    del self._feeds[market]
                return
            feed.ready.set_result(None)
            async for row in subscription:
                for queue in list(feed.queues):
                    _put_newest(queue, row)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the watchers close their sockets
            log.warning("subscription to %s ended: %r", market, error)
            for queue in list(feed.queues):
                _put_newest(queue, error)
            if self._feeds.get(market) is feed:
                del self._feeds[market]
        finally:
            await subscription.aclose()

    async def aclose(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.task.cancel()
        await asyncio.gather(*(feed.task for feed in feeds), return_exceptions=True)


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
