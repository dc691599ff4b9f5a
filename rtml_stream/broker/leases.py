"""Which feature-service process owns which market: leases in a JetStream key-value bucket.

Every process heartbeats a member key (``<group>.member.<instance>``) and holds a lease key per
market it processes (``<group>.lease.<exchange>.<symbol>``, value = its instance id). The
bucket's TTL expires a key that is not rewritten in time, so the leases of a process that
died (SIGKILL, lost host) free themselves after ``ttl_s``. A lease is taken with an atomic
create (only one process can win it) and renewed with a compare-and-set on its revision (a
process that lost it finds out at its next renewal and stops processing that market). Each
process aims at its fair share, ceil(markets / live members): it takes free markets up to it
and gives markets above it back (after finishing them) for a newcomer to take.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from nats.js.errors import BucketNotFoundError, KeyValueError, NoKeysError, NotFoundError

log = structlog.get_logger("rtml_stream.broker.leases")

Market = tuple[str, str]


@dataclass
class LeaseStep:
    gained: list[Market] = field(default_factory=list)
    lost: list[Market] = field(default_factory=list)
    surplus: list[Market] = field(default_factory=list)  # owned above the fair share: finish, then release


def lease_bucket(stream: str) -> str:
    return f"{stream}_LEASES"


async def open_bucket(js, bucket: str, ttl_s: float, replicas: int = 1):
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(bucket=bucket, ttl=ttl_s, history=1, replicas=replicas)


class Leases:
    def __init__(self, kv, group: str, instance: str, markets: Sequence[Market], ttl_s: float) -> None:
        self.kv = kv
        self.group = group
        self.instance = instance
        self.markets = list(dict.fromkeys(markets))
        self.ttl_s = ttl_s
        self.owned: dict[Market, int] = {}  # market -> revision of our lease

    def key(self, market: Market) -> str:
        return f"{self.group}.lease.{market[0]}.{market[1]}"

    @property
    def member_key(self) -> str:
        return f"{self.group}.member.{self.instance}"

    async def members(self) -> int:
        try:
            keys = await self.kv.keys()  # (key filters need NATS 2.10)
        except NoKeysError:
            keys = []
        prefix = f"{self.group}.member."
        return max(1, sum(1 for key in keys if key.startswith(prefix)))

    async def step(self) -> LeaseStep:
        """Heartbeat, renew what we hold, take free markets up to the fair share."""
        out = LeaseStep()
        await self.kv.put(self.member_key, self.instance.encode())
        for market, revision in list(self.owned.items()):
            try:
                self.owned[market] = await self.kv.update(self.key(market), self.instance.encode(), last=revision)
            except KeyValueError as error:  # expired and taken by another, or deleted
                log.warning("lease_lost", market=f"{market[0]}:{market[1]}", error=repr(error))
                del self.owned[market]
                out.lost.append(market)
        share = math.ceil(len(self.markets) / await self.members())
        for market in self.markets:
            if len(self.owned) >= share:
                break
            if market in self.owned:
                continue
            try:
                self.owned[market] = await self.kv.create(self.key(market), self.instance.encode())
            except KeyValueError:
                continue  # held by another process
            out.gained.append(market)
        if len(self.owned) > share:
            out.surplus = list(self.owned)[share:]
        return out

    async def release(self, market: Market) -> None:
        revision = self.owned.pop(market, None)
        if revision is None:
            return
        try:
            await self.kv.delete(self.key(market), last=revision)
        except KeyValueError as error:
            log.warning("lease_release_failed", market=f"{market[0]}:{market[1]}", error=repr(error))

    async def leave(self) -> None:
        """Give every lease back and drop the member key (a clean shutdown: others take over at once)."""
        for market in list(self.owned):
            await self.release(market)
        try:
            await self.kv.delete(self.member_key)
        except KeyValueError:
            pass
