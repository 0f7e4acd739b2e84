"""The relay's /metrics: bytes through a real tunnel, tunnels, connections and refusals; who may read it."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncssh
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import MetricsServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def exporter(grid) -> AsyncIterator[MetricsServer]:  # type: ignore[no-untyped-def]
    server = MetricsServer(grid.relay)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.aclose()


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("xwhep_relay_"), family.name
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def bytes_moved(found: dict[tuple[str, frozenset[tuple[str, str]]], float], direction: str) -> float:
    return found[("xwhep_relay_tunnel_bytes_total", frozenset({("direction", direction)}))]


async def test_bytes_through_a_tunnel_are_counted(grid, echo_port, exporter) -> None:  # type: ignore[no-untyped-def]
    name = grid.name()
    publisher = await grid.link(f"publish:{name}", sub="worker-1")
    await publisher.publish(name, grid.target(echo_port), grid.grants(f"publish:{name}", sub="worker-1"))
    client = await grid.link(f"connect:{name}", sub="user-1")
    before = await scrape(exporter.port)
    assert before[("xwhep_relay_connections_open", frozenset())] == 2
    assert before[("xwhep_relay_names_published", frozenset())] == 1

    payload = b"x" * 300_000
    reader, writer = await client.open(name)
    await grid.eventually(lambda: grid.relay.counts.tunnels_open == 1)
    during = await scrape(exporter.port)
    assert during[("xwhep_relay_tunnels_open", frozenset())] == 1
    assert await grid.roundtrip(reader, writer, payload) == payload
    await grid.eventually(lambda: grid.relay.counts.tunnels_open == 0)
    after = await scrape(exporter.port)

    assert bytes_moved(after, "in") - bytes_moved(before, "in") == len(payload)
    assert bytes_moved(after, "out") - bytes_moved(before, "out") == len(payload)
    assert (
        after[("xwhep_relay_tunnels_total", frozenset())] - before[("xwhep_relay_tunnels_total", frozenset())]
        == 1
    )
    assert after[("xwhep_relay_tunnels_open", frozenset())] == 0


async def test_refused_tickets_are_counted(grid, exporter) -> None:  # type: ignore[no-untyped-def]
    before = await scrape(exporter.port)
    with pytest.raises(asyncssh.PermissionDenied):
        async with grid.ssh(grid.signer.token([], aud="not-the-relay")):
            pass
    after = await scrape(exporter.port)
    refusals = ("xwhep_relay_auth_refusals_total", frozenset())
    assert after[refusals] - before[refusals] >= 1
    connections = ("xwhep_relay_connections_total", frozenset())
    assert after[connections] - before[connections] == 1


async def test_an_address_not_allowed_is_refused(grid) -> None:  # type: ignore[no-untyped-def]
    server = MetricsServer(grid.relay, ["10.0.0.0/8"])
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                assert resp.status == 403
                assert resp.headers["Content-Type"].startswith("application/problem+json")
                assert "127.0.0.1" in (await resp.json())["detail"]
    finally:
        await server.aclose()


async def test_xwrelay_metrics_port(signer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    verify_key = tmp_path / "jwt.pub"
    verify_key.write_bytes(signer.public_pem)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "--port",
        "0",
        "--host-key",
        str(tmp_path / "host_key"),
        "--verify-key",
        str(verify_key),
        "--metrics-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        ready = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert ready.startswith("xwrelay ready at 127.0.0.1:"), ready
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        match = re.fullmatch(r"xwrelay metrics at http://127\.0\.0\.1:(\d+)/metrics\n", line)
        assert match, line
        found = await scrape(int(match[1]))
        assert found[("xwhep_relay_connections_total", frozenset())] == 0
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0


async def test_xwrelay_refuses_a_bad_allow_list(signer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    verify_key = tmp_path / "jwt.pub"
    verify_key.write_bytes(signer.public_pem)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "--host-key",
        str(tmp_path / "host_key"),
        "--verify-key",
        str(verify_key),
        "--metrics-port",
        "0",
        "--metrics-allow",
        "10.1.2.3/8",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2 and "--metrics-allow" in err.decode() and "10.1.2.3/8" in err.decode()
