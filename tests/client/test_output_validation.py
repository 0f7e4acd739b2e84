"""How validated jobs (their policy and replicas), apps and hosts' reliability are shown, without a server."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from client.output import (
    reliability_summary,
    render,
    replicas_summary,
    validation_summary,
)
from common.schemas import HostOut, JobOut, ReliabilityOut, ReplicaOut, Validation
from tests.client.test_output import APP_UID, UID, app, job
from tests.client.test_workers_cmd import host

R1, R2, R3 = (f"{n}0000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3))
DIGEST = "ab" * 32
SOON = datetime.now(UTC) + timedelta(hours=2)
PAST = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def replicas() -> list[dict[str, object]]:
    return [
        {"uid": R1, "status": "COMPLETED", "host": "h1", "digest": DIGEST, "verdict": "valid", "result": R1,
         "return_code": 0},
        {"uid": R2, "status": "COMPLETED", "host": "h2", "digest": DIGEST, "verdict": "valid", "result": R2,
         "return_code": 0},
        {"uid": R3, "status": "COMPLETED", "host": 'h"3<&>', "digest": "cd" * 32, "verdict": "invalid",
         "result": R3, "return_code": 1},
    ]  # fmt: skip


def validated(**kw: object) -> JobOut:
    return job(validation=Validation(policy="quorum", quorum=2, max_attempts=5), replicas=replicas(), **kw)


def reliable_host() -> HostOut:
    return host(
        reliability=[
            ReliabilityOut(app="sim", results=12, valid_streak=12, error_rate=0.01, trusted=True),
            ReliabilityOut(app="render", results=4, valid_streak=4, error_rate=0.05, trusted=True),
            ReliabilityOut(
                app="fold",
                results=3,
                valid_streak=0,
                error_rate=0.6,
                trusted=False,
                quarantined_until=SOON,
                reason="3 invalid results in a row",
            ),
            ReliabilityOut(
                app="old",
                results=9,
                valid_streak=2,
                error_rate=0.2,
                trusted=False,
                quarantined_until=PAST,
                reason="long over",
            ),
        ]
    )


def test_json_shows_the_validation_and_every_replica() -> None:
    (doc,) = json.loads(render("work", [validated()], "json"))
    assert doc["validation"]["policy"] == "quorum" and doc["validation"]["quorum"] == 2
    assert doc["validation"]["max_attempts"] == 5 and doc["validation"]["comparator"] == "bitwise"
    assert [r["uid"] for r in doc["replicas"]] == [R1, R2, R3]
    assert doc["replicas"][2] == {
        "uid": R3,
        "status": "COMPLETED",
        "host": 'h"3<&>',
        "digest": "cd" * 32,
        "verdict": "invalid",
        "result": R3,
        "return_code": 1,
    }
    assert doc["replica_of"] is None


def test_xml_nests_the_validation_and_replicas_in_the_work_element() -> None:
    text = render("work", [validated(), job()], "xml")
    lines = text.splitlines()
    assert len(lines) == 5  # still one line per object
    root = ET.fromstring(text.encode())
    first, plain = list(root)
    assert first.tag == plain.tag == "work" and first.attrib["uid"] == UID
    assert "validation" not in first.attrib and "replicas" not in first.attrib
    policy, *runs = list(first)
    assert policy.tag == "validation"
    assert (policy.attrib["policy"], policy.attrib["quorum"], policy.attrib["maxattempts"]) == (
        "quorum",
        "2",
        "5",
    )
    assert policy.attrib["comparator"] == "bitwise" and "replicas" not in policy.attrib  # None: left out
    assert [r.tag for r in runs] == ["replica"] * 3
    assert [(r.attrib["uid"], r.attrib["verdict"]) for r in runs] == [
        (R1, "valid"),
        (R2, "valid"),
        (R3, "invalid"),
    ]
    assert runs[2].attrib == {
        "uid": R3,
        "status": "COMPLETED",
        "host": 'h"3<&>',  # escaped in the text, whole again once parsed
        "digest": "cd" * 32,
        "verdict": "invalid",
        "result": R3,
        "returncode": "1",
    }
    assert "&lt;&amp;&gt;" in lines[2]
    assert list(plain) == [] and lines[3].endswith(" />")  # no validation: the element XWHEP wrote


def test_xml_of_a_job_without_validation_is_unchanged() -> None:
    text = render("work", [job()], "xml")
    assert "<validation" not in text and "<replica" not in text and "</work>" not in text


def test_csv_and_table_summarise() -> None:
    (row,) = csv.DictReader(io.StringIO(render("work", [validated()], "csv")))
    assert row["validation"] == "quorum 2/5 bitwise"
    assert row["replicas"] == "3 (2 valid, 1 invalid)"
    assert row["replica_of"] == ""
    header, line = render("work", [validated()], "table").splitlines()
    assert header.split()[-2:] == ["VALIDATION", "REPLICAS"]
    assert line.endswith("quorum 2/5 bitwise  3 (2 valid, 1 invalid)")
    plain_header = render("work", [job()], "table").splitlines()[0]
    assert "VALIDATION" not in plain_header and "REPLICAS" not in plain_header  # only when some job has one
    assert render("work", [validated()]) == f"UID='{UID}', STATUS='PENDING'"  # short: XWHEP's line


def test_apps_show_their_validation() -> None:
    policy = Validation(policy="adaptive", spot_check=0.05, trust_after=20)
    sim = app().model_copy(update={"validation": policy})
    (doc,) = json.loads(render("app", [sim], "json"))
    assert doc["validation"]["policy"] == "adaptive"
    (elem,) = ET.fromstring(render("app", [sim], "xml").encode())
    (child,) = list(elem)
    assert (child.tag, child.attrib["spotcheck"], child.attrib["trustafter"]) == ("validation", "0.05", "20")
    assert elem.attrib["binaries"] == f"LINUX,AMD64,{UID}"  # the other fields as before
    (row,) = csv.DictReader(io.StringIO(render("app", [sim], "csv")))
    assert row["validation"] == "adaptive (trust after 20, spot-check 5%, max 5) bitwise"
    assert ET.fromstring(render("app", [app()], "xml").encode())[0].attrib["uid"] == APP_UID


def test_validation_summaries() -> None:
    assert validation_summary(None) is None
    assert validation_summary(Validation()) == "none"
    assert validation_summary(Validation.copies(3)) == "quorum 2/6 (3 at once) bitwise"
    assert validation_summary(Validation(policy="quorum")) == "quorum 2/5 bitwise"
    tolerant = Validation(policy="quorum", quorum=3, comparator="tolerance", rel_tol=1e-3, homogeneous=True)
    assert validation_summary(tolerant) == "quorum 3/7 tolerance (rel 0.001, abs 1e-09) homogeneous"
    assert validation_summary(Validation(policy="adaptive")) == (
        "adaptive (trust after 10, spot-check 10%, max 5) bitwise"
    )


def test_replicas_summary_counts_verdicts_then_statuses() -> None:
    assert replicas_summary([]) is None
    runs = [
        ReplicaOut(uid=R1, status="COMPLETED", verdict="valid"),
        ReplicaOut(uid=R2, status="RUNNING"),
        ReplicaOut(uid=R3, status="PENDING"),
    ]
    assert replicas_summary(runs) == "3 (1 valid, 1 running, 1 pending)"
    waiting = [
        ReplicaOut(uid=R1, status="COMPLETED", verdict="pending"),  # the server's: in, the quorum is not
        ReplicaOut(uid=R2, status="COMPLETED"),  # not judged yet
        ReplicaOut(uid=R3, status="PENDING"),
    ]
    assert replicas_summary(waiting) == "3 (1 awaiting quorum, 1 result in, 1 pending)"


def test_hosts_show_trust_and_quarantines_with_their_reasons() -> None:
    h = reliable_host()
    until = f"{SOON:%Y-%m-%dT%H:%MZ}"
    summary = f"trusted for 2 of 4 apps; quarantined for fold until {until}: 3 invalid results in a row"
    assert reliability_summary(h.reliability) == summary  # a quarantine that is over is not shown
    assert render("host", [h]) == (  # the default output
        f"UID='{UID}', NAME='h1', ALIVE='true', RUNNING='1', RELIABILITY='{summary}'"
    )
    header, line = render("host", [h], "table").splitlines()
    assert header.split()[-1] == "RELIABILITY" and line.endswith(summary)
    assert "RELIABILITY" not in render("host", [host()], "table")
    assert render("host", [host()]) == f"UID='{UID}', NAME='h1', ALIVE='true', RUNNING='1'"
    assert reliability_summary(h.reliability, now=SOON + timedelta(seconds=1)) == "trusted for 2 of 4 apps"
    said = ReliabilityOut(
        app="fold",
        results=3,
        valid_streak=0,
        error_rate=0.34,
        trusted=False,
        quarantined_until=SOON,
        reason="quarantined for fold until then: 3 invalid of 3 results",
    )
    assert reliability_summary([said]) == (  # a reason that names the quarantine is not repeated
        "trusted for 0 of 1 app; quarantined for fold until then: 3 invalid of 3 results"
    )
    one = [ReliabilityOut(app="sim", results=1, valid_streak=1, error_rate=0.1, trusted=False)]
    assert reliability_summary(one) == "trusted for 0 of 1 app"


def test_hosts_reliability_in_json_and_xml() -> None:
    h = reliable_host()
    (doc,) = json.loads(render("host", [h], "json"))
    assert [r["app"] for r in doc["reliability"]] == ["sim", "render", "fold", "old"]
    assert doc["reliability"][2]["reason"] == "3 invalid results in a row"
    assert doc["reliability"][0]["trusted"] is True
    (elem,) = ET.fromstring(render("host", [h], "xml").encode())
    assert elem.tag == "host" and elem.attrib["name"] == "h1" and "reliability" not in elem.attrib
    rows = list(elem)
    assert [r.tag for r in rows] == ["reliability"] * 4
    assert rows[2].attrib == {
        "app": "fold",
        "results": "3",
        "validstreak": "0",
        "errorrate": "0.6",
        "trusted": "false",
        "quarantineduntil": SOON.isoformat(),
        "reason": "3 invalid results in a row",
    }
    (csv_row,) = csv.DictReader(io.StringIO(render("host", [h], "csv")))
    assert csv_row["reliability"].startswith("trusted for 2 of 4 apps; quarantined for fold")
