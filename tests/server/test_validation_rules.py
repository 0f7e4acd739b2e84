"""The pure rules of validation: what to do with a job's results so far (server/validation/policy.py),
and how a host's trust moves (server/validation/reliability.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.schemas import Validation
from server.validation.policy import Action, Result, Situation, decide
from server.validation.reliability import QUARANTINE, START_ERROR, Standing, judged

Q2 = Validation(policy="quorum", quorum=2)
ADAPTIVE = Validation(policy="adaptive")
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def results(*owners: str) -> list[Result]:
    return [Result(f"r{i}", o) for i, o in enumerate(owners)]


def test_a_quorum_of_agreeing_owners_is_accepted() -> None:
    d = decide(Situation(Q2, [results("a", "b")], outstanding=0, made=2))
    assert d.action is Action.ACCEPT and [r.owner for r in d.accepted] == ["a", "b"]


def test_two_hosts_of_one_owner_count_once() -> None:
    d = decide(Situation(Q2, [results("a", "a")], outstanding=0, made=2))
    assert d.action is Action.MORE and d.spawn == 1


def test_waiting_while_replicas_out_can_still_reach_the_quorum() -> None:
    d = decide(Situation(Q2, [results("a")], outstanding=1, made=2))
    assert d.action is Action.WAIT and not d.disagree


def test_a_tie_asks_for_one_more_and_says_they_disagree() -> None:
    d = decide(Situation(Q2, [results("a"), results("b")], outstanding=0, made=2))
    assert d.action is Action.MORE and d.spawn == 1 and d.disagree


def test_the_largest_group_decides_with_a_majority() -> None:
    q = Validation(policy="quorum", quorum=2, replicas=3)
    d = decide(Situation(q, [results("a"), results("b", "c")], outstanding=0, made=3))
    assert d.action is Action.ACCEPT and {r.owner for r in d.accepted} == {"b", "c"} and d.disagree


def test_no_quorum_within_the_cap_gives_up_with_the_reason() -> None:
    q = Validation(policy="quorum", quorum=2, max_attempts=3)
    d = decide(Situation(q, [results("a"), results("b"), results("c")], outstanding=0, made=3))
    assert d.action is Action.GIVE_UP
    assert "no 2 agreeing results after 3 attempt(s)" in d.reason


def test_at_the_cap_replicas_still_out_are_waited_for() -> None:
    q = Validation(policy="quorum", quorum=2, max_attempts=3)
    d = decide(Situation(q, [results("a"), results("b")], outstanding=1, made=3))
    assert d.action is Action.WAIT


def test_failed_replicas_are_replaced_within_the_cap() -> None:
    d = decide(Situation(Q2, [], outstanding=0, made=2, failed=2))
    assert d.action is Action.MORE and d.spawn == 2 and "failed" in d.reason
    assert decide(Situation(Q2, [], outstanding=0, made=Q2.attempts_cap, failed=5)).action is Action.GIVE_UP


@pytest.mark.parametrize(("draw", "accepted"), [(0.5, True), (0.05, False)])
def test_adaptive_accepts_a_trusted_host_alone_unless_spot_checked(draw: float, accepted: bool) -> None:
    d = decide(Situation(ADAPTIVE, [results("a")], outstanding=0, made=1, trusted_host=True, spot_draw=draw))
    if accepted:
        assert d.action is Action.ACCEPT and d.trusted
    else:
        assert d.action is Action.MORE and d.spawn == 1 and d.spot_check


def test_adaptive_wants_two_from_an_untrusted_host_and_after_a_recheck() -> None:
    untrusted = decide(Situation(ADAPTIVE, [results("a")], outstanding=0, made=1, trusted_host=False))
    assert untrusted.action is Action.MORE and untrusted.spawn == 1
    rechecked = decide(Situation(ADAPTIVE, [results("a")], outstanding=1, made=2, trusted_host=True))
    assert rechecked.action is Action.WAIT  # a second replica was made: one result is not enough
    assert decide(Situation(ADAPTIVE, [results("a", "b")], outstanding=0, made=2)).action is Action.ACCEPT


def test_xwreplica_means_n_copies_and_a_majority() -> None:
    v = Validation.copies(3)
    assert (v.first_wave, v.quorum, v.attempts_cap) == (3, 2, 6)
    assert Validation.copies(2).quorum == 2


def test_inconsistent_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        Validation(policy="quorum", quorum=3, replicas=2)
    with pytest.raises(ValueError, match="max_attempts"):
        Validation(policy="quorum", quorum=3, max_attempts=2)


# --- reliability -------------------------------------------------------------------------------------


def run(s: Standing, verdicts: str, trust_after: int = 10) -> Standing:
    for v in verdicts:
        s = judged(s, v == "v", NOW, trust_after=trust_after, app_name="app").standing
    return s


def test_trust_comes_after_enough_agreeing_results_in_a_row() -> None:
    assert not run(Standing(), "v" * 9).trusted(NOW)
    assert run(Standing(), "v" * 10).trusted(NOW)
    assert run(Standing(), "v" * 10).error_rate < START_ERROR


def test_one_invalid_result_ends_trust_and_says_since_when_it_was_trusted() -> None:
    trusted = run(Standing(), "v" * 12)
    out = judged(trusted, False, NOW, trust_after=10, app_name="app")
    assert out.lost_trust == trusted.trusted_since and not out.standing.trusted(NOW)
    assert out.standing.valid_streak == 0 and not out.quarantined


def test_the_error_rate_decays_and_a_liar_is_quarantined_with_the_reason() -> None:
    s = run(Standing(), "ii")
    assert not s.quarantined(NOW)
    out = judged(s, False, NOW, trust_after=10, app_name="blast")
    assert out.quarantined and out.standing.quarantined_until == NOW + QUARANTINE
    assert "quarantined for blast" in (out.standing.reason or "") and "3 invalid" in (
        out.standing.reason or ""
    )
    # back from quarantine with a high error rate, one more wrong result sends it back
    later = NOW + QUARANTINE + timedelta(seconds=1)
    again = judged(out.standing, False, later, trust_after=10, app_name="blast")
    assert again.quarantined


def test_an_occasional_error_does_not_quarantine_a_good_host() -> None:
    s = run(Standing(), "v" * 20 + "i" + "v" * 20 + "i")
    assert not s.quarantined(NOW) and s.error_rate < 0.3
