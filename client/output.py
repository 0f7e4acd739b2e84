"""Output formats of the xw* commands: pure functions from wire objects to text (no I/O).

``short`` is XWHEP's one line per object (``UID='..', NAME='..'``); ``xml`` is XWHEP's
``<get><work uid=".." .../></get>`` with attribute names lowercased and stripped of underscores
(``access_rights`` -> ``accessrights``, ``net_in`` -> ``netin``; ``listen_ports`` -> ``listenport`` as
XWHEP spelled it; ``proxy_addresses`` -> ``proxyaddr``, the relay address in XWHEP's smartsocketaddr
role); ``csv`` has a header row of the API's field names and ``json`` is a list of the API's objects
(snake_case: ``net_in``); ``table`` is a rich table.

Result validation nests records in an object: a job's ``validation`` policy and ``replicas`` (its runs and
their verdicts), an app's ``validation``, a host's ``reliability`` (per application). ``json`` shows them
whole; ``xml`` as child elements of the object's element (``<work ..><validation policy=".." .. /><replica
uid=".." verdict=".." .. /></work>``, still one line per object); ``csv``, ``table`` and ``short`` as a
one-cell summary (``quorum 2/5 bitwise``, ``3 (2 valid, 1 invalid)``, ``trusted for 2 of 3 apps;
quarantined for APP until ..: REASON``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
    ReliabilityOut,
    ReplicaOut,
    UserGroupOut,
    UserOut,
    Validation,
)

FORMATS = ("short", "csv", "xml", "json", "table")
XML_HEADER = "<?xml version='1.0' encoding='UTF-8'?>"
EVENT = "event"  # not a stored object kind, but listed by xwevents
CERTIFICATE = "certificate"  # listed by xwcert --xwlist
HOST_REQUEST = "hostrequest"  # listed by xwhostrequests
IDENTITY = "identity"  # listed by xwidentity list


@dataclass(frozen=True)
class Kind:
    """How one kind of object is shown: its model, short-format fields and table columns; ``optional``
    columns follow those of a table only when some object shown has a value for them."""

    model: type[BaseModel]
    short: tuple[str, ...]
    columns: tuple[str, ...]
    optional: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    ObjectKind.APP.value: Kind(
        AppOut, ("uid", "name"), ("uid", "name", "type", "access_rights", "binaries"), ("validation",)
    ),
    ObjectKind.DATA.value: Kind(
        DataOut, ("uid", "name"), ("uid", "name", "type", "size", "status", "access_rights")
    ),
    ObjectKind.JOB.value: Kind(
        JobOut,
        ("uid", "status"),
        ("uid", "status", "label", "app", "args", "access_rights", "status_reason"),
        ("validation", "replicas"),
    ),
    ObjectKind.USER.value: Kind(UserOut, ("uid", "login"), ("uid", "login", "email", "rights", "usergroup")),
    ObjectKind.USERGROUP.value: Kind(
        UserGroupOut, ("uid", "label"), ("uid", "label", "project", "access_rights")
    ),
    ObjectKind.HOST.value: Kind(
        HostOut,
        ("uid", "name", "alive", "running", "reliability"),  # reliability: only when the host has one
        ("name", "os", "cpu", "cores", "sandbox", "alive", "last_alive", "running", "credential"),
        ("reliability",),
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


def _tolerance(v: Validation) -> str:
    return f"(rel {v.rel_tol:g}, abs {v.abs_tol:g})"


def validation_summary(v: Validation | None) -> str | None:
    """A validation policy in one cell: ``quorum 2/5 bitwise`` (2 agreeing results out of at most 5
    runs), ``quorum 2/6 (3 at once) tolerance (rel 1e-06, abs 1e-09) homogeneous``, ``adaptive (trust
    after 10, spot-check 10%, max 5) bitwise``, ``none``."""
    if v is None:
        return None
    if v.policy == "none":
        return "none"
    if v.policy == "adaptive":
        spot = f"{v.spot_check * 100:.3g}%"
        parts = [f"adaptive (trust after {v.trust_after}, spot-check {spot}, max {v.attempts_cap})"]
    else:
        parts = [f"quorum {v.quorum}/{v.attempts_cap}"]
        if v.first_wave != v.quorum:
            parts.append(f"({v.first_wave} at once)")
    parts.append(v.comparator)
    if v.comparator != "bitwise":  # tolerance, or an operator's comparator that may read them
        parts.append(_tolerance(v))
    if v.homogeneous:
        parts.append("homogeneous")
    return " ".join(parts)


PENDING_VERDICT = "pending"  # the server's verdict on a result that is in while the quorum is not


def _replica_state(r: ReplicaOut) -> str:
    if r.verdict == PENDING_VERDICT:
        return "awaiting quorum"
    if r.verdict:
        return r.verdict
    return "result in" if r.status.value == "COMPLETED" else r.status.value.lower()


def replicas_summary(replicas: Sequence[ReplicaOut]) -> str | None:
    """A validated job's runs in one cell: ``3 (2 valid, 1 invalid)``, ``3 (1 awaiting quorum, 2
    pending)``; a run without a verdict counts by its status (``1 running``)."""
    if not replicas:
        return None
    counts = Counter(_replica_state(r) for r in replicas)
    return f"{len(replicas)} ({', '.join(f'{n} {what}' for what, n in counts.items())})"


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def reliability_summary(rows: Sequence[ReliabilityOut], now: datetime | None = None) -> str | None:
    """A host's reliability in one cell: ``trusted for 2 of 3 apps; quarantined for APP until
    2026-11-26T14:00Z: REASON`` (the quarantines still running at ``now``, default the present)."""
    if not rows:
        return None
    moment = _utc(now or datetime.now(UTC))
    trusted = sum(1 for r in rows if r.trusted)
    parts = [f"trusted for {trusted} of {len(rows)} app{'' if len(rows) == 1 else 's'}"]
    for r in rows:
        if r.quarantined_until is None or _utc(r.quarantined_until) <= moment:
            continue
        text = f"quarantined for {r.app} until {_utc(r.quarantined_until):%Y-%m-%dT%H:%MZ}"
        why = " ".join((r.reason or "").split())
        if why.lower().startswith("quarantined"):  # a reason that says it all (app, end) is shown alone
            parts.append(why)
        else:
            parts.append(f"{text}: {why}" if why else text)
    return "; ".join(parts)


# Nested records shown as one summary cell in short, csv and table (as child elements in xml).
SUMMARIES: dict[str, Callable[[Any], str | None]] = {
    "validation": validation_summary,
    "replicas": replicas_summary,
    "reliability": reliability_summary,
}
# Their XML: field -> the element name of each record (one per list item).
XML_CHILDREN = {"validation": "validation", "replicas": "replica", "reliability": "reliability"}


def cell(name: str, value: Any) -> str | None:
    """One field as text in short, csv and table: ``flat``, or the summary of a nested record."""
    summary = SUMMARIES.get(name)
    return summary(value) if summary is not None else flat(value)


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
            text = cell(name, getattr(obj, name))
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
        writer.writerow([cell(n, getattr(obj, n)) or "" for n in names])
    return buf.getvalue().rstrip("\n")


def _xml_attrs(obj: BaseModel, skip: tuple[str, ...] = ()) -> str:
    """An object's fields as XML attributes (None and empty lists left out)."""
    attrs = []
    for name, value in fields(obj).items():
        if name in skip:
            continue
        text = flat(value)
        if text is None or (isinstance(value, list) and not value):
            continue
        attrs.append(f"{xml_name(name)}={_xml_attr(text)}")
    return " ".join(attrs)


def _xml_children(obj: BaseModel) -> str:
    """The nested records of an object (``XML_CHILDREN``) as empty elements, in field order."""
    children: list[str] = []
    for name, value in fields(obj).items():
        tag = XML_CHILDREN.get(name)
        if tag is None:
            continue
        records = value if isinstance(value, list) else [] if value is None else [value]
        children.extend(f"<{tag} {_xml_attrs(record)} />" for record in records)
    return "".join(children)


def format_xml(kind: str, items: Sequence[BaseModel]) -> str:
    """XWHEP's XML: the declaration, ``<get>``, one element per object, ``</get>``; an object's element is
    empty unless it has nested records (``XML_CHILDREN``), which are then its children, on its line."""
    lines = [XML_HEADER, "<get>"]
    for obj in items:
        attrs = _xml_attrs(obj, skip=tuple(XML_CHILDREN))
        children = _xml_children(obj)
        lines.append(f"<{kind} {attrs}>{children}</{kind}>" if children else f"<{kind} {attrs} />")
    lines.append("</get>")
    return "\n".join(lines)


def format_json(items: Sequence[BaseModel]) -> str:
    """A JSON list of the objects as the API returns them."""
    return json.dumps([obj.model_dump(mode="json") for obj in items], indent=2)


UNWRAPPED = 1 << 20  # "no width limit" for measuring a table


def format_table(kind: str, items: Sequence[BaseModel], width: int | None = None) -> str:
    """A rich table of the most useful columns, as plain text: as wide as its cells unless ``width``
    is given (then long cells are wrapped by rich)."""
    spec = KINDS[kind]
    rows = [{c: cell(c, getattr(obj, c)) for c in (*spec.columns, *spec.optional)} for obj in items]
    columns = [*spec.columns, *(c for c in spec.optional if any(row[c] for row in rows))]
    table = Table(*[HEADERS.get(c, c.upper()) for c in columns], box=None, pad_edge=False)
    for row in rows:
        table.add_row(*[row[c] or "" for c in columns])
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
