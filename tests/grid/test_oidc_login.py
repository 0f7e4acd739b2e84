"""OpenID Connect end to end: `xwlogin` (browser and device flows) -> `xwsubmit` -> `xwresults`.

Everything is real and separate: the server over TLS, a worker process, the project's OpenID provider
(tests/oidc/provider.py) on 127.0.0.1, and each `xw*` command a subprocess with its own token cache.
The browser step is tests/oidc/browser.py: as `$BROWSER` for the loopback flow, or filling the device
page for the device flow.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.enums import UserRights
from common.schemas import UserIn
from server.oidc.config import ProviderConfig
from tests.grid.conftest import LocalGrid, kill_leftovers
from tests.oidc.browser import device_approve, write_browser_command
from tests.oidc.iam import discovery, make_public_client, make_user
from tests.ports import free_port

BIN = Path(sys.executable).parent


@pytest.fixture
async def oidc_local(tmp_path: Path, grid_factory: Any, oidc_provider: Any) -> AsyncIterator[LocalGrid]:
    """A server trusting the test provider (new people become users), and one worker."""
    trust = ProviderConfig(name="test", issuer=oidc_provider.issuer, client_id="xwhep-cli", create_users=True)
    g = await grid_factory(alive_period=0.5, alive_timeout=3.0, longpoll=5.0, oidc=(trust,))
    await g.admin.create_user(
        UserIn(login="worker", password="worker-password", rights=UserRights.WORKER_USER)
    )
    conf = g.write_client_conf(tmp_path / "worker.conf", login="worker", password="worker-password")
    work_root = Path(tempfile.mkdtemp(prefix="xwgrid-"))
    work_root.chmod(0o711)
    lg = LocalGrid(g, tmp_path, conf, work_root, relay=None, relay_port=0)  # type: ignore[arg-type]
    try:
        await lg.add_worker("w1")
        yield lg
    finally:
        await lg.stop_all()
        kill_leftovers(work_root)
        shutil.rmtree(work_root, ignore_errors=True)


class Person:
    """One person's shell: a config naming only the server (no password, no certificate) and a cache."""

    def __init__(self, lg: LocalGrid, name: str, password: str) -> None:
        self.conf = lg.grid.write_client_conf(lg.tmp / f"{name}.conf")  # type: ignore[attr-defined]
        self.cache = lg.tmp / f"{name}-cache" / "tokens.json"
        self.env = {
            **os.environ,
            "XW_TOKEN_CACHE": str(self.cache),
            "BROWSER": write_browser_command(lg.tmp),
            "XW_TEST_BROWSER_LOGIN": name,
            "XW_TEST_BROWSER_PASSWORD": password,
        }
        for key in ("XW_CONFIG", "XW_LOGIN", "XW_PASSWORD", "XW_SERVER", "DISPLAY"):
            self.env.pop(key, None)

    async def start(self, cmd: str, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            str(BIN / cmd),
            "--xwconfig",
            str(self.conf),
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, cmd: str, *args: str, expect: int = 0, timeout: float = 60) -> tuple[str, str]:
        proc = await self.start(cmd, *args)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        text, errors = out.decode(), err.decode()
        assert proc.returncode == expect, (cmd, args, proc.returncode, text, errors)
        return text, errors


def _the_error(stderr: str) -> str:
    """The one error line of a failed command (its prompts, like the URL to visit, may precede it)."""
    (line,) = [x for x in stderr.splitlines() if x.startswith("xwlogin: error:")]
    return line


async def _sweep_as(person: Person, lg: LocalGrid, label: str) -> str:
    """Submit a job as ``person`` with the CLI and fetch its result with xwresults; its stdout."""
    out, _ = await person.run("xwsubmit", "--xwlabel", label, "echo-app", "hello", label)
    assert out.strip().startswith("xw://"), out
    results = lg.tmp / f"results-{label}"
    await person.run("xwresults", "--xwwait", "--xwtimeout", "60", "--xwout", str(results), label, timeout=90)
    return (results / label / "stdout.txt").read_text()


async def _public_echo_app(lg: LocalGrid) -> None:
    await lg.script_app(lg.admin, "echo-app", 'echo "$@"\n', rights="0755")


async def test_browser_login_then_submit_and_results_as_the_signed_in_person(
    oidc_local: LocalGrid, oidc_provider: Any
) -> None:
    lg = oidc_local
    await _public_echo_app(lg)
    alice = Person(lg, "alice", "alice-password")
    # nothing configured, nothing cached: commands say how to sign in
    _, err = await alice.run("xwworks", expect=1)
    assert "xwlogin" in err and len(err.strip().splitlines()) == 1, err
    out, _ = await alice.run("xwlogin")
    assert f"as alice via oidc: {oidc_provider.issuer}" in out
    assert alice.cache.stat().st_mode & 0o777 == 0o600
    assert alice.cache.parent.stat().st_mode & 0o777 == 0o700
    out, _ = await alice.run("xwping")
    assert "pong: alice" in out and f"via oidc: {oidc_provider.issuer}" in out
    assert (await _sweep_as(alice, lg, "b1")).strip() == "hello b1"
    jobs = [j for j in await lg.admin.jobs() if j.label == "b1"]
    owners = {u.uid: u.login for u in await lg.admin.users()}
    assert jobs == [] or owners[jobs[0].owner] == "alice"  # xwresults erased it: it was alice's
    events = await lg.admin.events()
    assert any(e.action == "create" and "first sign-in" in (e.reason or "") for e in events)
    out, _ = await alice.run("xwlogout")
    assert "Signed out" in out
    _, err = await alice.run("xwping", expect=1)
    assert "xwlogin" in err


async def test_an_expired_xwhep_token_is_renewed_silently_through_the_refresh_token(
    oidc_local: LocalGrid, oidc_provider: Any
) -> None:
    lg = oidc_local
    alice = Person(lg, "alice", "alice-password")
    await alice.run("xwlogin")

    cached = json.loads(alice.cache.read_text())
    # age the cached xwhep token: the next command must refresh at the provider and exchange again
    (entry,) = cached["logins"].values()
    old_refresh, entry["expires_at"] = entry["refresh_token"], 0
    alice.cache.write_text(json.dumps(cached))
    alice.cache.chmod(0o600)
    before = sum(1 for r in oidc_provider.requests if r.startswith("POST /token"))
    out, _ = await alice.run("xwping")
    assert "pong: alice" in out
    assert sum(1 for r in oidc_provider.requests if r.startswith("POST /token")) == before + 1
    (renewed,) = json.loads(alice.cache.read_text())["logins"].values()
    assert renewed["expires_at"] > 0 and renewed["refresh_token"] != old_refresh  # rotated, stored


async def test_device_login_then_submit_and_results(oidc_local: LocalGrid, oidc_provider: Any) -> None:
    lg = oidc_local
    await _public_echo_app(lg)
    oidc_provider.add_user("bob", "bob-password")
    bob = Person(lg, "bob", "bob-password")
    proc = await bob.start("xwlogin", "--device", "--timeout", "60")
    assert proc.stderr is not None
    text = ""
    while "enter the code" not in text:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, f"xwlogin ended before printing a code: {text}"
        text += line.decode()
    found = re.search(r"visit (\S+) and enter the code (\S+)", text)
    assert found, text
    await asyncio.to_thread(device_approve, found.group(1), found.group(2), "bob", "bob-password")
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)
    assert f"as bob via oidc: {oidc_provider.issuer}" in out.decode()
    assert (await _sweep_as(bob, lg, "d1")).strip() == "hello d1"


async def test_a_refused_sign_in_says_why_in_one_line_and_caches_nothing(
    oidc_local: LocalGrid, oidc_provider: Any
) -> None:
    lg = oidc_local
    alice = Person(lg, "alice", "alice-password")
    oidc_provider.tamper(aud="someone-else")
    _, err = await alice.run("xwlogin", expect=1)
    assert _the_error(err).endswith("ID token is for audience 'someone-else', not for xwhep-cli"), err
    assert not alice.cache.exists() or "alice" not in alice.cache.read_text()
    assert "alice" not in {u.login for u in await lg.admin.users()}
    oidc_provider.untamper()
    oidc_provider.down()
    _, err = await alice.run("xwlogin", "--timeout", "20", expect=1, timeout=40)
    assert oidc_provider.issuer in _the_error(err), err


async def test_interoperability_with_pytest_iam_a_provider_nobody_here_wrote(
    tmp_path: Path, grid_factory: Any, iam: Any
) -> None:
    """Canaille (pytest-iam) checks PKCE at the token endpoint, requires a nonce, signs RS512 and
    matches redirect URIs exactly (hence --port); its refreshes carry no ID token, so when the xwhep
    token runs out the person is told to sign in again, in one line."""
    port = free_port()
    client = make_public_client(iam, f"http://127.0.0.1:{port}/callback")
    user = make_user(iam, "carol-password")
    issuer = discovery(iam)["issuer"]
    trust = ProviderConfig(
        name="canaille", issuer=issuer, client_id=client.client_id, login_claim="sub", create_users=True
    )
    g = await grid_factory(oidc=(trust,))
    lg = LocalGrid(g, tmp_path, tmp_path / "unused.conf", tmp_path, relay=None, relay_port=0)  # type: ignore[arg-type]
    carol = Person(lg, user.user_name, "carol-password")
    out, _ = await carol.run("xwlogin", "--port", str(port))
    assert f"as {user.user_name} via oidc: {issuer}" in out
    out, _ = await carol.run("xwping")
    assert f"via oidc: {issuer}" in out
    await lg.script_app(g.admin, "echo-app", 'echo "$@"\n', rights="0755")
    out, _ = await carol.run("xwsubmit", "--xwlabel", "i1", "echo-app", "hi")
    assert out.startswith("xw://")
    out, _ = await carol.run("xwworks", "--xwformat", "json")
    assert [j["label"] for j in json.loads(out)] == ["i1"]
    cached = json.loads(carol.cache.read_text())
    (entry,) = cached["logins"].values()
    entry["expires_at"] = 0
    carol.cache.write_text(json.dumps(cached))
    _, err = await carol.run("xwping", expect=1)
    assert err.strip().endswith(f"your sign-in through {issuer} has expired: run xwlogin again"), err
