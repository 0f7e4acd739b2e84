"""Access policy: who may read, write or execute which object. Every rule of the server lives here.

Effective bits of an actor on an object are the union of what applies to it (XWHEP's reading, kept):
the owner triplet if the actor owns the object, the group triplet if the object's group is the actor's
group (an object without a group opens its group bits to nobody: XWHEP opened them to all), and the
other triplet always. On top of that, per rights level:

- SUPER_USER: everything.
- ADVANCED_USER (group administrator): everything on objects of its own group.
- STANDARD_USER: the bits, nothing more.
- WORKER_USER: read only, granted by the bits or by the sticky bit; never write or execute; no listing,
  no insert. Job updates by workers are checked by the worker protocol (the job must be assigned to them).

:func:`can` decides for one loaded object and :func:`visible` builds the same rule as a SQL clause for
lists; a test checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, false, or_, true

from common.enums import UserRights
from common.errors import Forbidden, NotFound
from common.rights import STICKY, Perm
from server.db.models import Event, OwnedMixin


@dataclass(frozen=True)
class Actor:
    """The authenticated requester."""

    uid: str
    login: str
    rights: UserRights
    group_uid: str | None
    auth: str = "token"  # "token" | "oidc" | "certificate" | "host" | "session" (the dashboard)
    host_uid: str | None = None  # set when the requester is a worker host speaking with its own credential
    idp: str | None = None  # the identity provider's issuer, for a token from an OpenID Connect sign-in

    @property
    def is_admin(self) -> bool:
        return self.rights is UserRights.SUPER_USER


def _bits(actor: Actor, owner_uid: str | None, group_uid: str | None, mode: int) -> int:
    if actor.rights is UserRights.SUPER_USER:
        return 7
    same_group = group_uid is not None and group_uid == actor.group_uid
    if actor.rights is UserRights.ADVANCED_USER and same_group:
        return 7
    bits = mode & 7
    if owner_uid is not None and owner_uid == actor.uid:
        bits |= (mode >> 6) & 7
    if same_group:
        bits |= (mode >> 3) & 7
    if actor.rights is UserRights.WORKER_USER:
        readable = bool(bits & Perm.READ) or bool(mode & STICKY)
        return int(Perm.READ) if readable else 0
    return bits


def can(actor: Actor, obj: OwnedMixin, perm: Perm) -> bool:
    """Whether ``actor`` holds ``perm`` on ``obj``."""
    return bool(_bits(actor, obj.owner_uid, obj.group_uid, obj.access_rights) & perm)


def can_raw(actor: Actor, owner_uid: str | None, group_uid: str | None, mode: int, perm: Perm) -> bool:
    """:func:`can` for an object that is not loaded (used by tests and by the matrix)."""
    return bool(_bits(actor, owner_uid, group_uid, mode) & perm)


def visible(actor: Actor, model: type[OwnedMixin], perm: Perm = Perm.READ) -> ColumnElement[bool]:
    """A WHERE clause equal to :func:`can` for every row of ``model``."""
    if actor.rights is UserRights.SUPER_USER:
        return true()
    mode = model.access_rights
    p = int(perm)
    if actor.rights is UserRights.WORKER_USER:
        if perm is not Perm.READ:
            return false()
        p = int(Perm.READ)
    conds: list[ColumnElement[bool]] = [
        mode.op("&")(p) != 0,
        and_(model.owner_uid == actor.uid, mode.op("&")(p << 6) != 0),
    ]
    if actor.group_uid is not None:
        if actor.rights is UserRights.ADVANCED_USER:
            conds.append(model.group_uid == actor.group_uid)
        else:
            conds.append(and_(model.group_uid == actor.group_uid, mode.op("&")(p << 3) != 0))
    if actor.rights is UserRights.WORKER_USER:
        conds.append(mode.op("&")(STICKY) != 0)
    return or_(*conds)


def visible_events(actor: Actor) -> ColumnElement[bool]:
    """The events ``actor`` may read: all for super users, else those on its objects or by itself."""
    if actor.rights is UserRights.SUPER_USER:
        return true()
    return or_(Event.object_owner_uid == actor.uid, Event.actor_uid == actor.uid)


def require(actor: Actor, obj: OwnedMixin, perm: Perm, what: str) -> None:
    """Raise unless ``actor`` holds ``perm`` on ``obj``.

    An object the actor cannot even read is reported as not found, so its existence does not leak.
    """
    if can(actor, obj, perm):
        return
    if perm is not Perm.READ and can(actor, obj, Perm.READ):
        verb = {Perm.WRITE: "modify", Perm.EXECUTE: "execute"}[perm]
        raise Forbidden(f"{actor.login} may not {verb} {what} {obj.uid} (rights {obj.access_rights:04o})")
    raise NotFound(f"no {what} {obj.uid} visible to {actor.login}")


def can_administer(actor: Actor, obj: OwnedMixin) -> bool:
    """Owner-level control (chmod): the owner, a super user, or the group administrator of its group."""
    if actor.rights is UserRights.SUPER_USER or obj.owner_uid == actor.uid:
        return True
    return (
        actor.rights is UserRights.ADVANCED_USER
        and obj.group_uid is not None
        and obj.group_uid == actor.group_uid
    )


def require_may_list(actor: Actor, what: str) -> None:
    """Worker users cannot list anything."""
    if actor.rights is UserRights.WORKER_USER:
        raise Forbidden(f"worker users cannot list {what}")


def require_may_insert(actor: Actor, what: str) -> None:
    """Worker users cannot insert anything."""
    if actor.rights is UserRights.WORKER_USER:
        raise Forbidden(f"worker users cannot create {what}")


_LEVEL = {
    UserRights.WORKER_USER: 0,
    UserRights.STANDARD_USER: 1,
    UserRights.ADVANCED_USER: 2,
    UserRights.SUPER_USER: 3,
}


def require_may_create_user(actor: Actor, rights: UserRights, group_uid: str | None) -> None:
    """Super users create anyone; group administrators create standard and worker users in their group."""
    if actor.rights is UserRights.SUPER_USER:
        return
    if actor.rights is not UserRights.ADVANCED_USER:
        raise Forbidden(f"{actor.login} ({actor.rights.value}) may not create users")
    if _LEVEL[rights] >= _LEVEL[UserRights.ADVANCED_USER]:
        raise Forbidden(f"a group administrator may not create a {rights.value}")
    if group_uid is None or group_uid != actor.group_uid:
        raise Forbidden("a group administrator creates users in its own group only")


def level(rights: UserRights) -> int:
    """The rank of a rights level (worker < standard < group administrator < super user)."""
    return _LEVEL[rights]


def may_manage_user(
    actor: Actor, target_uid: str, target_rights: UserRights, target_group: str | None
) -> bool:
    """Whether ``actor`` may change or delete another user's account (password, email, level, certificates).

    Super users manage everyone. A group administrator manages the users of its own group whose level is
    below its own, judged on the target's current level: nobody manages a user of a higher level, and a
    group administrator never manages a peer. Nobody manages itself through this rule.
    """
    if target_uid == actor.uid:
        return False
    if actor.rights is UserRights.SUPER_USER:
        return True
    return (
        actor.rights is UserRights.ADVANCED_USER
        and target_group is not None
        and target_group == actor.group_uid
        and _LEVEL[target_rights] < _LEVEL[UserRights.ADVANCED_USER]
    )


def require_may_manage_user(
    actor: Actor, target_uid: str, target_login: str, target_rights: UserRights, target_group: str | None
) -> None:
    """Raise Forbidden unless :func:`may_manage_user`."""
    if not may_manage_user(actor, target_uid, target_rights, target_group):
        raise Forbidden(f"{actor.login} ({actor.rights.value}) may not manage {target_login}")


def default_rights(actor: Actor) -> int:
    """Rights of a new object when the request names none: private, public for super users' apps."""
    return 0o755 if actor.rights is UserRights.SUPER_USER else 0o700
