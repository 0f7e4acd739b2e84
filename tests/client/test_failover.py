"""Several server URLs in a client config: the first that answers is used, and kept, until it stops."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from client.api import XWClient
from client.config import ClientConfig, load_config
from client.transport import HttpTransport
from common.config import dump_flat_toml
from common.errors import NotFound, TransportError
from server.app import start
from tests.client.test_commands_process import run_cli


def dead_url() -> str:
    """A URL nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{sock.getsockname()[1]}"


def write_conf(path: Path, grid: Any, server: object) -> Path:
    """A config whose ``server`` is ``server`` as given (a list is written as a TOML array)."""
    text = dump_flat_toml(
        {"ca": str(grid.settings.ca_cert), "login": "admin", "password": grid.admin_cfg.password}
    )
    if isinstance(server, list):
        text += "server = [" + ", ".join(f'"{u}"' for u in server) + "]\n"
    else:
        text += dump_flat_toml({"server": server})
    path.write_text(text)
    return path


def test_one_server_reads_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XW_SERVER", raising=False)
    conf = tmp_path / "c.conf"
    conf.write_text('server = "https://grid.example:4321/"\n')
    cfg = load_config(conf)
    assert (cfg.server, cfg.servers, cfg.host) == (
        "https://grid.example:4321",
        ("https://grid.example:4321",),
        "grid.example",
    )


def test_several_servers_from_a_list_a_string_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XW_SERVER", raising=False)
    conf = tmp_path / "c.conf"
    conf.write_text('server = ["https://a.example:1/", "https://b.example:2"]\n')
    assert load_config(conf).servers == ("https://a.example:1", "https://b.example:2")
    assert load_config(conf).host == "a.example"
    conf.write_text('server = "https://a.example:1, https://b.example:2"\n')
    assert load_config(conf).servers == ("https://a.example:1", "https://b.example:2")
    monkeypatch.setenv("XW_SERVER", "https://c.example:3,https://d.example:4/")
    assert load_config(conf).servers == ("https://c.example:3", "https://d.example:4")


async def test_a_dead_first_url_fails_over_to_a_live_one_and_sticks(grid: Any) -> None:
    dead = dead_url()
    cfg = ClientConfig(
        server=f"{dead},{grid.url}", ca=grid.settings.ca_cert, login="admin", password=grid.admin_cfg.password
    )
    async with XWClient(cfg) as xw:
        assert (await xw.ping()).login == "admin"
        transport = xw.transport
        assert isinstance(transport, HttpTransport)
        assert transport.base == grid.url + "/api/v1"
        # an HTTP error is an answer: the client stays where it is
        with pytest.raises(NotFound):
            await xw.get_job("00000000-0000-4000-8000-000000000000")
        assert transport.base == grid.url + "/api/v1"
        assert (await xw.ping()).login == "admin"


async def test_moves_on_when_the_current_server_stops(grid: Any) -> None:
    """Two servers on one database (here: one SQLite home, two listeners); the first one stops."""
    other = await start(grid.settings, migrate=False)
    stopped = False
    try:
        cfg = ClientConfig(
            server=f"{other.url},{grid.url}",
            ca=grid.settings.ca_cert,
            login="admin",
            password=grid.admin_cfg.password,
        )
        async with XWClient(cfg) as xw:
            assert (await xw.ping()).login == "admin"
            assert isinstance(xw.transport, HttpTransport) and xw.transport.base == other.url + "/api/v1"
            await other.aclose()
            stopped = True
            # the pooled connection is gone and new ones are refused: the same call goes to the next URL
            pong = None
            for _ in range(2):  # a request already on its way when the server stopped may fail once
                try:
                    pong = await xw.ping()
                    break
                except TransportError:
                    continue
            assert pong is not None and pong.login == "admin"
            assert xw.transport.base == grid.url + "/api/v1"
    finally:
        if not stopped:
            await other.aclose()


async def test_the_cli_works_through_a_dead_first_url(grid: Any, tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "two.conf", grid, [dead_url(), grid.url])
    code, out, err = await run_cli("xwping", "--xwconfig", str(conf), home=tmp_path)
    assert (code, out, err) == (0, "pong: admin (SUPER_USER, via token)\n", "")


async def test_the_cli_says_one_line_when_no_server_answers(grid: Any, tmp_path: Path) -> None:
    first, second = dead_url(), dead_url()
    conf = write_conf(tmp_path / "dead.conf", grid, f"{first}, {second}")
    code, out, err = await run_cli("xwworks", "--xwconfig", str(conf), home=tmp_path)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("xwworks: error: no server answers: cannot reach ")
    assert first in err and second in err
