"""Fixtures for the command tests: client config files and an in-process command runner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from client.api import XWClient
from common.enums import UserRights

PASSWORD = "correct horse battery"  # tests.conftest.PASSWORD, the password of grid.add_user's users
# Neutralise the caller's environment: only what a test passes reaches the command.
CLEAN_ENV: dict[str, str | None] = {
    "XW_CONFIG": None,
    "XW_LOGIN": None,
    "XW_PASSWORD": None,
    "XW_SERVER": None,
}

Invoke = Callable[..., Awaitable[Result]]


@pytest.fixture(autouse=True)
def _own_token_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients without a password or certificate read a token cache of the test's own, never the user's."""
    monkeypatch.setenv("XW_TOKEN_CACHE", str(tmp_path_factory.mktemp("tokens") / "tokens.json"))


@pytest.fixture
def xw() -> Invoke:
    """Run a command in a thread (it runs its own event loop; the server keeps serving in the test's)."""
    runner = CliRunner()

    async def invoke(
        cmd: click.Command,
        conf: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
        expect: int | None = 0,
    ) -> Result:
        argv = ["--xwconfig", str(conf), *args] if conf is not None else list(args)
        result = await asyncio.to_thread(runner.invoke, cmd, argv, env={**CLEAN_ENV, **(env or {})})
        if expect is not None:
            assert result.exit_code == expect, (
                result.exit_code,
                result.stdout,
                result.stderr,
                result.exception,
            )
        return result

    return invoke


@pytest.fixture
def user_conf(grid: Any, tmp_path: Path) -> Callable[..., Awaitable[tuple[Path, XWClient]]]:
    """Create a user on the grid and write its client config; returns (config path, API client)."""

    async def make(login: str, rights: UserRights = UserRights.STANDARD_USER) -> tuple[Path, XWClient]:
        client = await grid.add_user(login, rights)
        return grid.write_client_conf(tmp_path / f"{login}.conf", login=login, password=PASSWORD), client

    return make


@pytest.fixture
def admin_conf(grid: Any, tmp_path: Path) -> Path:
    """The administrator's client config."""
    path: Path = grid.write_client_conf(
        tmp_path / "admin.conf", login="admin", password=grid.admin_cfg.password
    )
    return path


def _error_line(stderr: str, prog: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0].removeprefix(f"{prog}: error: ")


@pytest.fixture
def error_line() -> Callable[[str, str], str]:
    """Check that stderr is exactly one ``prog: error: ...`` line and return its reason."""
    return _error_line
