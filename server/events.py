"""The event log: every state change writes who, when, what, from -> to, in the same transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from server.authz import Actor
from server.db.models import Event, OwnedMixin


def record(
    session: AsyncSession,
    actor: Actor | None,
    kind: str,
    obj: OwnedMixin,
    action: str,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    reason: str | None = None,
) -> None:
    """Add an event row to ``session`` (committed with the change it describes)."""
    session.add(
        Event(
            actor_uid=actor.uid if actor else None,
            kind=kind,
            object_uid=obj.uid,
            object_owner_uid=obj.owner_uid,
            action=action,
            from_status=from_status,
            to_status=to_status,
            reason=reason[:1024] if reason else None,
        )
    )
