"""When a link renews its tickets: about half way through their lifetime, never close to the end."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.tickets import lifetime

# Renew at 40-60 % of a ticket's lifetime, and at the latest RENEW_MARGIN (or a quarter of the lifetime,
# for short tickets) before it ends, leaving time for retries (with backoff) within what is left.
RENEW_SHARE = (0.4, 0.6)
RENEW_MARGIN = 30.0
RENEW_MIN_DELAY = 0.2  # never renew more often than this, whatever the ticket says
RENEW_RETRY_MIN = 0.5
RENEW_RETRY_MAX = 30.0
RENEW_TIMEOUT = 30.0  # one renewal: fetching a ticket from the server, then granting it


def renewal_delay(seconds: float, share: float | None = None) -> float:
    """Seconds after fetching a ticket that lasts ``seconds`` to renew it.

    About half its lifetime (``share``, jittered so a relay's links do not renew in step), and never
    later than a safety margin before it ends; at least RENEW_MIN_DELAY.
    """
    share = random.uniform(*RENEW_SHARE) if share is None else share
    margin = min(RENEW_MARGIN, seconds / 4)
    return max(min(seconds * share, seconds - margin), RENEW_MIN_DELAY)


@dataclass
class Lease:
    """The rights one source's last token gave the current connection, and when to renew them."""

    fetch: Callable[[], Awaitable[str]]
    due: float  # loop time to renew at
    ends: float  # loop time the token's rights end (inf: the token says nothing, never renewed)
    failures: int = 0

    @classmethod
    def of(cls, fetch: Callable[[], Awaitable[str]], token: str, fetched: float) -> Lease:
        """The lease of ``token``, fetched at loop time ``fetched`` (its lifetime is read, not verified)."""
        seconds = lifetime(token)
        if seconds is None:
            return cls(fetch, math.inf, math.inf)
        return cls(fetch, fetched + renewal_delay(seconds), fetched + seconds)

    def failed(self, now: float) -> float:
        """Count a failed renewal and schedule the next try (jittered exponential backoff); the delay."""
        self.failures += 1
        backoff = min(RENEW_RETRY_MIN * 2.0 ** (self.failures - 1), RENEW_RETRY_MAX) * random.uniform(
            0.5, 1.0
        )
        self.due = now + backoff
        return backoff

    def late(self, now: float) -> bool:
        """Whether a renewal done at ``now`` may come after the relay dropped the rights.

        That is after failures, or past the midpoint between when it was due and when the token ends
        (the relay's clock, not ours, decides when the rights end).
        """
        return self.failures > 0 or now >= (self.due + self.ends) / 2

    @classmethod
    def retry(cls, fetch: Callable[[], Awaitable[str]], now: float) -> Lease:
        """A lease whose first grant failed: renewed (that is, retried) soon."""
        return cls(fetch, due=now + RENEW_RETRY_MIN, ends=now, failures=1)
