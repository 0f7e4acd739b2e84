"""Single-use tickets: the relay remembers each accepted ticket's jti until the ticket could no longer verify.

In memory only: a restarted relay forgets, which is acceptable because tickets live minutes and a
ticket replayed after a restart still needs to be unexpired and server-signed.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from proxy.tickets import TicketError

# Every entry comes from a ticket the server signed, so the table grows only with what the server
# issues; the cap is a safety net (~200 bytes an entry, ~20 MB full), refusing new tickets rather than
# growing. With 5-minute tickets it allows over 300 new tickets a second, sustained, on one relay.
MAX_REMEMBERED = 100_000

ALREADY_USED = "ticket already used"
FULL = "relay busy: too many live tickets, try again later"


class SpentTickets:
    """The jti of every ticket accepted so far, each kept until its ticket's expiry (plus leeway)."""

    def __init__(self, capacity: int = MAX_REMEMBERED, clock: Callable[[], float] = time.time) -> None:
        self._capacity = capacity
        self._clock = clock
        self._until: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []  # a heap: pruning pops only what has expired

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, jti: object) -> bool:
        return jti in self._until

    def spend(self, jti: str, until: float) -> None:
        """Accept ``jti`` once, remembered until ``until`` (epoch seconds); TicketError if seen or full."""
        self.prune()
        if jti in self._until:
            raise TicketError(ALREADY_USED)
        if len(self._until) >= self._capacity:
            raise TicketError(FULL)
        self._until[jti] = until
        heapq.heappush(self._expiries, (until, jti))

    def prune(self) -> None:
        """Forget tickets that have expired: they no longer verify, so they cannot be replayed."""
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            _, jti = heapq.heappop(self._expiries)
            self._until.pop(jti, None)
