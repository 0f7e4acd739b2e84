"""Output formats of the xw* commands, checked without a server."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from client.output import XML_HEADER, flat, render, xml_name
from common.schemas import AppOut, DataOut, EventOut, JobOut, UserGroupOut, UserOut

UID = "f87da0c4-2324-4cb2-8622-ef81e30525a7"
APP_UID = "911eeeb0-b4c2-4672-80c6-84971dd17a57"
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OWNED = {"owner": None, "group": None, "access_rights": "0755", "created": WHEN, "modified": WHEN}


def job(**kw: object) -> JobOut:
    base: dict[str, object] = {
        **OWNED,
        "uid": UID,
        "app": APP_UID,
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
        "listen_ports": [8080],
        "forward_addresses": [],
        "status": "PENDING",
        "status_reason": None,
        "return_code": None,
        "result": None,
        "host": None,
        "started": None,
        "completed": None,
    }
    base.update(kw)
    return JobOut.model_validate(base)


def app(name: str = "jackrabbit") -> AppOut:
    return AppOut.model_validate(
        {
            **OWNED,
            "uid": APP_UID,
            "name": name,
            "type": "binary",
            "env": None,
            "binaries": [{"os": "LINUX", "cpu": "AMD64", "data": UID}],
            "wallclock": None,
            "min_memory": 0,
        }
    )


def test_short_is_xwhep_one_line_per_object() -> None:
    assert render("app", [app()]) == f"UID='{APP_UID}', NAME='jackrabbit'"
    assert render("work", [job(), job(status="RUNNING")]) == (
        f"UID='{UID}', STATUS='PENDING'\nUID='{UID}', STATUS='RUNNING'"
    )
    data = DataOut.model_validate(
        {
            **OWNED,
            "uid": UID,
            "name": "in.txt",
            "type": "BINARY",
            "os": "ANY",
            "cpu": "ANY",
            "size": 3,
            "sha256": None,
            "status": "AVAILABLE",
        }
    )
    assert render("data", [data]) == f"UID='{UID}', NAME='in.txt'"
    user = UserOut.model_validate(
        {
            **OWNED,
            "uid": UID,
            "login": "bob",
            "email": "b@x",
            "rights": "STANDARD_USER",
            "usergroup": None,
            "cert_subject": None,
        }
    )
    assert render("user", [user]) == f"UID='{UID}', LOGIN='bob'"
    group = UserGroupOut.model_validate({**OWNED, "uid": UID, "label": "physics", "project": False})
    assert render("usergroup", [group]) == f"UID='{UID}', LABEL='physics'"


def test_short_of_nothing_is_empty() -> None:
    assert render("app", []) == ""


def test_short_escapes_quotes() -> None:
    event = EventOut(
        id=3,
        at=WHEN,
        actor=None,
        kind="work",
        object=UID,
        action="hold",
        from_status=None,
        to_status=None,
        reason="it's held",
    )
    assert render("event", [event]) == f"ID='3', OBJECT='{UID}', ACTION='hold', REASON='it\\'s held'"


def test_xml_matches_xwhep_shape() -> None:
    text = render("work", [job()], "xml")
    lines = text.splitlines()
    assert lines[0] == "<?xml version='1.0' encoding='UTF-8'?>" == XML_HEADER
    assert lines[1] == "<get>"
    assert lines[-1] == "</get>"
    assert lines[2].startswith(f'<work uid="{UID}" ') and lines[2].endswith(" />")
    assert ' status="PENDING"' in lines[2] and ' listenport="8080"' in lines[2]
    assert "accessrights=" in lines[2] and "access_rights" not in lines[2]
    assert "label=" not in lines[2]  # None is left out
    assert "env=" not in lines[2]  # so is an empty list
    root = ET.fromstring(text.encode())
    assert root.tag == "get"
    (work,) = list(root)
    assert work.tag == "work"
    assert work.attrib["uid"] == UID and work.attrib["status"] == "PENDING"
    assert work.attrib["listenport"] == "8080"
    assert work.attrib["maxretries"] == "10"


def test_xml_lists_and_escaping_round_trip() -> None:
    nasty = 'say "hi" & <bye>\n\tdone\x01'
    forward = [{"address": "relay-1#a:3000@b", "port": 1234}, {"address": "r2", "port": 99}]
    text = render("work", [job(args=nasty, listen_ports=[8080, 8081], forward_addresses=forward)], "xml")
    assert "\n" not in text.splitlines()[2]  # one line per object, whatever the values
    work = ET.fromstring(text.encode())[0]
    assert work.attrib["args"] == nasty.replace("\x01", "\ufffd")
    assert work.attrib["listenport"] == "8080,8081"
    assert work.attrib["forwardaddresses"] == "relay-1#a:3000@b,1234;r2,99"


def test_xml_of_nothing_and_element_names() -> None:
    assert render("app", [], "xml") == f"{XML_HEADER}\n<get>\n</get>"
    assert ET.fromstring(render("app", [app()], "xml").encode())[0].tag == "app"
    assert xml_name("listen_ports") == "listenport"
    assert xml_name("expected_host") == "expectedhost"


def test_csv_has_header_and_rows() -> None:
    rows = list(csv.reader(io.StringIO(render("app", [app(), app("wget")], "csv"))))
    assert rows[0][:3] == ["uid", "owner", "group"]
    assert "name" in rows[0] and "binaries" in rows[0]
    by_name = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [r["name"] for r in by_name] == ["jackrabbit", "wget"]
    assert by_name[0]["binaries"] == f"LINUX,AMD64,{UID}"
    assert by_name[0]["env"] == ""
    assert render("app", [], "csv").splitlines() == [rows[0][0] + "," + ",".join(rows[0][1:])]


def test_json_is_a_list_of_api_objects() -> None:
    doc = json.loads(render("work", [job()], "json"))
    assert isinstance(doc, list) and doc[0]["uid"] == UID and doc[0]["listen_ports"] == [8080]
    assert doc[0]["created"].startswith("2024-05-01T12:00:00")
    assert json.loads(render("work", [], "json")) == []


def test_table_shows_columns_and_values() -> None:
    text = render("app", [app()], "table", width=200)
    header, row = text.splitlines()[:2]
    assert header.split()[:3] == ["UID", "NAME", "TYPE"]
    assert APP_UID in row and "jackrabbit" in row and "0755" in row


def test_unknown_format_or_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        render("app", [], "html")
    with pytest.raises(ValueError, match="session"):
        render("session", [], "short")


def test_flat_values() -> None:
    assert flat(None) is None
    assert flat(True) == "true"
    assert flat([1, 2]) == "1,2"
    assert flat([]) == ""
    assert flat(WHEN) == "2024-05-01T12:00:00+00:00"


def test_table_never_splits_a_long_cell() -> None:
    long = "/scratch/" + "x" * 150 + "/a-very-long-application-name"
    lines = render("app", [app(long), app("short")], "table").splitlines()
    assert any(long in line for line in lines), lines  # the whole name on one line, however wide
    assert len(lines) == 3


def test_tunnel_bytes_are_net_in_and_net_out_in_json_and_csv_netin_and_netout_in_xml() -> None:
    traffic = job(net_in=1000, net_out=250)
    (doc,) = json.loads(render("work", [traffic], "json"))
    assert (doc["net_in"], doc["net_out"]) == (1000, 250)
    (row,) = csv.DictReader(io.StringIO(render("work", [traffic], "csv")))
    assert (row["net_in"], row["net_out"]) == ("1000", "250")
    text = render("work", [traffic], "xml")
    (work,) = ET.fromstring(text.encode())
    assert (work.attrib["netin"], work.attrib["netout"]) == ("1000", "250")  # XWHEP's way: no underscore
    assert "net_in" not in text and "net_out" not in text
