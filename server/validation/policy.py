"""What to do with a validated job, given its replicas' results so far: pure, no I/O, no clock.

The validator (server/validation/replication.py) groups the results that agree (by its comparator) and
asks :func:`decide`. A group counts one result per host owner: two hosts of one owner agreeing prove
nothing more than one (the claim keeps them apart; this keeps a race between two claims from counting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from common.schemas import Validation


class Action(StrEnum):
    ACCEPT = "accept"  # a group reached the quorum (or one trusted result stands alone)
    WAIT = "wait"  # replicas still out could reach the quorum
    MORE = "more"  # start ``spawn`` more replicas
    GIVE_UP = "give_up"  # no quorum is possible within the attempts allowed


@dataclass(frozen=True)
class Result:
    """One replica's result: which replica, the owner of the host that made it."""

    replica: str
    owner: str


@dataclass(frozen=True)
class Decision:
    action: Action
    accepted: Sequence[Result] = ()  # ACCEPT: the agreeing group, its first result is the job's result
    spawn: int = 0  # MORE: how many replicas to start
    disagree: bool = False  # results are in that do not agree
    reason: str = ""
    trusted: bool = False  # ACCEPT: one result accepted on its host's trust
    spot_check: bool = False  # a trusted host's result was sent for a check


@dataclass(frozen=True)
class Situation:
    """A validated job as it stands."""

    policy: Validation
    groups: Sequence[Sequence[Result]]  # results that agree, largest first
    outstanding: int  # replicas not finished (queued or running)
    made: int  # replicas ever started, whatever became of them
    trusted_host: bool = False  # adaptive: the only result so far comes from a host trusted for the app
    spot_draw: float = 1.0  # adaptive: a uniform draw in [0, 1): below spot_check means check it
    failed: int = 0  # replicas that ended without a result
    extra: dict[str, str] = field(default_factory=dict)


def owners(group: Sequence[Result]) -> int:
    """Distinct host owners in a group: what a quorum counts."""
    return len({r.owner for r in group})


def quorum_of(s: Situation) -> int:
    """Agreeing results needed (adaptive: two unless one trusted result may stand alone)."""
    return 2 if s.policy.policy == "adaptive" else s.policy.quorum


def decide(s: Situation) -> Decision:
    """The next step for a validated job."""
    groups = sorted(s.groups, key=owners, reverse=True)
    best = groups[0] if groups else []
    disagree = len(groups) > 1
    if (
        s.policy.policy == "adaptive"
        and s.made == 1
        and len(groups) == 1
        and len(best) == 1
        and s.trusted_host
    ):
        if s.spot_draw >= s.policy.spot_check:
            return Decision(Action.ACCEPT, best, trusted=True, reason="accepted on its host's trust")
        spot = True
    else:
        spot = False
    k = quorum_of(s)
    if owners(best) >= k:
        return Decision(Action.ACCEPT, best, disagree=disagree, reason=f"{owners(best)} results agree")
    missing = k - owners(best)
    room = s.policy.attempts_cap - s.made
    if s.outstanding >= missing:
        return Decision(Action.WAIT, disagree=disagree, spot_check=spot, reason=_waiting(s, k, best))
    if room <= 0:
        if s.outstanding:
            return Decision(Action.WAIT, disagree=disagree, reason=_waiting(s, k, best))
        return Decision(Action.GIVE_UP, disagree=disagree, reason=_no_quorum(s, k, groups))
    spawn = min(missing - s.outstanding, room)
    why = "spot check of a trusted host" if spot else _why_more(s, k, best, disagree)
    return Decision(Action.MORE, spawn=spawn, disagree=disagree, spot_check=spot, reason=why)


def _waiting(s: Situation, k: int, best: Sequence[Result]) -> str:
    return f"{owners(best)} of {k} agreeing results in, {s.outstanding} replica(s) running or queued"


def _why_more(s: Situation, k: int, best: Sequence[Result], disagree: bool) -> str:
    if disagree:
        return f"results disagree: best {owners(best)} of {k} agreeing; starting another replica"
    if s.failed and not best:
        return f"{s.failed} replica(s) failed without a result; starting another"
    return f"{owners(best)} of {k} agreeing results in; starting another replica"


def _no_quorum(s: Situation, k: int, groups: Sequence[Sequence[Result]]) -> str:
    sizes = ", ".join(str(owners(g)) for g in groups) or "none"
    return (
        f"no {k} agreeing results after {s.made} attempt(s) (the maximum): groups of agreeing results "
        f"{sizes}; {s.failed} failed without a result"
    )
