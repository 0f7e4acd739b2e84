"""Who hears of the validator's verdicts (the metrics) and of replicas started (the workers' wake-ups),
told after the transaction that made them commits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

VERDICTS = "xw_verdicts"  # session.info key: the verdicts of the open transaction
VERDICT_OBSERVERS = "xw_verdict_observers"  # session.info key (set on the session factory)
VerdictObserver = Callable[[Mapping[str, int]], None]  # verdict -> how many, per committed transaction
STARTED = "xw_replicas_started"  # session.info key: replicas the open transaction queued
STARTED_OBSERVERS = "xw_started_observers"  # session.info key (set on the session factory)


def observe_started(factory_info: dict[str, Any], observer: Callable[[int], None]) -> None:
    """Call ``observer`` with the number of replicas every committed transaction queued (outside
    submissions, which wake workers themselves)."""
    factory_info.setdefault(STARTED_OBSERVERS, []).append(observer)


def note_started(session: AsyncSession, count: int) -> None:
    session.info[STARTED] = session.info.get(STARTED, 0) + count


def observe_verdicts(factory_info: dict[str, Any], observer: VerdictObserver) -> None:
    """Call ``observer`` with the verdicts (valid, invalid, inconclusive, trusted, ...) of every
    transaction that commits on sessions made with ``info=factory_info``."""
    factory_info.setdefault(VERDICT_OBSERVERS, []).append(observer)


def note_verdicts(session: AsyncSession, verdicts: Mapping[str, int]) -> None:
    """Queue verdict counts for the observers (told after the commit, forgotten on rollback)."""
    pending: Counter[str] = session.info.setdefault(VERDICTS, Counter())
    pending.update(verdicts)


@sa_event.listens_for(Session, "after_commit")
def _tell(session: Session) -> None:
    started: int = session.info.pop(STARTED, 0)
    for wake in session.info.get(STARTED_OBSERVERS, ()) if started else ():
        try:
            wake(started)
        except Exception:
            logger.exception("replica observer failed")
    verdicts: Counter[str] | None = session.info.pop(VERDICTS, None)
    if not verdicts:
        return
    for observer in session.info.get(VERDICT_OBSERVERS, ()):
        try:
            observer(dict(verdicts))
        except Exception:  # an observer must never break a committed verdict
            logger.exception("verdict observer failed")


@sa_event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(VERDICTS, None)
    session.info.pop(STARTED, None)
