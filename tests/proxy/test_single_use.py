"""Single-use tickets: the relay accepts each ticket (by jti) once, for authentication or a grant."""

from __future__ import annotations

import asyncssh
import pytest

from proxy.endpoints import RelayLink, Ticket
from proxy.relay import Relay
from proxy.replay import ALREADY_USED, FULL, SpentTickets
from proxy.tickets import TicketError

pytestmark = pytest.mark.timeout(30)


def _once(grid, token: str):
    async def source() -> Ticket:
        return Ticket(grid.address, grid.relay.host_key_line, token)

    return source


async def test_a_ticket_cannot_authenticate_a_second_connection(grid) -> None:
    token = grid.signer.token([])
    first = RelayLink(_once(grid, token))
    grid.links.append(first)
    await first.start()
    assert first.connected

    second = RelayLink(_once(grid, token))
    with pytest.raises(TicketError, match="refused the ticket") as info:
        await second.start()
    assert info.value.reason.endswith(f": {ALREADY_USED}")  # the banner's one-line reason
    await second.aclose()
    assert first.connected  # the refusal does not touch the connection that used it


async def test_a_ticket_cannot_be_granted_twice(grid) -> None:
    async with grid.ssh(grid.signer.token([])) as conn:
        token = grid.signer.token(["connect:x"])
        ok = await conn.run(f"grant {token}")
        assert (ok.exit_status, ok.stderr) == (0, "")
        again = await conn.run(f"grant {token}")
        assert (again.exit_status, again.stderr) == (1, f"grant refused: {ALREADY_USED}\n")


async def test_the_authentication_ticket_cannot_be_granted_afterwards(grid) -> None:
    token = grid.signer.token([])
    async with grid.ssh(token) as conn:
        reused = await conn.run(f"grant {token}")
        assert (reused.exit_status, reused.stderr) == (1, f"grant refused: {ALREADY_USED}\n")


async def test_a_granted_ticket_cannot_authenticate_afterwards(grid) -> None:
    token = grid.signer.token([])
    async with grid.ssh(grid.signer.token([])) as conn:
        assert (await conn.run(f"grant {token}")).exit_status == 0
    link = RelayLink(_once(grid, token))
    with pytest.raises(TicketError, match=ALREADY_USED):
        await link.start()
    await link.aclose()


async def test_a_ticket_without_jti_is_refused(grid) -> None:
    link = RelayLink(_once(grid, grid.signer.token([], jti=None)))
    with pytest.raises(TicketError, match="no jti"):
        await link.start()
    await link.aclose()
    async with grid.ssh(grid.signer.token([])) as conn:
        refused = await conn.run(f"grant {grid.signer.token(['connect:x'], jti=None)}")
        assert refused.exit_status == 1
        assert refused.stderr == "grant refused: ticket rejected: no jti (tickets are single-use)\n"


async def test_a_refused_ticket_is_not_spent(grid) -> None:
    """Only an accepted ticket is remembered: a typo in the user name does not burn it."""
    token = grid.signer.token([])
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            "127.0.0.1", grid.relay.port, username="root", password=token, known_hosts=None, config=None
        )
    async with grid.ssh(token) as conn:
        assert (await conn.run(f"grant {grid.signer.token([])}")).exit_status == 0


async def test_a_full_table_refuses_rather_than_grows(signer, host_key) -> None:
    relay = Relay(signer.public_pem, host_key, max_tickets=2)
    await relay.start("127.0.0.1", 0)
    try:
        async with asyncssh.connect(
            "127.0.0.1", relay.port, username="xw", password=signer.token([]), known_hosts=None, config=None
        ) as conn:
            assert (await conn.run(f"grant {signer.token([])}")).exit_status == 0
            full = await conn.run(f"grant {signer.token([])}")
            assert (full.exit_status, full.stderr) == (1, f"grant refused: {FULL}\n")
    finally:
        await relay.aclose()


def test_spent_tickets_are_forgotten_once_expired() -> None:
    now = 1000.0
    spent = SpentTickets(capacity=2, clock=lambda: now)
    spent.spend("a", until=1010.0)
    with pytest.raises(TicketError, match=ALREADY_USED):
        spent.spend("a", until=1010.0)
    spent.spend("b", until=1020.0)
    with pytest.raises(TicketError, match="too many"):
        spent.spend("c", until=1020.0)
    now = 1010.0  # "a" can no longer verify: it is forgotten, and its room is free again
    spent.spend("c", until=1030.0)
    assert "a" not in spent and "b" in spent and len(spent) == 2
    with pytest.raises(TicketError, match=ALREADY_USED):
        spent.spend("b", until=1020.0)
    now = 1030.0
    spent.prune()
    assert len(spent) == 0
