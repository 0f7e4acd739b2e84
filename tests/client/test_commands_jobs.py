"""xwsendapp, xwapps, xwsubmit, xwworks, xwstatus, xwevents against a real server."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from client.commands import xwapps, xwchmod, xwevents, xwrm, xwsendapp, xwstatus, xwsubmit, xwworks

URI = re.compile(r"^xw://127\.0\.0\.1/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def uid_of(line: str) -> str:
    m = URI.match(line.strip())
    assert m, line
    return m.group(1)


async def send_script_app(xw: Any, conf: Path, tmp_path: Path, name: str = "hello") -> str:
    script = tmp_path / f"{name}.sh"
    script.write_text('#!/bin/sh\necho hello "$@"\n')
    result = await xw(xwsendapp, conf, name, "script", "any", "any", str(script))
    return str(result.stdout).strip()


async def test_private_app_is_shared_by_chmod(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    bob, _ = await user_conf("bob")
    app_uri = await send_script_app(xw, alice, tmp_path)
    app_uid = uid_of(app_uri)
    assert (await xw(xwapps, alice)).stdout == f"UID='{app_uid}', NAME='hello'\n"

    assert (await xw(xwapps, bob)).stdout == ""
    for ref in ("hello", app_uri):
        refused = await xw(xwsubmit, bob, ref, "world", expect=1)
        assert refused.stdout == ""
        assert "hello" in error_line(refused.stderr, "xwsubmit") or app_uid in refused.stderr

    await xw(xwchmod, alice, "755", app_uri)
    assert (await xw(xwapps, bob)).stdout == f"UID='{app_uid}', NAME='hello'\n"
    job_uid = uid_of(
        (await xw(xwsubmit, bob, "hello", "world", "--xwlistenport", "8080", "two words")).stdout
    )
    status = await xw(xwstatus, bob, f"xw://127.0.0.1/{job_uid}")
    assert status.stdout == f"UID='{job_uid}', STATUS='PENDING'\n"
    (job,) = json.loads((await xw(xwworks, bob, job_uid, "--xwformat", "json")).stdout)
    assert job["args"] == "world 'two words'"  # arguments keep their quoting for the worker
    assert job["listen_ports"] == [8080]
    assert job["app"] == app_uid


async def test_xwworks_xml_is_xwhep_shaped(grid, tmp_path, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path, "jackrabbit")
    job_uid = uid_of((await xw(xwsubmit, alice, "jackrabbit", "--xwlistenport", "8080")).stdout)
    text = (await xw(xwworks, alice, "--xwformat", "xml", job_uid)).stdout
    lines = text.splitlines()
    assert lines[:2] == ["<?xml version='1.0' encoding='UTF-8'?>", "<get>"]
    assert lines[-1] == "</get>" and len(lines) == 4
    root = ET.fromstring(text.encode())
    assert root.tag == "get"
    (work,) = list(root)
    assert work.tag == "work"
    assert work.attrib["uid"] == job_uid
    assert work.attrib["status"] == "PENDING"
    assert work.attrib["listenport"] == "8080"
    assert "label" not in work.attrib  # None values are left out


async def test_submit_options_and_argfile(grid, tmp_path, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a")
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("from stdin\n")
    argfile = tmp_path / "args.txt"
    argfile.write_text("1 one\n\n2 two\n   \n3 three\n4\n")
    result = await xw(
        xwsubmit,
        alice,
        "--xwargfile",
        str(argfile),
        "hello",
        "--xwgroup",
        "batch",
        "--xwenv",
        str(inputs),
        "--xwstdin",
        str(stdin),
        "--xwwallclocktime",
        "60",
        "--xwforwardaddresses",
        "relay#1:3000@x~root#,1234;other,99",
    )
    uids = [uid_of(line) for line in result.stdout.splitlines()]
    assert len(uids) == 4
    jobs = [await api.get_job(uid) for uid in uids]
    assert [j.args for j in jobs] == ["1 one", "2 two", "3 three", "4"]  # in the file's order
    assert {j.job_group for j in jobs} == {"batch"} and {j.wallclock for j in jobs} == {60}
    assert [(f.address, f.port) for f in jobs[0].forward_addresses] == [
        ("relay#1:3000@x~root#", 1234),
        ("other", 99),
    ]
    env = await api.get_data(jobs[0].env[0])
    assert env.type == "ZIP" and env.access_rights == "1700"  # private + sticky, for the worker
    assert jobs[0].stdin and (await api.get_data(jobs[0].stdin)).name == "stdin.txt"
    assert len({j.env[0] for j in jobs}) == 1  # inputs uploaded once for the whole batch

    listed = (await xw(xwworks, alice, "--xwgroup", "batch", "--xwstatus", "pending")).stdout.splitlines()
    assert sorted(line.split("'")[1] for line in listed) == sorted(uids)
    assert (await xw(xwworks, alice, "--xwstatus", "COMPLETED")).stdout == ""


async def test_bad_submit_options_are_one_line_errors(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    for opt, value in (
        ("--xwforwardaddresses", "no-port-here"),
        ("--xwforwardaddresses", "addr,99999"),
        ("--xwforwardaddresses", ";"),
        ("--xwlistenport", "80,http"),
    ):
        bad = await xw(xwsubmit, alice, "hello", opt, value, expect=1)
        assert opt in error_line(bad.stderr, "xwsubmit")
    bad = await xw(xwsubmit, alice, "hello", "--xwlabel", "no spaces", expect=1)
    assert error_line(bad.stderr, "xwsubmit").startswith("label: must start with")
    bad = await xw(xwworks, alice, "--xwstatus", "FINISHED", expect=1)
    assert "unknown status 'FINISHED'" in error_line(bad.stderr, "xwworks")
    bad = await xw(xwsubmit, alice, "--xwargfile", str(tmp_path / "missing.txt"), "hello", expect=1)
    assert "No such file" in error_line(bad.stderr, "xwsubmit")
    typo = await xw(xwsubmit, alice, "hello", "--xwlistenports", "80", expect=2)  # click's usage error
    assert "No such option '--xwlistenports'" in typo.stderr
    assert await api.jobs() == []
    literal = await xw(xwsubmit, alice, "hello", "--", "--xwlistenports", "80")
    assert (await api.get_job(uid_of(literal.stdout))).args == "--xwlistenports 80"


async def test_events_and_rm_of_a_job(grid, tmp_path, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    job_uid = uid_of((await xw(xwsubmit, alice, "hello", "--xwlabel", "mine")).stdout)
    events = (await xw(xwevents, alice, job_uid)).stdout
    assert f"OBJECT='{job_uid}', ACTION='submit', TO_STATUS='PENDING'" in events
    await xw(xwrm, alice, "mine")  # a unique job label names the job
    assert (await xw(xwworks, alice)).stdout == ""
    doc = json.loads((await xw(xwevents, alice, job_uid, "--xwformat", "json")).stdout)
    assert [e["action"] for e in doc] == ["submit", "delete"]
    assert "ACTION='create'" in (await xw(xwevents, alice)).stdout  # the app's creation, among all events


async def test_argfile_prints_one_uri_per_job_in_file_order(
    grid: Any, tmp_path: Path, xw: Any, user_conf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("client.api.SUBMIT_CHUNK", 3)  # 8 jobs: three batches, two in flight
    alice, api = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    argfile = tmp_path / "args.txt"
    argfile.write_text("".join(f"job {i}\n" + ("\n" if i % 3 == 0 else "") for i in range(8)))
    result = await xw(xwsubmit, alice, "hello", "--xwargfile", str(argfile))
    assert result.stderr == ""
    uids = [uid_of(line) for line in result.stdout.splitlines()]
    assert result.stdout == "".join(f"xw://127.0.0.1/{uid}\n" for uid in uids)  # nothing else
    assert [(await api.get_job(uid)).args for uid in uids] == [f"job {i}" for i in range(8)]

    shown = json.loads(
        (await xw(xwsubmit, alice, "hello", "--xwargfile", str(argfile), "--xwformat", "json")).stdout
    )
    assert [job["args"] for job in shown] == [f"job {i}" for i in range(8)]
    assert {job["status"] for job in shown} == {"PENDING"} and len(await api.jobs()) == 16


async def test_a_bad_argfile_line_submits_nothing(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    data_before = len(await api.datas())
    inputs = tmp_path / "in.txt"
    inputs.write_text("input")
    argfile = tmp_path / "args.txt"
    for bad, reason in (
        ("x" * 9000, "args: String should have at most 8192 characters"),
        ("a \x00 b", "args: NUL characters are not allowed"),
    ):
        argfile.write_text(f"fine\n\n{bad}\nfine too\n")
        refused = await xw(
            xwsubmit, alice, "hello", "--xwargfile", str(argfile), "--xwenv", str(inputs), expect=1
        )
        assert refused.stdout == ""
        assert error_line(refused.stderr, "xwsubmit") == f"{argfile}, line 3: {reason}"
    assert await api.jobs() == []
    assert len(await api.datas()) == data_before  # the input was not even uploaded


async def test_a_refused_argfile_names_the_line_and_stores_nothing(
    grid: Any, tmp_path: Path, xw: Any, user_conf: Any, error_line: Any
) -> None:
    alice, _ = await user_conf("alice")
    bob, bob_api = await user_conf("bob")
    app_uid = uid_of(await send_script_app(xw, alice, tmp_path))
    await xw(xwchmod, alice, "744", app_uid)  # bob may read it (and resolve its name), not execute it
    argfile = tmp_path / "args.txt"
    argfile.write_text("\n1\n2\n")
    refused = await xw(xwsubmit, bob, "hello", "--xwargfile", str(argfile), expect=1)
    assert refused.stdout == ""
    assert error_line(refused.stderr, "xwsubmit") == (
        f"{argfile}, line 2: bob may not execute application {app_uid} (rights 0744)"
    )
    assert await bob_api.jobs() == []


async def test_a_label_is_unique_among_the_owners_jobs(
    grid: Any, tmp_path: Path, xw: Any, user_conf: Any, error_line: Any
) -> None:
    alice, api = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    first = uid_of((await xw(xwsubmit, alice, "hello", "one", "--xwlabel", "run1")).stdout)
    again = await xw(xwsubmit, alice, "hello", "two", "--xwlabel", "run1", expect=1)
    assert error_line(again.stderr, "xwsubmit") == (
        f"label 'run1' is taken by your job {first}: labels are unique among your jobs "
        "(choose another, or remove that job first)"
    )
    assert (await xw(xwstatus, alice, "run1")).stdout == f"UID='{first}', STATUS='PENDING'\n"  # still one

    argfile = tmp_path / "args.txt"
    argfile.write_text("1\n\n2\n")
    inputs = tmp_path / "in.txt"
    inputs.write_text("input")
    data_before = len(await api.datas())
    several = await xw(
        xwsubmit,
        alice,
        "hello",
        "--xwargfile",
        str(argfile),
        "--xwlabel",
        "b",
        "--xwenv",
        str(inputs),
        expect=1,
    )
    assert error_line(several.stderr, "xwsubmit") == (
        f"--xwlabel names one job and {argfile} holds 2: a label is unique among your jobs;"
        " name the batch with --xwgroup"
    )
    assert len(await api.datas()) == data_before  # refused before uploading anything
    argfile.write_text("\n3\n")
    taken = await xw(xwsubmit, alice, "hello", "--xwargfile", str(argfile), "--xwlabel", "run1", expect=1)
    assert error_line(taken.stderr, "xwsubmit").startswith(f"{argfile}, line 2: label 'run1' is taken by")
    assert [j.uid for j in await api.jobs()] == [first]


async def test_xwreplica_round_trips(grid, tmp_path, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    """`xwsubmit --xwreplica 3` is stored as 3 copies validated by a majority, and xwworks shows the
    policy and the copies in json and xml (no worker here: they stay queued)."""
    alice, _ = await user_conf("alice")
    await send_script_app(xw, alice, tmp_path)
    job_uid = uid_of((await xw(xwsubmit, alice, "hello", "--xwreplica", "3", "x")).stdout)
    (job,) = json.loads((await xw(xwworks, alice, job_uid, "--xwformat", "json")).stdout)
    assert job["status"] == "REPLICATING"
    assert job["validation"]["policy"] == "quorum"
    assert (job["validation"]["quorum"], job["validation"]["replicas"]) == (2, 3)
    assert [r["status"] for r in job["replicas"]] == ["PENDING"] * 3
    root = ET.fromstring((await xw(xwworks, alice, "--xwformat", "xml", job_uid)).stdout.encode())
    (work,) = list(root)
    assert sorted(r.attrib["uid"] for r in work.iter("replica")) == sorted(r["uid"] for r in job["replicas"])
    listed = json.loads((await xw(xwworks, alice, "--xwformat", "json")).stdout)
    assert [j["uid"] for j in listed] == [job_uid]  # the copies are not jobs of their own in lists
    once = uid_of((await xw(xwsubmit, alice, "hello", "--xwreplica", "1", "y")).stdout)
    (plain,) = json.loads((await xw(xwworks, alice, once, "--xwformat", "json")).stdout)
    assert plain["status"] == "PENDING" and plain["validation"] is None and plain["replicas"] == []
