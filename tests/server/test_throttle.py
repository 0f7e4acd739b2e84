"""Login throttling: per login and per address, 429 with Retry-After, the real user not locked out,
known and unknown logins alike; and the bound on password hashing at once."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from common.errors import TooManyRequests
from server.throttle import LOGIN_BURST, LOGIN_REFILL, LoginThrottle, PasswordGate
from tests.conftest import PASSWORD

API = "/api/v1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_bucket_empties_then_refills() -> None:
    clock = Clock()
    t = LoginThrottle(login_burst=3, login_refill=10, address_burst=100, clock=clock)
    for _ in range(3):
        t.check("alice", "10.0.0.1")
        t.failed("alice", "10.0.0.1")
    with pytest.raises(TooManyRequests) as info:
        t.check("alice", "10.0.0.9")  # another address: the login itself is throttled
    assert 1 <= info.value.retry_after <= 10
    clock.now += 10
    t.check("alice", "10.0.0.9")  # one attempt regained


def test_address_bucket_covers_many_logins() -> None:
    t = LoginThrottle(address_burst=5, address_refill=60, login_burst=100, clock=Clock())
    for i in range(5):
        t.failed(f"user{i}", "10.0.0.1")
    with pytest.raises(TooManyRequests):
        t.check("someone-else", "10.0.0.1")
    t.check("someone-else", "10.0.0.2")


def test_a_trusted_address_is_not_locked_out() -> None:
    t = LoginThrottle(login_burst=2, login_refill=600, clock=Clock())
    t.succeeded("alice", "home")
    for _ in range(50):
        t.failed("alice", "attacker")
    t.check("alice", "home")  # no exception: alice's usual machine still gets in
    with pytest.raises(TooManyRequests):
        t.check("alice", "cafe")


def test_state_stays_bounded() -> None:
    t = LoginThrottle(max_entries=100, clock=Clock())
    for i in range(10_000):
        t.failed(f"login{i}", f"addr{i}")
        t.succeeded(f"login{i}", f"addr{i}")
    assert len(t._logins._items) <= 100 and len(t._trusted) <= 100


async def test_password_gate_answers_429_past_its_queue() -> None:
    gate = PasswordGate(slots=1, queue=2)
    release = asyncio.Event()
    entered = 0

    async def hold() -> None:
        nonlocal entered
        async with gate.slot():
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(3)]  # one in, two queued
    await asyncio.sleep(0.05)
    with pytest.raises(TooManyRequests, match="busy"):
        async with gate.slot():
            pass
    release.set()
    await asyncio.gather(*tasks)
    assert entered == 3


# --- against a real server, from several loopback addresses ---------------------------------------


@asynccontextmanager
async def _from(grid: Any, address: str) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    connector = aiohttp.TCPConnector(ssl=ctx, local_addr=(address, 0))
    async with aiohttp.ClientSession(base_url=grid.url, connector=connector) as session:
        yield session


async def _login(http: aiohttp.ClientSession, login: str, password: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{API}/auth/token", json={"login": login, "password": password}) as resp:
        doc = await resp.json(content_type=None)
        if resp.status == 429:
            assert resp.content_type == "application/problem+json"
            assert int(resp.headers["Retry-After"]) >= 1
        return resp.status, doc


async def test_guessing_is_throttled_without_locking_out_the_user(grid: Any) -> None:
    await grid.add_user("alice")
    async with _from(grid, "127.0.0.2") as home:
        assert (await _login(home, "alice", PASSWORD))[0] == 200  # alice's usual machine
    statuses: dict[str, list[int]] = {}
    for login, address in (("alice", "127.0.0.3"), ("nobody", "127.0.0.4")):
        async with _from(grid, address) as attacker:
            statuses[login] = [(await _login(attacker, login, "guess"))[0] for _ in range(LOGIN_BURST + 3)]
    # a known and an unknown login answer exactly alike: 401 until throttled, then 429
    assert statuses["alice"] == statuses["nobody"] == [401] * LOGIN_BURST + [429] * 3
    async with _from(grid, "127.0.0.5") as cafe:
        status, doc = await _login(cafe, "alice", PASSWORD)
        assert status == 429 and doc["retry_after"] <= LOGIN_REFILL  # a new machine waits, not long
    async with _from(grid, "127.0.0.2") as home:
        assert (await _login(home, "alice", PASSWORD))[0] == 200  # the usual one is not locked out
