"""Login throttling: failed password logins are limited per login and per client address.

Token buckets: each failure takes one token from the login's bucket and one from the address's; buckets
refill at a steady rate. An empty bucket answers 429 with the time until the next token, before any
password is hashed, so guessing costs the attacker time and the server nothing.

Known and unknown logins are counted the same way, so throttling never tells which logins exist. An
address that has logged in successfully as a login is trusted for that login: a flood of failures from
elsewhere does not lock the real user out of their usual machine, and a new machine waits at most one
refill period per attempt. State is per server process and bounded (least recently used entries go).

:class:`PasswordGate` bounds how many password hashes run at once, so a burst of logins cannot take the
CPU from everyone else's requests; past a queue bound it answers 429 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from common.errors import TooManyRequests

ADDRESS_BURST = 30  # failed logins an address may make at once (NAT gateways hold many users)
ADDRESS_REFILL = 2.0  # seconds per regained attempt
LOGIN_BURST = 10
LOGIN_REFILL = 30.0  # a locked login waits at most this long per attempt from a new address
TRUSTED_SECONDS = 30 * 86400.0
MAX_ENTRIES = 100_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class _Buckets:
    """Token buckets by key, least recently used evicted past ``cap``."""

    def __init__(self, burst: int, refill: float, cap: int, clock: Callable[[], float]) -> None:
        self.burst, self.refill, self.cap, self.clock = burst, refill, cap, clock
        self._items: OrderedDict[str, _Bucket] = OrderedDict()

    def _current(self, key: str) -> _Bucket | None:
        bucket = self._items.get(key)
        if bucket is None:
            return None
        now = self.clock()
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) / self.refill)
        bucket.stamp = now
        if bucket.tokens >= self.burst:
            del self._items[key]  # full again: forget it
            return None
        self._items.move_to_end(key)
        return bucket

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        bucket = self._current(key)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) * self.refill

    def take(self, key: str) -> None:
        bucket = self._current(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), self.clock())
            self._items[key] = bucket
            while len(self._items) > self.cap:
                self._items.popitem(last=False)
        bucket.tokens = max(0.0, bucket.tokens - 1)


class LoginThrottle:
    """Decides whether a password login may be tried now; learns from its outcome."""

    def __init__(
        self,
        *,
        address_burst: int = ADDRESS_BURST,
        address_refill: float = ADDRESS_REFILL,
        login_burst: int = LOGIN_BURST,
        login_refill: float = LOGIN_REFILL,
        trusted_seconds: float = TRUSTED_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._addresses = _Buckets(address_burst, address_refill, max_entries, clock)
        self._logins = _Buckets(login_burst, login_refill, max_entries, clock)
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._trusted_seconds = trusted_seconds
        self._max_entries = max_entries

    def _is_trusted(self, login: str, address: str) -> bool:
        seen = self._trusted.get((login, address))
        if seen is None:
            return False
        if self._clock() - seen > self._trusted_seconds:
            del self._trusted[(login, address)]
            return False
        return True

    def check(self, login: str, address: str) -> None:
        """Raise TooManyRequests (with Retry-After) if this attempt must wait."""
        if self._is_trusted(login, address):
            return
        wait = max(self._addresses.wait(address), self._logins.wait(login))
        if wait > 0:
            raise TooManyRequests("too many failed logins: wait before trying again", retry_after=wait)

    def failed(self, login: str, address: str) -> None:
        """Count a failed attempt (wrong password or unknown login alike)."""
        if self._is_trusted(login, address):
            return
        self._addresses.take(address)
        self._logins.take(login)

    def succeeded(self, login: str, address: str) -> None:
        """Trust this address for this login from now on."""
        self._trusted[(login, address)] = self._clock()
        self._trusted.move_to_end((login, address))
        while len(self._trusted) > self._max_entries:
            self._trusted.popitem(last=False)


class PasswordGate:
    """At most ``slots`` password hashes at once and ``queue`` waiting; more is 429 right away."""

    def __init__(self, slots: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(max(1, slots))
        self._queue = max(0, queue)
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._queue:
            raise TooManyRequests("the server is busy checking passwords: retry shortly", retry_after=1)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
