"""Figures that are database state, read at scrape time: jobs by status, workers alive.

Counting them in memory would be wrong as soon as there are several server processes (each sees only
its own changes) or a restart (the count starts from zero): the database has the truth. A scrape reads
them with one ``GROUP BY`` and one ``COUNT``, on the reader sessions, and keeps them ``ttl`` seconds, so
that however often (and through however many processes) Prometheus scrapes, the database sees at most
one such read per ``ttl`` per process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.enums import JobStatus
from common.jobstates import FINAL
from server.db.models import Host, Job, utcnow
from server.metrics.instruments import PREFIX

CACHE_SECONDS = 5.0
UNFINISHED = tuple(s.value for s in JobStatus if s not in FINAL)


class DatabaseFigures(Collector):
    """Jobs by status and workers alive, refreshed (awaited by the scrape) at most every ``ttl`` seconds."""

    def __init__(
        self,
        readers: async_sessionmaker[AsyncSession],
        alive_timeout: Callable[[], float],
        *,
        ttl: float = CACHE_SECONDS,
    ) -> None:
        self._readers = readers
        self._alive_timeout = alive_timeout
        self.ttl = ttl
        self._jobs: dict[str, int] = {}
        self._alive = 0
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()
        self.reads = 0  # since start: how often the database was asked (a test bounds it)

    async def refresh(self) -> None:
        """Read the figures again if they are older than ``ttl`` (concurrent scrapes share one read)."""
        if time.monotonic() - self._read_at < self.ttl:
            return
        async with self._lock:
            if time.monotonic() - self._read_at < self.ttl:
                return  # another scrape read them while we waited
            cutoff = utcnow() - timedelta(seconds=self._alive_timeout())
            async with self._readers() as session:
                # the statuses a job is still in (an index range each: cheap however many jobs ever
                # finished); finished ones are counted as they finish (xwhep_jobs_finished_total)
                active = Job.status.in_(UNFINISHED)
                rows = await session.execute(
                    select(Job.status, func.count()).where(active).group_by(Job.status)
                )
                jobs = {str(status): int(n) for status, n in rows}
                alive = await session.scalar(
                    select(func.count()).where(Host.revoked.is_(None), Host.last_alive >= cutoff)
                )
            self._jobs, self._alive = jobs, int(alive or 0)
            self._read_at = time.monotonic()
            self.reads += 1

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            PREFIX + "jobs",
            "Unfinished jobs by status (read from the database); finished: xwhep_jobs_finished_total.",
            labels=["status"],
        )
        for status in UNFINISHED:
            jobs.add_metric([status], self._jobs.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            PREFIX + "workers_alive",
            "Hosts heard from within the alive timeout and not revoked (read from the database).",
            value=self._alive,
        )
