"""server.authz: every level x relation x perm x mode x object type, and the cases XWHEP got wrong.

Expectations come from ``oracle`` below, written from the authz module docstring (the spec): effective
bits are the union of the other triplet, the owner triplet for the owner and the group triplet for a
member of the object's (non-null) group; SUPER_USER may do everything, ADVANCED_USER everything in its
own group, WORKER_USER only reads (via the bits or the sticky bit). No authz internals are used.
"""

from __future__ import annotations

import itertools

import pytest

from common.enums import UserRights as R
from common.errors import Forbidden, NotFound
from common.rights import Perm, parse_mode
from server.authz import (
    Actor,
    can,
    can_administer,
    can_raw,
    default_rights,
    require,
    require_may_create_user,
    require_may_insert,
    require_may_list,
)
from server.db.models import OWNED_MODELS, OwnedMixin

ME = "actor-uid"
SOMEONE = "someone-uid"
G1, G2 = "group-1", "group-2"

# relation -> (actor's group, object's owner, object's group, actor owns it, actor is in its group)
RELATIONS: dict[str, tuple[str | None, str | None, str | None, bool, bool]] = {
    "owner": (G1, ME, G1, True, True),
    "owner-other-group": (G1, ME, G2, True, False),
    "group": (G1, SOMEONE, G1, False, True),
    "other": (G1, SOMEONE, G2, False, False),
    "nogroup": (None, SOMEONE, None, False, False),
    "owner-nogroup": (None, ME, None, True, False),
    "ownerless": (G1, None, G2, False, False),
}
LEVELS = [R.SUPER_USER, R.ADVANCED_USER, R.STANDARD_USER, R.WORKER_USER]
PERMS = [Perm.READ, Perm.WRITE, Perm.EXECUTE]
MODES = [0o700, 0o750, 0o755, 0o711, 0o704, 0o070, 0o007, 0o1700]
BIT = {Perm.READ: 4, Perm.WRITE: 2, Perm.EXECUTE: 1}


def oracle(level: R, is_owner: bool, in_group: bool, perm: Perm, mode: int) -> bool:
    if level is R.SUPER_USER:
        return True
    if level is R.ADVANCED_USER and in_group:
        return True
    sticky, owner, group, other = (int(d) for d in f"{mode:04o}")
    digits = [other] + ([owner] if is_owner else []) + ([group] if in_group else [])
    granted = any(d & BIT[perm] for d in digits)
    if level is R.WORKER_USER:
        return perm is Perm.READ and (granted or sticky == 1)
    return granted


def actor(level: R, group: str | None, uid: str = ME) -> Actor:
    return Actor(uid=uid, login=f"{level.value.lower()}-login", rights=level, group_uid=group)


def obj(model: type[OwnedMixin], owner: str | None, group: str | None, mode: int) -> OwnedMixin:
    return model(uid="object-uid", owner_uid=owner, group_uid=group, access_rights=mode)  # type: ignore[call-arg]


@pytest.mark.parametrize("model", list(OWNED_MODELS.values()), ids=list(OWNED_MODELS))
@pytest.mark.parametrize("mode", MODES, ids=[f"{m:04o}" for m in MODES])
@pytest.mark.parametrize("perm", PERMS, ids=[p.name for p in PERMS])
@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("level", LEVELS, ids=[lv.value for lv in LEVELS])
def test_matrix(level: R, relation: str, perm: Perm, mode: int, model: type[OwnedMixin]) -> None:
    actor_group, owner, group, is_owner, in_group = RELATIONS[relation]
    who = actor(level, actor_group)
    thing = obj(model, owner, group, mode)
    expected = oracle(level, is_owner, in_group, perm, mode)
    assert can(who, thing, perm) is expected
    assert can_raw(who, owner, group, mode, perm) is expected
    if expected:
        require(who, thing, perm, model.__name__)
    elif perm is not Perm.READ and oracle(level, is_owner, in_group, Perm.READ, mode):
        with pytest.raises(Forbidden):
            require(who, thing, perm, model.__name__)
    else:
        with pytest.raises(NotFound):
            require(who, thing, perm, model.__name__)


# Literal cases, so that a mistake in the oracle itself cannot hide a wrong policy.
@pytest.mark.parametrize(
    ("level", "relation", "perm", "mode", "expected"),
    [
        (R.STANDARD_USER, "group", Perm.READ, 0o750, True),
        (R.STANDARD_USER, "group", Perm.WRITE, 0o750, False),
        (R.STANDARD_USER, "other", Perm.READ, 0o750, False),
        (R.STANDARD_USER, "other", Perm.READ, 0o704, True),
        (R.STANDARD_USER, "owner", Perm.WRITE, 0o070, True),  # union: the owner also gets group bits
        (R.STANDARD_USER, "owner-other-group", Perm.READ, 0o070, False),
        (R.STANDARD_USER, "owner-other-group", Perm.READ, 0o007, True),
        (R.STANDARD_USER, "owner-nogroup", Perm.EXECUTE, 0o711, True),
        (R.STANDARD_USER, "owner-nogroup", Perm.READ, 0o070, False),
        (R.STANDARD_USER, "nogroup", Perm.READ, 0o070, False),
        (R.STANDARD_USER, "ownerless", Perm.READ, 0o700, False),
        (R.WORKER_USER, "other", Perm.READ, 0o1700, True),
        (R.WORKER_USER, "other", Perm.EXECUTE, 0o1700, False),
        (R.WORKER_USER, "owner", Perm.WRITE, 0o700, False),
        (R.WORKER_USER, "group", Perm.READ, 0o750, True),
        (R.WORKER_USER, "nogroup", Perm.READ, 0o070, False),
        (R.ADVANCED_USER, "group", Perm.WRITE, 0o700, True),
        (R.ADVANCED_USER, "other", Perm.READ, 0o700, False),
        (R.ADVANCED_USER, "nogroup", Perm.READ, 0o070, False),
        (R.SUPER_USER, "nogroup", Perm.WRITE, 0o000, True),
    ],
)
def test_literal_cases(level: R, relation: str, perm: Perm, mode: int, expected: bool) -> None:
    actor_group, owner, group, is_owner, in_group = RELATIONS[relation]
    assert oracle(level, is_owner, in_group, perm, mode) is expected
    assert can_raw(actor(level, actor_group), owner, group, mode, perm) is expected


@pytest.mark.parametrize("level", [R.ADVANCED_USER, R.STANDARD_USER, R.WORKER_USER])
@pytest.mark.parametrize("perm", PERMS)
def test_xwhep_bug_null_group_opens_nothing(level: R, perm: Perm) -> None:
    """(a) XWHEP opened the group bits of a groupless object to every groupless user."""
    for model in OWNED_MODELS.values():
        thing = obj(model, SOMEONE, None, 0o070)
        assert not can(actor(level, None), thing, perm)
        assert not can(actor(level, G1), thing, perm)
        with pytest.raises(NotFound):
            require(actor(level, None), thing, perm, "object")


@pytest.mark.parametrize(
    ("text", "perm", "expected"),
    [
        ("0x755", Perm.READ, True),
        ("755", Perm.WRITE, False),
        ("0x700", Perm.READ, False),
        ("go+rx", Perm.EXECUTE, True),
    ],
)
def test_xwhep_bug_decimal_chmod(text: str, perm: Perm, expected: bool) -> None:
    """(b) chmod 0x755 means rwxr-xr-x, not decimal 755 (see tests/common/test_rights.py)."""
    mode = parse_mode(text, current=0o700)
    assert can_raw(actor(R.STANDARD_USER, G1), SOMEONE, G2, mode, perm) is expected


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o007, 0o070, 0o700])
@pytest.mark.parametrize("relation", list(RELATIONS))
def test_xwhep_bug_worker_never_writes_or_executes(mode: int, relation: str) -> None:
    """(c) even on 0777 objects, worker users read only."""
    actor_group, owner, group, _, _ = RELATIONS[relation]
    worker = actor(R.WORKER_USER, actor_group)
    for model in OWNED_MODELS.values():
        thing = obj(model, owner, group, mode)
        assert not can(worker, thing, Perm.WRITE)
        assert not can(worker, thing, Perm.EXECUTE)
    assert can_raw(worker, SOMEONE, G2, 0o777, Perm.READ)
    with pytest.raises(Forbidden):
        require(worker, obj(OWNED_MODELS["app"], SOMEONE, G2, 0o777), Perm.WRITE, "app")
    with pytest.raises(Forbidden):
        require_may_list(worker, "apps")
    with pytest.raises(Forbidden):
        require_may_insert(worker, "apps")


@pytest.mark.parametrize("level", [R.SUPER_USER, R.ADVANCED_USER, R.STANDARD_USER])
def test_only_workers_are_refused_listing_and_inserting(level: R) -> None:
    require_may_list(actor(level, G1), "apps")
    require_may_insert(actor(level, G1), "apps")
    require_may_list(actor(level, None), "apps")


def test_xwhep_bug_group_admin_has_no_power_over_other_groups() -> None:
    """(d) a group administrator is a plain user outside its own group."""
    admin = actor(R.ADVANCED_USER, G1)
    for model in OWNED_MODELS.values():
        private = obj(model, SOMEONE, G2, 0o700)
        for perm in PERMS:
            assert not can(admin, private, perm)
        assert not can_administer(admin, private)
        with pytest.raises(NotFound):
            require(admin, private, Perm.WRITE, "object")
        public = obj(model, SOMEONE, G2, 0o755)
        assert can(admin, public, Perm.READ)
        assert not can(admin, public, Perm.WRITE)
        with pytest.raises(Forbidden):
            require(admin, public, Perm.WRITE, "object")
        own = obj(model, SOMEONE, G1, 0o700)
        assert all(can(admin, own, perm) for perm in PERMS)
        assert can_administer(admin, own)


@pytest.mark.parametrize(
    ("mode", "perm", "error", "verb"),
    [
        (0o700, Perm.READ, NotFound, None),
        (0o700, Perm.WRITE, NotFound, None),
        (0o700, Perm.EXECUTE, NotFound, None),
        (0o704, Perm.WRITE, Forbidden, "modify"),
        (0o704, Perm.EXECUTE, Forbidden, "execute"),
        (0o705, Perm.WRITE, Forbidden, "modify"),
        (0o706, Perm.EXECUTE, Forbidden, "execute"),
        (0o701, Perm.WRITE, NotFound, None),  # executable but not readable: still hidden
        (0o703, Perm.READ, NotFound, None),
    ],
)
def test_require_hides_unreadable_objects(
    mode: int, perm: Perm, error: type[Exception], verb: str | None
) -> None:
    """(e) NotFound for what the actor cannot read, Forbidden when readable but the perm is missing."""
    thing = obj(OWNED_MODELS["data"], SOMEONE, G2, mode)
    with pytest.raises(error) as info:
        require(actor(R.STANDARD_USER, G1), thing, perm, "data")
    assert type(info.value) is error
    if verb:
        assert f"may not {verb} data object-uid" in str(info.value)
    else:
        assert "object-uid" in str(info.value)


@pytest.mark.parametrize("group", [G1, G2, None], ids=["own-group", "other-group", "no-group"])
@pytest.mark.parametrize("target", LEVELS, ids=[lv.value for lv in LEVELS])
@pytest.mark.parametrize("level", LEVELS, ids=[lv.value for lv in LEVELS])
def test_require_may_create_user(level: R, target: R, group: str | None) -> None:
    """(f) super users create anyone; group admins create standard/worker users in their own group."""
    allowed = level is R.SUPER_USER or (
        level is R.ADVANCED_USER and target in (R.STANDARD_USER, R.WORKER_USER) and group == G1
    )
    if allowed:
        require_may_create_user(actor(level, G1), target, group)
    else:
        with pytest.raises(Forbidden):
            require_may_create_user(actor(level, G1), target, group)


@pytest.mark.parametrize("target", [R.STANDARD_USER, R.WORKER_USER])
def test_groupless_admin_cannot_create_groupless_users(target: R) -> None:
    with pytest.raises(Forbidden):
        require_may_create_user(actor(R.ADVANCED_USER, None), target, None)


@pytest.mark.parametrize("mode", [0o000, 0o700, 0o777])
@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("level", LEVELS, ids=[lv.value for lv in LEVELS])
def test_can_administer(level: R, relation: str, mode: int) -> None:
    """(g) the owner, a super user, or the administrator of the object's (non-null) group; never the bits."""
    actor_group, owner, group, is_owner, in_group = RELATIONS[relation]
    expected = level is R.SUPER_USER or is_owner or (level is R.ADVANCED_USER and in_group)
    for model in OWNED_MODELS.values():
        assert can_administer(actor(level, actor_group), obj(model, owner, group, mode)) is expected


@pytest.mark.parametrize("level", LEVELS, ids=[lv.value for lv in LEVELS])
def test_default_rights_and_is_admin(level: R) -> None:
    who = actor(level, G1)
    assert default_rights(who) == (0o755 if level is R.SUPER_USER else 0o700)
    assert who.is_admin is (level is R.SUPER_USER)


def test_matrix_covers_every_owned_model() -> None:
    assert set(OWNED_MODELS) == {"user", "usergroup", "app", "data", "work", "host", "proxy"}
    assert len(list(itertools.product(LEVELS, RELATIONS, PERMS, MODES, OWNED_MODELS))) == 4 * 7 * 3 * 8 * 7
