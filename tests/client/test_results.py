"""Unpacking untrusted results zips (safe_extract), and xwresults against a real server."""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest

from client.api import XWClient
from client.commands_grid import POLL_FIRST, POLL_MAX, poll_delays, xwresults
from client.results import safe_extract, unpack_into, unpack_target, zip_name
from client.transport import ApiRequest
from common.enums import AppType
from common.errors import NotFound, ValidationFailed
from common.schemas import AppIn, HostIn, JobIn, JobOut, JobReport
from server.state import SERVICES

UID = "f87da0c4-2324-4cb2-8622-ef81e30525a7"
LIMITS = {"max_bytes": 1 << 20, "max_members": 10}


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- safe_extract ---------------------------------------------------------------------------------


def test_normal_zip_is_extracted_bit_exact(tmp_path: Path) -> None:
    blob = os.urandom(200_000)
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stdout.txt", b"hello\r\n\x00")
        zf.writestr("out/", b"")
        zf.writestr("out/deep/er/data.bin", blob)
        zf.writestr("./out/empty", b"")
        run = zipfile.ZipInfo("bin/run.sh")
        run.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(run, b"#!/bin/sh\n")
    dest = tmp_path / "dest"
    files = safe_extract(archive, dest, **LIMITS)
    assert files == [
        dest / "stdout.txt",
        dest / "out" / "deep" / "er" / "data.bin",
        dest / "out" / "empty",
        dest / "bin" / "run.sh",
    ]
    assert (dest / "stdout.txt").read_bytes() == b"hello\r\n\x00"
    assert (dest / "out/deep/er/data.bin").read_bytes() == blob
    assert (dest / "out/empty").read_bytes() == b""
    assert os.access(dest / "bin/run.sh", os.X_OK)
    assert not os.access(dest / "stdout.txt", os.X_OK)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil", "'..' component"),
        ("/abs", "absolute path"),
        ("a/../../b", "'..' component"),
        ("ok/../../../evil", "'..' component"),
        ("..\\evil", "'..' component"),
        ("\\abs", "absolute path"),
        ("C:/windows/evil", "absolute path"),
        ("c:evil", "absolute path"),
        ("a/D:evil", "drive letter"),
    ],
)
def test_escaping_member_names_are_refused(tmp_path: Path, name: str, why: str) -> None:
    base = tmp_path / "base"
    dest = base / "dest"
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"first", name: b"evil"})
    with pytest.raises(ValueError, match=why) as info:
        safe_extract(archive, dest, **LIMITS)
    assert "\n" not in str(info.value)
    assert not base.exists()  # nothing written at all: every member is checked first
    assert everything_under(tmp_path) == ["bad.zip"]


def test_symlink_and_special_members_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    for mode, why in ((stat.S_IFLNK | 0o777, "symbolic link"), (stat.S_IFIFO | 0o644, "not a regular")):
        archive = tmp_path / "link.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("fine.txt", b"x")
            link = zipfile.ZipInfo("passwd")
            link.create_system = 3
            link.external_attr = mode << 16
            zf.writestr(link, b"/etc/passwd")
        with pytest.raises(ValueError, match=why):
            safe_extract(archive, dest, **LIMITS)
        assert not dest.exists()


def test_size_and_member_caps(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros": bytes(2 << 20)})
    assert bomb.stat().st_size < 10_000  # small on the wire
    with pytest.raises(ValueError, match=r"unpacks to 2097152 bytes \(at most 1048576\)"):
        safe_extract(bomb, dest, **LIMITS)
    spread = make_zip(tmp_path / "spread.zip", {f"z{i}": bytes(300_000) for i in range(4)})
    with pytest.raises(ValueError, match="at most 1048576"):
        safe_extract(spread, dest, **LIMITS)
    many = make_zip(tmp_path / "many.zip", {f"f{i}": b"" for i in range(11)})
    with pytest.raises(ValueError, match=r"too many members \(11; at most 10\)"):
        safe_extract(many, dest, **LIMITS)
    assert not dest.exists()
    assert len(safe_extract(many, dest, max_bytes=0, max_members=11)) == 11  # the caps are inclusive


def test_duplicates_clashes_and_corruption(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf:
        zf.writestr("a", b"1")
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("a", b"2")
    with pytest.raises(ValueError, match="appears twice"):
        safe_extract(tmp_path / "dup.zip", dest, **LIMITS)
    clash = make_zip(tmp_path / "clash.zip", {"a": b"file", "a/b": b"under a file"})
    with pytest.raises(ValueError, match="both a file and a directory"):
        safe_extract(clash, dest, **LIMITS)
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a valid zip"):
        safe_extract(tmp_path / "junk.zip", dest, **LIMITS)
    # a member whose bytes do not match its CRC: what was already written is removed again
    crc = make_zip(tmp_path / "crc.zip", {"a/one.txt": b"fine", "two.txt": b"hello"}, zipfile.ZIP_STORED)
    crc.write_bytes(crc.read_bytes().replace(b"hello", b"jello"))
    with pytest.raises(ValueError, match="Bad CRC-32"):
        safe_extract(crc, dest, **LIMITS)
    assert not dest.exists()


def test_existing_dest_is_not_followed_or_overwritten(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    (dest / "mine.txt").write_text("keep me")
    through = make_zip(tmp_path / "through.zip", {"new.txt": b"n", "link/x": b"escape"})
    with pytest.raises(ValueError, match="existing non-directory"):
        safe_extract(through, dest, **LIMITS)
    over = make_zip(tmp_path / "over.zip", {"mine.txt": b"overwritten"})
    with pytest.raises(ValueError, match="already exists"):
        safe_extract(over, dest, **LIMITS)
    assert list(outside.iterdir()) == []
    assert (dest / "mine.txt").read_text() == "keep me"
    assert everything_under(dest) == ["link", "mine.txt"]  # new.txt was removed again


def test_names_and_unpack_into(tmp_path: Path) -> None:
    assert zip_name(UID, "run1") == f"{UID}_ResultsOf_run1.zip"
    assert zip_name(UID, None) == f"{UID}_ResultsOf_{UID}.zip"
    assert zip_name(UID, "../x") == f"{UID}_ResultsOf_{UID}.zip"  # never a path
    assert unpack_target(tmp_path, UID, "run1") == tmp_path / "run1"
    (tmp_path / "run1").mkdir()
    assert unpack_target(tmp_path, UID, "run1") == tmp_path / f"run1_{UID}"  # labels need not be unique
    (tmp_path / f"run1_{UID}").mkdir()
    with pytest.raises(FileExistsError):
        unpack_target(tmp_path, UID, "run1")

    out = tmp_path / "out"
    out.mkdir()
    good = make_zip(tmp_path / "good.zip", {"d/f.txt": b"f"})
    assert unpack_into(good, out / "job", **LIMITS) == [out / "job" / "d" / "f.txt"]
    bad = make_zip(tmp_path / "bad.zip", {"ok.txt": b"ok", "../evil.txt": b"evil"})
    with pytest.raises(ValueError, match=r"evil\.txt"):
        unpack_into(bad, out / "other", **LIMITS)
    assert everything_under(out) == ["job", "job/d", "job/d/f.txt"]  # no temporary directory left over


# --- xwresults ------------------------------------------------------------------------------------


class Worker:
    """Plays a worker through the API: claims the user's jobs on an enrolled host and returns results."""

    def __init__(self, grid: Any, owner: Any, tmp_path: Path) -> None:
        self.admin, self.owner, self.tmp = grid.admin, owner, tmp_path
        self.host = ""
        self.app = ""
        self.attempts: dict[str, str] = {}  # job uid -> its attempt on our host

    async def setup(self) -> None:
        self.host = (await self.admin.enrol(HostIn(name="h1", os="LINUX", cpu="AMD64"))).host.uid
        script = self.tmp / "job.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        data = await self.owner.send_file(script, access_rights="1700")
        binaries = [{"os": "ANY", "cpu": "ANY", "data": data.uid}]
        self.app = (await self.owner.send_app(AppIn(name="job", type=AppType.SCRIPT, binaries=binaries))).uid

    async def claim(self, label: str | None = None) -> JobOut:
        job = await self.owner.submit(JobIn(app=self.app, label=label))
        assignment = await self.admin.request_work(self.host, wait=1)
        assert assignment is not None and assignment.job.uid == job.uid
        self.attempts[job.uid] = assignment.attempt
        return job  # type: ignore[no-any-return]

    async def complete(self, members: dict[str, bytes], label: str | None = None) -> JobOut:
        job = await self.claim(label)
        archive = make_zip(self.tmp / f"result-{job.uid}.zip", members)
        await self.admin.upload_result(self.host, self.attempts[job.uid], archive, 0)
        archive.unlink()
        return await self.owner.get_job(job.uid)  # type: ignore[no-any-return]


async def test_xwresults_downloads_unpacks_and_erases(grid, tmp_path, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    worker = Worker(grid, api, tmp_path)
    await worker.setup()
    blob = os.urandom(150_000)
    members = {"stdout.txt": b"hi\n", "out/data.bin": blob}
    job = await worker.complete(members, label="run1")
    assert job.status.value == "COMPLETED" and job.result
    out = tmp_path / "results"

    got = await xw(xwresults, alice, f"xw://127.0.0.1/{job.uid}", "--xwout", str(out))
    assert got.stdout.splitlines() == [
        f"UID='{job.uid}', STATUS='COMPLETED'",
        f"Unpacked to : {out / 'run1'}",  # no "Downloaded to": the zip is gone (no --xwkeepzip)
        f"Erased job {job.uid} (run1) from the server; its results data {job.result} stays",
    ]
    assert (out / "run1" / "stdout.txt").read_bytes() == b"hi\n"
    assert (out / "run1" / "out" / "data.bin").read_bytes() == blob
    assert everything_under(out) == ["run1", "run1/out", "run1/out/data.bin", "run1/stdout.txt"]
    with pytest.raises(NotFound):
        await api.get_job(job.uid)  # erased, as XWHEP does by default
    assert (await api.get_data(job.result)).name == "ResultsOf_run1"  # its results stay

    # no REF: all of the caller's COMPLETED and ERROR jobs; --xwnoerase and --xwkeepzip
    kept = await worker.complete({"r.txt": b"kept"})
    failed = await worker.claim()
    await worker.admin.report(
        worker.host, worker.attempts[failed.uid], JobReport(outcome="failed", reason="boom")
    )
    pending = await api.submit(JobIn(app=worker.app))
    got = await xw(xwresults, alice, "--xwout", str(out), "--xwnoerase", "--xwkeepzip")
    archive = out / zip_name(kept.uid, None)
    assert got.stdout.splitlines() == [
        f"UID='{kept.uid}', STATUS='COMPLETED'",
        f"Downloaded to : {archive}",
        f"Unpacked to : {out / kept.uid}",
        f"UID='{failed.uid}', STATUS='ERROR'",
    ]
    assert archive.is_file() and (out / kept.uid / "r.txt").read_bytes() == b"kept"
    assert (await api.get_job(kept.uid)).status.value == "COMPLETED"
    assert (await api.get_job(failed.uid)).status.value == "ERROR"

    # a named job that is not finished: shown, nothing fetched, and said so (exit status 1)
    got = await xw(xwresults, alice, pending.uid, "--xwout", str(out), expect=1)
    assert got.stdout == f"UID='{pending.uid}', STATUS='PENDING'\n"
    assert got.stderr == (
        f"xwresults: error: job {pending.uid} is PENDING: not finished, nothing fetched;"
        " --xwwait waits for it\n"
    )
    # a taken target is a one-line error
    got = await xw(xwresults, alice, "--xwout", str(out), "--xwformat", "json", expect=1)
    assert f"{out / kept.uid}: exists" in got.stderr and len(got.stderr.splitlines()) == 1
    assert (await api.get_job(kept.uid)).status.value == "COMPLETED"  # not erased: not retrieved
    with pytest.raises(NotFound):
        await api.get_job(failed.uid)  # nothing to retrieve, erased
    assert await api.jobs(status="PENDING") != []


async def test_xwresults_refuses_a_malicious_zip(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    worker = Worker(grid, api, tmp_path)
    await worker.setup()
    job = await worker.complete({"ok.txt": b"ok", "../evil.txt": b"evil"}, label="bad")
    out = tmp_path / "results" / "out"
    got = await xw(xwresults, alice, "bad", "--xwout", str(out), expect=1)
    assert got.stdout.splitlines() == [f"UID='{job.uid}', STATUS='COMPLETED'"]
    why = error_line(got.stderr, "xwresults")
    assert why == f"results of {job.uid} refused: member '../evil.txt' has a '..' component"
    assert not list(tmp_path.rglob("evil.txt"))
    assert list(out.iterdir()) == []  # no target, no temporary directory, no zip
    assert (await api.get_job(job.uid)).status.value == "COMPLETED"  # kept: its results were not retrieved
    unknown = await xw(xwresults, alice, "no-such-label", "--xwout", str(out), expect=1)
    assert "no-such-label" in error_line(unknown.stderr, "xwresults")


# --- round trips, --xwwait ------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The requests the commands send, in order (method, path): a transport in front of the real one."""
    seen: list[tuple[str, str]] = []

    class Counted:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def handle(self, req: ApiRequest) -> Any:
            seen.append((req.method, req.path))
            return await self.inner.handle(req)

        async def aclose(self) -> None:
            await self.inner.aclose()

    class CountingClient(XWClient):
        def __init__(self, cfg: Any, transport: Any = None) -> None:
            super().__init__(cfg, transport)
            self.transport = Counted(self.transport)

    monkeypatch.setattr("client.cli.XWClient", CountingClient)
    return seen


async def test_xwresults_costs_two_requests_per_listed_job_three_per_named_one(  # type: ignore[no-untyped-def]
    grid, tmp_path, xw, user_conf, sent
) -> None:
    alice, api = await user_conf("alice")
    worker = Worker(grid, api, tmp_path)
    await worker.setup()
    out = str(tmp_path / "out")

    def per_job(job: JobOut) -> list[tuple[str, str]]:
        return [("GET", f"/data/{job.result}/content"), ("DELETE", f"/jobs/{job.uid}")]

    jobs = [await worker.complete({"a.txt": b"a"}, label=f"a{i}") for i in range(3)]
    sent.clear()
    await xw(xwresults, alice, "--xwout", out)
    login = [("POST", "/auth/token")]
    overhead = [*login, ("GET", "/ping"), ("GET", "/jobs"), ("GET", "/jobs")]  # once per command
    assert sent == overhead + [request for job in jobs for request in per_job(job)]  # was 4 per job

    jobs = [await worker.complete({"a.txt": b"a"}, label=f"b{i}") for i in range(3)]
    sent.clear()
    await xw(xwresults, alice, "--xwout", out, *[str(job.label) for job in jobs])
    looked_up = [("GET", "/jobs")]  # the label's lookup answers the job itself
    assert sent == login + [r for job in jobs for r in looked_up + per_job(job)]  # was 6 per job

    jobs = [await worker.complete({"a.txt": b"a"}, label=f"c{i}") for i in range(3)]
    sent.clear()
    await xw(xwresults, alice, "--xwout", out, *[job.uid for job in jobs])
    assert sent == login + [r for job in jobs for r in [("GET", f"/jobs/{job.uid}"), *per_job(job)]]
    assert await api.jobs() == []  # all fetched and erased (was 5 per job)


async def test_xwwait_fetches_a_named_job_once_it_ends(grid, tmp_path, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    worker = Worker(grid, api, tmp_path)
    await worker.setup()
    job = await worker.claim(label="slow")  # RUNNING
    out = tmp_path / "out"
    waiting = asyncio.ensure_future(xw(xwresults, alice, "slow", "--xwwait", "--xwout", str(out)))
    await asyncio.sleep(1.5)
    assert not waiting.done()
    archive = make_zip(tmp_path / "r.zip", {"stdout.txt": b"done\n"})
    await worker.admin.upload_result(worker.host, worker.attempts[job.uid], archive, 0)
    got = await asyncio.wait_for(waiting, 30)
    assert got.stderr == f"xwresults: waiting for job {job.uid} (slow) to finish (it is RUNNING)\n"
    assert got.stdout.splitlines()[:2] == [
        f"UID='{job.uid}', STATUS='COMPLETED'",
        f"Unpacked to : {out / 'slow'}",
    ]
    assert (out / "slow" / "stdout.txt").read_bytes() == b"done\n"
    with pytest.raises(NotFound):
        await api.get_job(job.uid)


async def test_xwtimeout_gives_up_with_one_line_and_polls_with_backoff(  # type: ignore[no-untyped-def]
    grid, tmp_path, xw, user_conf, error_line, sent
) -> None:
    alice, api = await user_conf("alice")
    worker = Worker(grid, api, tmp_path)
    await worker.setup()
    job = await worker.claim(label="slow")
    sent.clear()
    got = await xw(
        xwresults, alice, "slow", "--xwwait", "--xwtimeout", "3", "--xwout", str(tmp_path), expect=1
    )
    assert got.stdout == ""
    lines = got.stderr.splitlines()
    assert lines[0] == f"xwresults: waiting for job {job.uid} (slow) to finish (it is RUNNING)"
    assert error_line(lines[1] + "\n", "xwresults") == (
        f"job {job.uid} (slow) is still RUNNING after 3 s (--xwtimeout): nothing fetched"
    )
    looks = sent.count(("GET", f"/jobs/{job.uid}"))
    assert 3 <= looks <= 5  # after 0.5, 1.25, 2.375 and 3 s (backoff), not every few milliseconds
    assert (await api.get_job(job.uid)).status.value == "RUNNING"

    bad = await xw(xwresults, alice, "slow", "--xwtimeout", "3", expect=1)
    assert error_line(bad.stderr, "xwresults") == "--xwtimeout bounds --xwwait: give both"


async def test_xwwait_without_ref_waits_for_queued_and_running_jobs_only(  # type: ignore[no-untyped-def]
    grid, tmp_path, xw, user_conf
) -> None:
    alice, api = await user_conf("alice")
    worker = Worker(grid, api, tmp_path)
    await worker.setup()
    done = await worker.complete({"r.txt": b"1"})
    running = await worker.claim()
    held = await api.submit(JobIn(app=worker.app, label="held"))
    await api.hold(held.uid, "not now")
    out = tmp_path / "out"
    waiting = asyncio.ensure_future(xw(xwresults, alice, "--xwwait", "--xwout", str(out)))
    await asyncio.sleep(1.5)
    assert not waiting.done()
    archive = make_zip(tmp_path / "r.zip", {"r.txt": b"2"})
    await worker.admin.upload_result(worker.host, worker.attempts[running.uid], archive, 0)
    got = await asyncio.wait_for(waiting, 30)
    assert got.stderr == "xwresults: waiting for 1 job of yours to finish\n"  # the held one is not waited for
    assert [line for line in got.stdout.splitlines() if line.startswith("UID=")] == [
        f"UID='{done.uid}', STATUS='COMPLETED'",
        f"UID='{running.uid}', STATUS='COMPLETED'",
    ]
    assert (out / running.uid / "r.txt").read_bytes() == b"2"
    assert [j.uid for j in await api.jobs()] == [held.uid]


def test_poll_delays_grow_then_stay_capped() -> None:
    delays = list(itertools.islice(poll_delays(), 12))
    assert delays[0] == POLL_FIRST and delays[-1] == POLL_MAX
    assert all(b >= a for a, b in itertools.pairwise(delays)) and max(delays) == POLL_MAX


async def test_download_content_is_one_request_checked_against_the_sha256_it_carries(  # type: ignore[no-untyped-def]
    grid, tmp_path
) -> None:
    alice = await grid.add_user("alice")
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(300_000))
    data = await alice.send_file(src)
    out = tmp_path / "out"
    out.mkdir()
    sizes: list[int | None] = []
    got = await alice.download_content(data.uid, out / "ok.bin", sized=sizes.append)
    assert (got.size, got.sha256, sizes) == (300_000, data.sha256, [300_000])
    assert (out / "ok.bin").read_bytes() == src.read_bytes()

    stored = grid.server.runner.app[SERVICES].store.path(data.sha256)
    stored.chmod(0o600)
    stored.write_bytes(os.urandom(300_000))  # the store's copy rots: same size, other bytes
    with pytest.raises(ValidationFailed, match="does not match its sha256"):
        await alice.download_content(data.uid, out / "bad.bin")
    assert [p.name for p in out.iterdir()] == ["ok.bin"]  # no file, no .part left
