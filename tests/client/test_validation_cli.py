"""The result validation options of xwsubmit and xwsendapp, over MockTransport (no server): what they send,
and that a bad or inconsistent value is one line on stderr, exit 1, and nothing sent."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from client.commands import parse_validation, xwsendapp, xwsubmit
from client.transport import ApiRequest, ApiResponse, MockTransport
from common.schemas import AppIn, JobIn, Validation
from tests.client.conftest import CLEAN_ENV

NOW = "2024-05-01T12:00:00Z"
APP = str(uuid.uuid4())
DATA = str(uuid.uuid4())
OWNED = {"owner": None, "access_rights": "0700", "created": NOW, "modified": NOW}


def job_doc(uid: str, sent: dict[str, Any]) -> dict[str, Any]:
    """The job the server would answer for a submission (the fields the client reads)."""
    return {
        **OWNED,
        "uid": uid,
        "app": sent["app"],
        "args": sent.get("args", ""),
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
        "status": "PENDING",
        "status_reason": None,
        "return_code": None,
        "result": None,
        "host": None,
        "started": None,
        "completed": None,
        "validation": sent.get("validation"),
    }


class Server:
    """A MockTransport's handler that records what the commands send and answers like the server."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []  # (method, path, JSON body) but the login

    def handle(self, req: ApiRequest) -> ApiResponse:
        if req.path == "/auth/token":
            return ApiResponse(json={"access_token": "tok", "expires_in": 60})
        body = req.body_json()
        self.sent.append((req.method, req.path, body))
        if (req.method, req.path) == ("POST", "/jobs"):
            return ApiResponse(201, json=job_doc(str(uuid.uuid4()), body))
        if (req.method, req.path) == ("POST", "/jobs/batch"):
            uids = [str(uuid.uuid4()) for _ in body["jobs"]]
            return ApiResponse(201, json={"uids": uids, "count": len(uids), "pending": len(uids)})
        if (req.method, req.path) == ("POST", "/apps"):
            doc = {**OWNED, "uid": str(uuid.uuid4()), "env": None, "wallclock": None, "min_memory": 0}
            return ApiResponse(201, json={**doc, **body})
        raise AssertionError(f"unexpected request {req.method} {req.path}")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "client.conf"
    path.write_text('server = "https://grid.test"\nlogin = "alice"\npassword = "secret"\n')
    return path


def invoke(cmd: click.Command, conf: Path, *args: str) -> tuple[Result, Server]:
    server = Server()
    argv = ["--xwconfig", str(conf), *args]
    result = CliRunner().invoke(cmd, argv, obj=MockTransport(server.handle), env=CLEAN_ENV)
    return result, server


def refused(cmd: click.Command, conf: Path, *args: str) -> str:
    """The one error line of a refused command (exit 1, nothing sent, nothing on stdout)."""
    result, server = invoke(cmd, conf, *args)
    assert (result.exit_code, result.stdout, server.sent) == (1, "", []), (result.stderr, server.sent)
    (line,) = result.stderr.splitlines()
    prefix = f"{cmd.name}: error: "
    assert line.startswith(prefix) and "Traceback" not in result.stderr
    return line.removeprefix(prefix)


def sent_jobs(server: Server) -> list[JobIn]:
    jobs: list[JobIn] = []
    for method, path, body in server.sent:
        assert method == "POST"
        jobs.extend(JobIn.model_validate(doc) for doc in (body["jobs"] if path == "/jobs/batch" else [body]))
    return jobs


# --- xwsubmit -----------------------------------------------------------------------------------------


def test_xwreplica_is_n_copies_a_majority_agreeing(conf: Path) -> None:
    result, server = invoke(xwsubmit, conf, APP, "arg", "--xwreplica", "3")
    assert result.exit_code == 0, result.stderr
    (job,) = sent_jobs(server)
    assert job.validation == Validation.copies(3)
    assert (job.validation.policy, job.validation.quorum, job.validation.replicas) == ("quorum", 2, 3)
    assert job.validation.max_attempts == 6 and job.args == "arg"
    assert result.stdout.startswith("xw://grid.test/")


def test_xwreplica_1_turns_the_apps_validation_off(conf: Path) -> None:
    result, server = invoke(xwsubmit, conf, APP, "--xwreplica", "1")
    assert result.exit_code == 0, result.stderr
    (job,) = sent_jobs(server)
    assert job.validation == Validation(policy="none")
    (_, _, body) = server.sent[0]
    assert body["validation"]["policy"] == "none"  # sent explicitly: it overrides the app's policy


def test_no_option_leaves_the_apps_validation(conf: Path) -> None:
    result, server = invoke(xwsubmit, conf, APP)
    assert result.exit_code == 0, result.stderr
    (_, _, body) = server.sent[0]
    assert "validation" not in body


def test_xwvalidation_overrides_the_apps_for_the_job(conf: Path) -> None:
    result, server = invoke(
        xwsubmit,
        conf,
        APP,
        "--xwvalidation",
        "QUORUM",
        "--xwquorum",
        "3",
        "--xwmaxattempts",
        "5",
        "--xwcomparator",
        "tolerance",
        "--xwreltol",
        "1e-3",
    )
    assert result.exit_code == 0, result.stderr
    (job,) = sent_jobs(server)
    assert job.validation is not None
    assert job.validation.model_dump(exclude_defaults=True) == {
        "policy": "quorum",
        "quorum": 3,
        "max_attempts": 5,
        "comparator": "tolerance",
        "rel_tol": 1e-3,
    }


def test_every_line_of_an_argfile_gets_the_validation(conf: Path, tmp_path: Path) -> None:
    argfile = tmp_path / "args.txt"
    argfile.write_text("1\n\n2\n3\n")
    result, server = invoke(xwsubmit, conf, APP, "--xwargfile", str(argfile), "--xwreplica", "5")
    assert result.exit_code == 0, result.stderr
    jobs = sent_jobs(server)
    assert [j.args for j in jobs] == ["1", "2", "3"]
    assert [j.validation for j in jobs] == [Validation.copies(5)] * 3


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--xwreplica", "0"], "--xwreplica 0: N must be at least 1"),
        (["--xwreplica", "-2"], "--xwreplica -2: N must be at least 1"),
        (["--xwreplica", "three"], "--xwreplica 'three': expected a whole number"),
        (["--xwreplica", "17"], "--xwreplica 17: Input should be less than or equal to 16"),
        (
            ["--xwreplica", "3", "--xwvalidation", "quorum"],
            "give either --xwreplica N (N copies, a majority agreeing) or --xwvalidation POLICY, not both",
        ),
        (["--xwvalidation", "majority"], "unknown --xwvalidation 'majority'"),
        (["--xwquorum", "3"], "--xwquorum: give --xwvalidation quorum|adaptive (or --xwreplica N) too"),
        (["--xwvalidation", "quorum", "--xwquorum", "0"], "--xwquorum 0: Input should be greater than"),
        (
            ["--xwvalidation", "quorum", "--xwquorum", "3", "--xwmaxattempts", "2"],
            "--xwvalidation quorum: max_attempts must be at least the quorum",
        ),
        (["--xwvalidation", "none", "--xwquorum", "2"], "--xwquorum: --xwvalidation none validates nothing"),
        (
            ["--xwreplica", "1", "--xwcomparator", "tolerance"],
            "--xwcomparator: --xwreplica 1 validates nothing",
        ),
        (["--xwvalidation", "quorum", "--xwcomparator", "no spaces"], "--xwcomparator no spaces: String"),
        (["--xwvalidation", "quorum", "--xwspotcheck", "0.5"], "--xwspotcheck: for --xwvalidation adaptive"),
        (["--xwvalidation", "quorum", "--xwreltol", "0.1"], "--xwreltol: the bitwise comparator has no"),
    ],
)
def test_bad_validation_options_are_one_line(conf: Path, args: list[str], reason: str) -> None:
    assert refused(xwsubmit, conf, APP, *args).startswith(reason)


def test_a_bad_option_refuses_an_argfile_before_anything_is_sent(conf: Path, tmp_path: Path) -> None:
    argfile = tmp_path / "args.txt"
    argfile.write_text("1\n2\n")
    line = refused(xwsubmit, conf, APP, "--xwargfile", str(argfile), "--xwreplica", "0")
    assert line.startswith("--xwreplica 0:")


# --- xwsendapp ----------------------------------------------------------------------------------------


def sent_app(server: Server) -> AppIn:
    ((method, path, body),) = server.sent
    assert (method, path) == ("POST", "/apps")
    return AppIn.model_validate(body)


def test_xwsendapp_sends_the_validation(conf: Path) -> None:
    result, server = invoke(
        xwsendapp,
        conf,
        "sim",
        "binary",
        "amd64",
        "linux",
        DATA,
        "--xwvalidation",
        "quorum",
        "--xwquorum",
        "3",
    )
    assert result.exit_code == 0, result.stderr
    app = sent_app(server)
    assert app.validation == Validation(policy="quorum", quorum=3)
    assert app.binaries[0].data == DATA  # a data uid: nothing uploaded


def test_xwsendapp_takes_every_field(conf: Path) -> None:
    args = [
        *("--xwvalidation", "adaptive", "--xwmaxattempts", "7", "--xwcomparator", "tolerance"),
        *("--xwreltol", "0.01", "--xwabstol", "0", "--xwhomogeneous"),
        *("--xwspotcheck", "5%", "--xwtrustafter", "20"),
    ]
    result, server = invoke(xwsendapp, conf, "sim", "binary", "amd64", "linux", DATA, *args)
    assert result.exit_code == 0, result.stderr
    assert sent_app(server).validation == Validation(
        policy="adaptive",
        max_attempts=7,
        comparator="tolerance",
        rel_tol=0.01,
        abs_tol=0.0,
        homogeneous=True,
        spot_check=0.05,
        trust_after=20,
    )


def test_xwsendapp_replicas(conf: Path) -> None:
    with_policy, server = invoke(
        xwsendapp,
        conf,
        "sim",
        "binary",
        "amd64",
        "linux",
        DATA,
        "--xwvalidation",
        "quorum",
        "--xwreplica",
        "3",
    )
    assert with_policy.exit_code == 0, with_policy.stderr
    assert sent_app(server).validation == Validation(policy="quorum", replicas=3)  # started at once
    alone, server = invoke(xwsendapp, conf, "sim", "binary", "amd64", "linux", DATA, "--xwreplica", "3")
    assert alone.exit_code == 0, alone.stderr
    assert sent_app(server).validation == Validation.copies(3)  # as xwsubmit's


def test_xwsendapp_without_options_sends_no_validation(conf: Path) -> None:
    result, server = invoke(xwsendapp, conf, "sim", "binary", "amd64", "linux", DATA)
    assert result.exit_code == 0, result.stderr
    (_, _, body) = server.sent[0]
    assert "validation" not in body


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["--xwvalidation", "quorum", "--xwquorum", "3", "--xwreplica", "2"],
            "--xwvalidation quorum: replicas",
        ),
        (["--xwvalidation", "adaptive", "--xwreplica", "2"], "--xwreplica: an adaptive validation starts"),
        (["--xwvalidation", "quorum", "--xwquorum", "x"], "--xwquorum 'x': expected a whole number"),
        (["--xwvalidation", "quorum", "--xwtrustafter", "3"], "--xwtrustafter: for --xwvalidation adaptive"),
        (
            ["--xwvalidation", "adaptive", "--xwspotcheck", "2"],
            "--xwspotcheck 2.0: Input should be less than",
        ),
        (
            ["--xwvalidation", "quorum", "--xwcomparator", "tolerance", "--xwabstol", "inf"],
            "--xwabstol inf: Input should be a finite number",
        ),
        (["--xwhomogeneous"], "--xwhomogeneous: give --xwvalidation"),
    ],
)
def test_xwsendapp_refuses_before_uploading(conf: Path, tmp_path: Path, args: list[str], reason: str) -> None:
    binary = tmp_path / "sim"
    binary.write_bytes(b"\x7fELF")  # a local file: it would be uploaded first if the options passed
    assert refused(xwsendapp, conf, "sim", "binary", "amd64", "linux", str(binary), *args).startswith(reason)


# --- the parser alone ---------------------------------------------------------------------------------


def test_parse_validation() -> None:
    assert parse_validation(None, "") is None
    assert parse_validation("2", "") == Validation.copies(2)
    assert parse_validation(None, "replicas", policy="adaptive", spot_check="0.25") == Validation(
        policy="adaptive", spot_check=0.25
    )
    with pytest.raises(ValueError, match="not both"):
        parse_validation("2", "", policy="quorum")
