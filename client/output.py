"""Output formats of the xw* commands: pure functions from wire objects to text (no I/O).

``short`` is XWHEP's one line per object (``UID='..', NAME='..'``); ``xml`` is XWHEP's
``<get><work uid=".." .../></get>`` with attribute names lowercased and stripped of underscores
(``access_rights`` -> ``accessrights``, ``net_in`` -> ``netin``; ``listen_ports`` -> ``listenport`` as
XWHEP spelled it; ``proxy_addresses`` -> ``proxyaddr``, the relay address in XWHEP's smartsocketaddr
role); ``csv`` has a header row of the API's field names and ``json`` is a list of the API's objects
(snake_case: ``net_in``); ``table`` is a rich table.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from common.enums import ObjectKind
from common.schemas import (
    AppOut,
    CertificateOut,
    DataOut,
    EventOut,
    HostOut,
    HostRequestOut,
    IdentityOut,
    JobOut,
    UserGroupOut,
    UserOut,
)

FORMATS = ("short", "csv", "xml", "json", "table")
XML_HEADER = "<?xml version='1.0' encoding='UTF-8'?>"
EVENT = "event"  # not a stored object kind, but listed by xwevents
CERTIFICATE = "certificate"  # listed by xwcert --xwlist
HOST_REQUEST = "hostrequest"  # listed by xwhostrequests
IDENTITY = "identity"  # listed by xwidentity list


@dataclass(frozen=True)
class Kind:
    """How one kind of object is shown: its model, short-format fields and table columns."""

    model: type[BaseModel]
    short: tuple[str, ...]
    columns: tuple[str, ...]


KINDS: dict[str, Kind] = {
    ObjectKind.APP.value: Kind(AppOut, ("uid", "name"), ("uid", "name", "type", "access_rights", "binaries")),
    ObjectKind.DATA.value: Kind(
        DataOut, ("uid", "name"), ("uid", "name", "type", "size", "status", "access_rights")
    ),
    ObjectKind.JOB.value: Kind(
        JobOut, ("uid", "status"), ("uid", "status", "label", "app", "args", "access_rights", "status_reason")
    ),
    ObjectKind.USER.value: Kind(UserOut, ("uid", "login"), ("uid", "login", "email", "rights", "usergroup")),
    ObjectKind.USERGROUP.value: Kind(
        UserGroupOut, ("uid", "label"), ("uid", "label", "project", "access_rights")
    ),
    ObjectKind.HOST.value: Kind(
        HostOut,
        ("uid", "name", "alive", "running"),
        ("name", "os", "cpu", "cores", "sandbox", "alive", "last_alive", "running", "credential"),
    ),
    CERTIFICATE: Kind(
        CertificateOut,
        ("serial", "subject", "revoked"),
        ("serial", "subject", "issued", "not_after", "revoked", "revoke_reason"),
    ),
    EVENT: Kind(
        EventOut,
        ("id", "object", "action", "to_status", "reason"),
        ("id", "at", "actor", "kind", "object", "action", "from_status", "to_status", "reason"),
    ),
    IDENTITY: Kind(
        IdentityOut,
        ("uid", "login", "issuer", "subject"),
        ("uid", "login", "issuer", "subject", "email", "last_login"),
    ),
    HOST_REQUEST: Kind(
        HostRequestOut,
        ("uid", "name", "address", "status", "owner"),
        ("uid", "name", "os", "cpu", "cores", "address", "status", "created", "expires", "owner", "reason"),
    ),
}

# Table headers other than the upper-cased field name.
HEADERS = {"last_alive": "LAST SEEN"}
# XWHEP's attribute spellings where dropping underscores is not enough.
XML_NAMES = {"listen_ports": "listenport", "proxy_addresses": "proxyaddr"}
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def flat(value: Any) -> str | None:
    """One field as text; lists are comma-joined, lists of records ';'-joined (``addr,port;addr2,port2``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return ",".join(flat(v) or "" for v in value.model_dump().values())
    if isinstance(value, dict):
        return ",".join(flat(v) or "" for v in value.values())
    if isinstance(value, list | tuple):
        sep = ";" if any(isinstance(v, BaseModel | dict) for v in value) else ","
        return sep.join(flat(v) or "" for v in value)
    return str(value)


def fields(obj: BaseModel) -> dict[str, Any]:
    """The object's fields in declaration order."""
    return {name: getattr(obj, name) for name in type(obj).model_fields}


def xml_name(field: str) -> str:
    """The XML attribute name of a field."""
    return XML_NAMES.get(field, field.replace("_", "").lower())


def _xml_attr(text: str) -> str:
    text = _XML_ILLEGAL.sub("\ufffd", text)
    for raw, entity in (
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ('"', "&quot;"),
        ("\n", "&#10;"),
        ("\r", "&#13;"),
        ("\t", "&#9;"),
    ):
        text = text.replace(raw, entity)
    return f'"{text}"'


def _short_value(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_short(kind: str, items: Sequence[BaseModel]) -> str:
    """XWHEP's ``UID='..', NAME='..'`` lines (fields without a value are left out)."""
    lines = []
    for obj in items:
        parts = []
        for name in KINDS[kind].short:
            text = flat(getattr(obj, name))
            if text is not None:
                parts.append(f"{name.upper()}={_short_value(text)}")
        lines.append(", ".join(parts))
    return "\n".join(lines)


def status_lines(jobs: Sequence[JobOut], with_reason: bool = False) -> str:
    """XWHEP's job status lines ``UID='..', STATUS='..'``, with ``, REASON='..'`` when asked and known."""
    lines = format_short(ObjectKind.JOB.value, jobs).splitlines()
    for i, job in enumerate(jobs):
        if with_reason and job.status_reason:
            lines[i] += f", REASON={_short_value(job.status_reason)}"
    return "\n".join(lines)


def format_csv(kind: str, items: Sequence[BaseModel]) -> str:
    """A header row of field names, then one row per object."""
    names = list(KINDS[kind].model.model_fields)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for obj in items:
        writer.writerow([flat(getattr(obj, n)) or "" for n in names])
    return buf.getvalue().rstrip("\n")


def format_xml(kind: str, items: Sequence[BaseModel]) -> str:
    """XWHEP's XML: the declaration, ``<get>``, one empty element per object, ``</get>``."""
    lines = [XML_HEADER, "<get>"]
    for obj in items:
        attrs = []
        for name, value in fields(obj).items():
            text = flat(value)
            if text is None or (isinstance(value, list) and not value):
                continue
            attrs.append(f"{xml_name(name)}={_xml_attr(text)}")
        lines.append(f"<{kind} {' '.join(attrs)} />")
    lines.append("</get>")
    return "\n".join(lines)


def format_json(items: Sequence[BaseModel]) -> str:
    """A JSON list of the objects as the API returns them."""
    return json.dumps([obj.model_dump(mode="json") for obj in items], indent=2)


UNWRAPPED = 1 << 20  # "no width limit" for measuring a table


def format_table(kind: str, items: Sequence[BaseModel], width: int | None = None) -> str:
    """A rich table of the most useful columns, as plain text: as wide as its cells unless ``width``
    is given (then long cells are wrapped by rich)."""
    columns = KINDS[kind].columns
    table = Table(*[HEADERS.get(c, c.upper()) for c in columns], box=None, pad_edge=False)
    for obj in items:
        table.add_row(*[flat(getattr(obj, c)) or "" for c in columns])
    buf = io.StringIO()
    natural = width or Console(width=UNWRAPPED).measure(table).maximum
    Console(file=buf, width=natural, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def render(kind: str, items: Sequence[BaseModel], fmt: str = "short", width: int | None = None) -> str:
    """Objects of one kind in the chosen format (no trailing newline; '' for an empty short list)."""
    if kind not in KINDS:
        raise ValueError(f"no output format for {kind!r} objects")
    fmt = fmt.lower()
    if fmt == "short":
        return format_short(kind, items)
    if fmt == "csv":
        return format_csv(kind, items)
    if fmt == "xml":
        return format_xml(kind, items)
    if fmt == "json":
        return format_json(items)
    if fmt == "table":
        return format_table(kind, items, width)
    raise ValueError(f"unknown output format {fmt!r} (expected one of {', '.join(FORMATS)})")
