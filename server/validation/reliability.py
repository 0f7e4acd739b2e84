"""How far a host is trusted for an application: earned by agreeing results, lost by one wrong one.

Per (host, application): results judged, invalid ones, the run of consecutive valid ones, and an error
rate that decays (each judged result weighs ``WEIGHT``, older ones fade), starting at ``START_ERROR``
(a new host is not trusted, BOINC's choice). A host is trusted once ``trust_after`` results in a row
agreed with others and its error rate is at most ``TRUST_MAX_ERROR``; one invalid result ends that. Past
``QUARANTINE_ERROR`` (with at least ``QUARANTINE_MIN_INVALID`` invalid results) it is quarantined: no
work of that application for ``QUARANTINE``, with the reason on its host record; back from it, its
error rate is still high, so one more invalid result sends it back. The rules are pure
(:func:`judged`); :func:`record` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import App, Host, HostReliability, table_of

START_ERROR = 0.1
WEIGHT = 0.1  # of the newest result in the error rate
TRUST_MAX_ERROR = 0.1  # a new host starts at START_ERROR: its streak decides
QUARANTINE_ERROR = 0.3
QUARANTINE_MIN_INVALID = 3
QUARANTINE = timedelta(hours=24)


@dataclass(frozen=True)
class Standing:
    results: int = 0
    invalid: int = 0
    valid_streak: int = 0
    error_rate: float = START_ERROR
    trusted_since: datetime | None = None
    quarantined_until: datetime | None = None
    reason: str | None = None

    def trusted(self, now: datetime) -> bool:
        return self.trusted_since is not None and not self.quarantined(now)

    def quarantined(self, now: datetime) -> bool:
        return self.quarantined_until is not None and self.quarantined_until > now


@dataclass(frozen=True)
class Outcome:
    standing: Standing
    lost_trust: datetime | None = None  # it was trusted since then, and is not any more
    quarantined: bool = False  # it was just quarantined


def judged(s: Standing, valid: bool, now: datetime, *, trust_after: int, app_name: str) -> Outcome:
    """``s`` after one more result judged ``valid`` or not."""
    rate = s.error_rate * (1 - WEIGHT) + (0.0 if valid else WEIGHT)
    if valid:
        streak = s.valid_streak + 1
        trusted_since = s.trusted_since
        if trusted_since is None and streak >= trust_after and rate <= TRUST_MAX_ERROR:
            trusted_since = now
        new = replace(
            s, results=s.results + 1, valid_streak=streak, error_rate=rate, trusted_since=trusted_since
        )
        return Outcome(new)
    new = replace(
        s, results=s.results + 1, invalid=s.invalid + 1, valid_streak=0, error_rate=rate, trusted_since=None
    )
    lost = s.trusted_since
    if rate >= QUARANTINE_ERROR and new.invalid >= QUARANTINE_MIN_INVALID and not s.quarantined(now):
        until = now + QUARANTINE
        reason = (
            f"quarantined for {app_name} until {until.isoformat(timespec='seconds')}: {new.invalid} invalid "
            f"of {new.results} results, error rate {rate:.2f} (limit {QUARANTINE_ERROR})"
        )
        return Outcome(replace(new, quarantined_until=until, reason=reason), lost, True)
    return Outcome(new, lost)


def standing_of(row: Any) -> Standing:
    return Standing(
        row.results,
        row.invalid,
        row.valid_streak,
        row.error_rate,
        row.trusted_since,
        row.quarantined_until,
        row.reason,
    )


async def standings(
    session: AsyncSession, pairs: Sequence[tuple[str, str]], *, lock: bool = False
) -> dict[tuple[str, str], Standing]:
    """The standing of each (host, app) asked for (a fresh one for those never judged). ``lock``: hold
    the rows until the transaction ends (PostgreSQL, in key order: two validators never deadlock), for a
    read-modify-write."""
    if not pairs:
        return {}
    hosts = {h for h, _ in pairs}
    apps = {a for _, a in pairs}
    table = table_of(HostReliability)
    stmt = (
        select(table)
        .where(table.c.host_uid.in_(hosts), table.c.app_uid.in_(apps))
        .order_by(table.c.host_uid, table.c.app_uid)
    )
    if lock and session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    rows = await session.execute(stmt)
    found = {(r.host_uid, r.app_uid): standing_of(r) for r in rows}
    return {p: found.get(p, Standing()) for p in pairs}


async def record(
    session: AsyncSession,
    verdicts: Sequence[tuple[str, str, bool]],
    now: datetime,
    *,
    trust_after: int,
) -> list[tuple[str, str, Outcome]]:
    """Apply judged results (host, app, valid) in order; the outcome of each (host, app) touched. A
    quarantine is also written on the host record (``hosts.quarantine``), which the claim reads."""
    pairs = sorted(dict.fromkeys((h, a) for h, a, _ in verdicts))  # key order, as the locks
    current = await standings(session, pairs, lock=True)
    names = await _app_names(session, {a for _, a in pairs})
    lost: dict[tuple[str, str], datetime] = {}
    jailed: set[tuple[str, str]] = set()
    for host, app, valid in verdicts:
        name = names.get(app, app)
        out = judged(current[(host, app)], valid, now, trust_after=trust_after, app_name=name)
        current[(host, app)] = out.standing
        if out.lost_trust is not None:
            lost.setdefault((host, app), out.lost_trust)
        if out.quarantined:
            jailed.add((host, app))
    await _store(session, current, now)
    for host, app in jailed:
        await _quarantine_host(session, host, app, current[(host, app)], now)
    return [(h, a, Outcome(current[(h, a)], lost.get((h, a)), (h, a) in jailed)) for h, a in pairs]


async def _app_names(session: AsyncSession, apps: set[str]) -> dict[str, str]:
    if not apps:
        return {}
    rows = await session.execute(select(App.uid, App.name).where(App.uid.in_(apps)))
    return {uid: name for uid, name in rows}


_COLUMNS = (
    "results",
    "invalid",
    "valid_streak",
    "error_rate",
    "trusted_since",
    "quarantined_until",
    "reason",
)


async def _store(session: AsyncSession, current: Mapping[tuple[str, str], Standing], now: datetime) -> None:
    """Write the standings (one executemany for those that exist, one for the new ones)."""
    table = table_of(HostReliability)
    keys = list(current)
    existing = {
        (r.host_uid, r.app_uid)
        for r in await session.execute(
            select(table.c.host_uid, table.c.app_uid).where(
                table.c.host_uid.in_({h for h, _ in keys}), table.c.app_uid.in_({a for _, a in keys})
            )
        )
    }
    rows = [
        {"k_host": h, "k_app": a, "updated": now, **{c: getattr(s, c) for c in _COLUMNS}}
        for (h, a), s in current.items()
    ]
    changed = [r for r in rows if (r["k_host"], r["k_app"]) in existing]
    if changed:
        await session.execute(_UPDATE, changed)
    new = [
        {
            "host_uid": r["k_host"],
            "app_uid": r["k_app"],
            **{k: v for k, v in r.items() if not k.startswith("k_")},
        }
        for r in rows
        if (r["k_host"], r["k_app"]) not in existing
    ]
    if new:
        await session.execute(insert(table), new)


_T = table_of(HostReliability)
_UPDATE = (
    update(_T)
    .where(_T.c.host_uid == bindparam("k_host"), _T.c.app_uid == bindparam("k_app"))
    .values({c: bindparam(c) for c in (*_COLUMNS, "updated")})
)


async def _quarantine_host(
    session: AsyncSession, host_uid: str, app: str, s: Standing, now: datetime
) -> None:
    """Write the quarantine on the host record: the claim reads it from there (through the host cache,
    which notices the host's new ``modified``)."""
    host = await session.get(Host, host_uid)
    if host is None or s.quarantined_until is None:
        return
    quarantine = {
        a: q for a, q in (host.quarantine or {}).items() if datetime.fromisoformat(q["until"]) > now
    }
    quarantine[app] = {"until": s.quarantined_until.isoformat(), "reason": s.reason or ""}
    host.quarantine = quarantine
    host.modified = now
