"""Replica rows: a validated job's runs are jobs of their own, copies of it that workers claim as usual.

A replica copies what its job runs (application, arguments, inputs, limits, owner, rights) and nothing
that names it (no label, no group), points to its job with ``replica_of``, and has no policy of its own.
Rows here are in the shape of ``server.scheduler.submission.INSERT_JOBS`` (JSON columns as encoded
text under ``<column>_json``), so a submission inserts its jobs and their first replicas in one
statement.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from common.enums import JobStatus
from common.schemas import Validation
from common.uri import new_uid
from server.authz import Actor
from server.scheduler.writer import event

# Replicas are queued at a random point within this much after their job's own place: replicas of
# neighbouring jobs interleave, so a worker claiming several at once gets copies of unrelated jobs and
# two hosts seldom meet on more than one (queued side by side, the same pair of hosts would judge each
# other on a whole block of jobs at once: colluders agree a block, an honest host is outvoted on one).
SPREAD_US = 10_000
# The columns a submitted job's row sets (and so a replica's): the rest start NULL.
COLUMNS = (
    "uid owner_uid group_uid access_rights created modified app_uid args env_json stdin_uid inputs_json "
    "label job_group expected_host wallclock max_retries retry listen_ports_json forward_addresses_json "
    "status platforms memory cpu_seconds max_rss net_in net_out policy validation_json replica_of hr_class"
).split()
NOT_COPIED = {"uid", "label", "job_group", "expected_host", "policy", "validation_json", "replica_of"}


def effective(app_policy: Mapping[str, Any] | None, job_policy: Validation | None) -> Validation | None:
    """A job's policy: its own, else its application's; None when nothing is validated."""
    chosen = job_policy if job_policy is not None else Validation(**app_policy) if app_policy else None
    if chosen is None or chosen.policy == "none":
        return None
    return chosen


def encoded(policy: Validation | None) -> str | None:
    """The ``jobs.validation`` value of a job (JSON text, or NULL)."""
    return None if policy is None else policy.model_dump_json(exclude_defaults=True)


def replica_rows(
    job: Mapping[str, Any], uids: Sequence[str], created: datetime, *, hr_class: str | None
) -> list[dict[str, Any]]:
    """Rows for replicas ``uids`` of ``job`` (a row in INSERT_JOBS shape), queued at ``created`` plus a
    random spread of up to SPREAD_US microseconds each."""
    base = {k: v for k, v in job.items() if k not in NOT_COPIED}
    base.update(
        label=None,
        job_group=None,
        expected_host=None,
        policy=None,
        validation_json=None,
        retry=0,
        status=JobStatus.PENDING.value,
        hr_class=hr_class,
        listen_ports_json="[]",
        forward_addresses_json="[]",
        cpu_seconds=0.0,
        max_rss=0,
        net_in=0,
        net_out=0,
    )
    return [
        {
            **base,
            "uid": uid,
            "replica_of": job["uid"],
            "created": created + timedelta(microseconds=random.randrange(SPREAD_US)),
            "modified": created,
        }
        for uid in uids
    ]


def as_insert_row(row: Any) -> dict[str, Any]:
    """A job read from the database (a Core row of the jobs table) in INSERT_JOBS shape."""
    values = dict(row._mapping)
    for column in ("env", "inputs", "listen_ports", "forward_addresses"):
        values[f"{column}_json"] = json.dumps(values.pop(column) or [])
    values["validation_json"] = json.dumps(values["validation"]) if values.get("validation") else None
    return {k: values.get(k) for k in COLUMNS}


def first_replicas(job: Mapping[str, Any], policy: Validation, now: datetime) -> list[dict[str, Any]]:
    """The rows of a new validated job's first replicas (INSERT_JOBS shape)."""
    uids = [new_uid() for _ in range(policy.first_wave)]
    return replica_rows(job, uids, now, hr_class="" if policy.homogeneous else None)


def replica_events(actor: Actor | None, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A ``replica`` event on each new replica, naming its job."""
    shape = event(actor, "work", "", None, "replica")
    return [
        {
            **shape,
            "object_uid": r["uid"],
            "object_owner_uid": r["owner_uid"],
            "to_status": r["status"],
            "reason": f"replica of {r['replica_of']}",
        }
        for r in rows
    ]
