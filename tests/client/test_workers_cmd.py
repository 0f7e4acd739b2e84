"""xwworkers, xwhold, xwrelease against a real server, and how hosts are shown."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.commands_grid import xwhold, xwrelease, xwworkers
from client.output import render, status_lines
from common.enums import AppType
from common.schemas import AppIn, HostIn, HostOut, JobIn, JobOut

UID = "f87da0c4-2324-4cb2-8622-ef81e30525a7"
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def host(**kw: object) -> HostOut:
    base: dict[str, object] = {
        "uid": UID,
        "owner": None,
        "group": None,
        "access_rights": "0755",
        "created": WHEN,
        "modified": WHEN,
        "name": "h1",
        "os": "LINUX",
        "cpu": "AMD64",
        "cores": 8,
        "memory": 0,
        "disk": 0,
        "version": "0.1.0",
        "sandbox": "bwrap",
        "project": None,
        "last_alive": WHEN,
        "alive": True,
        "running": 1,
    }
    base.update(kw)
    return HostOut.model_validate(base)


def test_hosts_render_xwhep_style() -> None:
    assert render("host", [host()]) == f"UID='{UID}', NAME='h1', ALIVE='true', RUNNING='1'"
    root = ET.fromstring(render("host", [host(alive=False, running=0)], "xml").split("\n", 1)[1])
    (elem,) = list(root)
    assert elem.tag == "host"
    assert (elem.attrib["name"], elem.attrib["alive"], elem.attrib["running"]) == ("h1", "false", "0")
    assert elem.attrib["lastalive"] == WHEN.isoformat()
    header, row = render("host", [host()], "table").splitlines()
    assert header.split() == [
        *("NAME", "OS", "CPU", "CORES", "SANDBOX", "ALIVE", "LAST", "SEEN", "RUNNING", "CREDENTIAL")
    ]
    assert row.split() == ["h1", "LINUX", "AMD64", "8", "bwrap", "true", WHEN.isoformat(), "1", "active"]


def test_status_lines_with_reason() -> None:
    base = json.loads(render("work", [], "json"))
    assert base == []
    job = JobOut.model_validate(
        {
            "uid": UID,
            "access_rights": "0700",
            "created": WHEN,
            "modified": WHEN,
            "app": UID,
            "args": "",
            "env": [],
            "stdin": None,
            "inputs": [],
            "label": None,
            "job_group": None,
            "expected_host": None,
            "wallclock": None,
            "max_retries": 10,
            "retry": 0,
            "listen_ports": [],
            "forward_addresses": [],
            "status": "WAITING",
            "status_reason": "held by alice: it's late",
            "return_code": None,
            "result": None,
            "host": None,
            "started": None,
            "completed": None,
        }
    )
    assert status_lines([job]) == f"UID='{UID}', STATUS='WAITING'"
    assert status_lines([job], with_reason=True) == (
        f"UID='{UID}', STATUS='WAITING', REASON='held by alice: it\\'s late'"
    )
    assert status_lines([job.model_copy(update={"status_reason": None})], with_reason=True) == (
        f"UID='{UID}', STATUS='WAITING'"
    )


async def _script_app(api: Any, tmp_path: Path, name: str, rights: str | None = None) -> str:
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    data = await api.send_file(script, access_rights="1700")
    binaries = [{"os": "ANY", "cpu": "ANY", "data": data.uid}]
    app = await api.send_app(AppIn(name=name, type=AppType.SCRIPT, binaries=binaries, access_rights=rights))
    return str(app.uid)


async def test_xwworkers_lists_enrolled_hosts(grid, tmp_path, xw, user_conf, admin_conf) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    admin = grid.admin
    assert (await xw(xwworkers, alice)).stdout == ""
    h1 = (await admin.enrol(HostIn(name="h1", os="LINUX", cpu="AMD64", cores=4, sandbox="bwrap"))).host
    line = f"UID='{h1.uid}', NAME='h1', ALIVE='true', RUNNING='0'"
    assert (await xw(xwworkers, admin_conf)).stdout == line + "\n"
    assert (await xw(xwworkers, alice, "--xwalive")).stdout == line + "\n"  # a public worker

    app = await _script_app(api, tmp_path, "job")
    await api.submit(JobIn(app=app))
    assert await admin.request_work(h1.uid, wait=1) is not None
    assert (await xw(xwworkers, alice)).stdout == line.replace("RUNNING='0'", "RUNNING='1'") + "\n"
    (doc,) = json.loads((await xw(xwworkers, alice, "--xwformat", "json")).stdout)
    assert (doc["name"], doc["os"], doc["cpu"], doc["cores"], doc["sandbox"]) == (
        "h1",
        "LINUX",
        "AMD64",
        4,
        "bwrap",
    )
    text = (await xw(xwworkers, alice, "--xwformat", "xml")).stdout
    (elem,) = list(ET.fromstring(text.split("\n", 1)[1]))
    assert (elem.tag, elem.attrib["uid"], elem.attrib["alive"]) == ("host", h1.uid, "true")
    table = (await xw(xwworkers, alice, "--xwformat", "table")).stdout.splitlines()
    assert "LAST SEEN" in table[0] and table[1].split()[:6] == ["h1", "LINUX", "AMD64", "4", "bwrap", "true"]


async def test_hold_and_release(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    app = await _script_app(api, tmp_path, "job", rights="0755")
    job = await api.submit(JobIn(app=app, label="mine"))
    held = await xw(xwhold, alice, job.uid, "--reason", "disk full")
    assert held.stdout == f"UID='{job.uid}', STATUS='WAITING', REASON='held by alice: disk full'\n"
    assert (await api.get_job(job.uid)).status.value == "WAITING"
    released = await xw(xwrelease, alice, "mine")  # by label
    assert released.stdout == f"UID='{job.uid}', STATUS='PENDING', REASON='released by alice'\n"
    (doc,) = json.loads((await xw(xwhold, alice, f"xw://127.0.0.1/{job.uid}", "--xwformat", "json")).stdout)
    assert (doc["status"], doc["status_reason"]) == ("WAITING", "held by alice")
    await xw(xwrelease, alice, job.uid)

    again = await xw(xwrelease, alice, job.uid, expect=1)  # not held
    assert error_line(again.stderr, "xwrelease")
    bob, bob_api = await user_conf("bob")
    public = await api.submit(JobIn(app=app, access_rights="0755"))
    refused = await xw(xwhold, bob, public.uid, expect=1)  # bob can see it but not write it
    assert public.uid in error_line(refused.stderr, "xwhold")
    assert refused.stdout == ""
    assert (await api.get_job(public.uid)).status.value == "PENDING"
    hidden = await xw(xwhold, bob, "mine", expect=1)  # a private job: bob cannot even see it
    assert "mine" in error_line(hidden.stderr, "xwhold")
    assert await bob_api.jobs() != []


async def test_xwworkers_revokes_a_host(grid, tmp_path, xw, user_conf, admin_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    mine = (await api.enrol(HostIn(name="laptop", os="LINUX", cpu="AMD64"))).host
    public = (await grid.admin.enrol(HostIn(name="h1", os="LINUX", cpu="AMD64"))).host
    refused = await xw(xwworkers, alice, "--xwrevoke", public.uid, expect=1)
    assert "only the owner" in error_line(refused.stderr, "xwworkers")
    out = (await xw(xwworkers, alice, "--xwrevoke", "laptop", "--reason", "sold it")).stdout
    assert out == f"UID='{mine.uid}', NAME='laptop', ALIVE='false', RUNNING='0'\n"
    docs = json.loads((await xw(xwworkers, alice, "--xwformat", "json")).stdout)
    (doc,) = [d for d in docs if d["uid"] == mine.uid]
    assert (doc["credential"], doc["revoke_reason"]) == ("revoked", "sold it")
    await api.enrol(HostIn(name="twin", os="LINUX", cpu="AMD64"))
    await api.enrol(HostIn(name="twin", os="LINUX", cpu="AMD64"))
    ambiguous = await xw(xwworkers, alice, "--xwrevoke", "twin", expect=1)
    assert "2 hosts named 'twin'" in error_line(ambiguous.stderr, "xwworkers")
    assert [h.credential for h in await grid.admin.hosts() if h.uid == public.uid] == ["active"]
