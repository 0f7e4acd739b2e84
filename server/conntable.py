"""The table of open connections: how many there are, what phase each is in, who goes at the cap.

Every connection the listener accepts is in exactly one phase until it closes:

    GATE       accepted, no byte received yet: only the socket exists (no TLS objects, no buffers)
    HANDSHAKE  the TLS handshake is under way
    HEAD       TLS is up and a request head is expected or arriving
    IDLE       keep-alive between requests
    BUSY       a request is being handled or answered (long-polls and transfers included)

The number of open connections is capped (``max_connections``, by default derived from the open-file
limit so that the database, the store and data transfers keep descriptors of their own). At the cap a
new connection evicts the oldest one of the cheapest phase that has not earned its place — first the
gate, then handshakes, then unfinished heads, then idle keep-alives — so a flood of idle or trickling
sockets cannot lock legitimate clients out. BUSY connections are never evicted; only when every
connection is busy is a new one refused.

Refusals, evictions and descriptor exhaustion are logged as one summary line per interval, never a line
(let alone a traceback) per event: a flood must not become a flood of logs.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
import time
from collections import Counter
from typing import Protocol

logger = logging.getLogger(__name__)

RESERVE_FRACTION = 10  # a tenth of the descriptors stay out of the connection cap...
MIN_RESERVE = 256  # ...and never fewer than this: database, WAL, store files, transfers, epoll, logs
MIN_CONNECTIONS = 16  # a derived cap below this means the limit is unusable; keep a working server
PRESSURE_LOG_INTERVAL = 10.0  # seconds between two summary lines about the cap


class Phase(enum.IntEnum):
    GATE = 0
    HANDSHAKE = 1
    HEAD = 2
    IDLE = 3
    BUSY = 4


EVICTION_ORDER = (Phase.GATE, Phase.HANDSHAKE, Phase.HEAD, Phase.IDLE)


class Tracked(Protocol):
    """A connection past the gate: the table sets ``phase``; ``evict`` closes it at once."""

    phase: Phase

    def evict(self) -> None: ...


class Pool(Protocol):
    """The gate (server/gate.py): silent connections the table counts but does not hold."""

    def __len__(self) -> int: ...

    def evict_oldest(self) -> bool: ...


class _NoGate:
    def __len__(self) -> int:
        return 0

    def evict_oldest(self) -> bool:
        return False


def raise_nofile_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an infinite hard limit the kernel caps lower
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def derive_max_connections(nofile: int) -> int:
    """The connection cap for an open-file limit: the limit minus a reserve for everything else."""
    reserve = max(MIN_RESERVE, nofile // RESERVE_FRACTION)
    return max(MIN_CONNECTIONS, nofile - reserve)


class ConnectionTable:
    """Open connections by phase (oldest first within a phase), the cap, and the pressure log."""

    def __init__(self, cap: int, *, log_interval: float = PRESSURE_LOG_INTERVAL) -> None:
        if cap < 1:
            raise ValueError(f"max_connections must be at least 1, not {cap}")
        self.cap = cap
        self.log_interval = log_interval
        self.gate: Pool = _NoGate()  # the listener plugs its gate in
        # dicts as ordered sets: insertion order is the order connections entered the phase
        self._phases: dict[Phase, dict[Tracked, None]] = {p: {} for p in Phase if p is not Phase.GATE}
        self._tracked = 0
        self.totals: Counter[str] = Counter()  # since start: evicted, refused, fd_exhausted, ...
        self._pending: Counter[str] = Counter()  # not yet in a summary line
        self._last_log = -float("inf")
        self._flush_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return self._tracked + len(self.gate)

    def count(self, phase: Phase) -> int:
        return len(self.gate) if phase is Phase.GATE else len(self._phases[phase])

    def oldest(self, phase: Phase) -> Tracked | None:
        return next(iter(self._phases[phase]), None)

    def snapshot(self) -> dict[str, int]:
        """Open connections per phase and the running totals (for logs, tests and benchmarks)."""
        phases = {p.name.lower(): self.count(p) for p in Phase}
        return {"open": len(self), **phases, **self.totals}

    # --- membership ----------------------------------------------------------------------------------

    def add(self, conn: Tracked, phase: Phase) -> None:
        conn.phase = phase
        self._phases[phase][conn] = None
        self._tracked += 1

    def move(self, conn: Tracked, phase: Phase) -> None:
        """Put a tracked connection into ``phase`` (at the young end); untracked ones are left alone."""
        members = self._phases[conn.phase]
        if conn not in members:
            return  # already discarded (evicted or closed): nothing to move
        del members[conn]
        conn.phase = phase
        self._phases[phase][conn] = None

    def replace(self, old: Tracked, new: Tracked, phase: Phase) -> bool:
        """``new`` takes ``old``'s place (same connection, new object); False if ``old`` was gone."""
        if not self.discard(old):
            return False
        self.add(new, phase)
        return True

    def discard(self, conn: Tracked) -> bool:
        """Forget a connection (closed or evicted); False if it was not tracked."""
        members = self._phases[conn.phase]
        if conn not in members:
            return False
        del members[conn]
        self._tracked -= 1
        return True

    # --- the cap -----------------------------------------------------------------------------------

    def admit(self) -> bool:
        """Make room for one more connection; False (counted, summarised) if it must be refused."""
        if len(self) < self.cap:
            return True
        if self.evict_one():
            return True
        self.note("refused")
        return False

    def evict_one(self) -> bool:
        """Close the oldest connection of the cheapest evictable phase; False if all are busy."""
        if self.gate.evict_oldest():
            self.note("evicted")
            return True
        for phase in EVICTION_ORDER[1:]:
            victim = self.oldest(phase)
            if victim is not None:
                self.discard(victim)
                victim.evict()
                self.note("evicted")
                return True
        return False

    # --- the pressure log ----------------------------------------------------------------------------

    def note(self, event: str) -> None:
        """Count a refusal, an eviction or a descriptor shortage; a summary line follows in an interval."""
        self.totals[event] += 1
        self._pending[event] += 1
        if self._flush_handle is not None:
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_interval:
            self.flush()
        else:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self._last_log + self.log_interval - now, self.flush)

    def flush(self) -> None:
        """Log what happened since the last summary line (nothing if nothing happened)."""
        self._flush_handle = None
        if not self._pending:
            return
        self._last_log = time.monotonic()
        events = ", ".join(f"{n} {what}" for what, n in sorted(self._pending.items()))
        self._pending.clear()
        logger.warning(
            "connection limit: %d open of max_connections=%d (gate %d, handshake %d, head %d, idle %d, "
            "busy %d); since the last line: %s (see max_connections)",
            len(self),
            self.cap,
            *(self.count(p) for p in Phase),
            events,
        )

    def close(self) -> None:
        """Stop the pending summary (server shutdown); log it now if anything is left."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.flush()
