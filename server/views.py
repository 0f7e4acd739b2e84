"""Rows as the wire shows them: the owned fields every object carries, and jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.enums import JobStatus
from common.rights import format_mode
from common.schemas import JOB_ADDRESS, ForwardAddress, JobOut, ReplicaOut, Validation, tunnel_name
from server.db.models import Job, OwnedMixin

__all__ = ["job_out", "owned", "proxy_addresses"]


def owned(obj: OwnedMixin | Any) -> dict[str, Any]:
    """The fields every owned object shows."""
    return {
        "uid": obj.uid,
        "owner": obj.owner_uid,
        "group": obj.group_uid,
        "access_rights": format_mode(obj.access_rights),
        "created": obj.created,
        "modified": obj.modified,
    }


def job_out(j: Job | Any, replicas: Sequence[ReplicaOut] = ()) -> JobOut:
    """A job as the wire shows it (from its ORM row, or any object with the same attributes); a
    validated job with its ``replicas`` (server/validation/replication.replicas_out)."""
    policy = getattr(j, "validation", None)
    return JobOut(
        **owned(j),
        app=j.app_uid,
        args=j.args,
        env=list(j.env),
        stdin=j.stdin_uid,
        inputs=list(j.inputs),
        label=j.label,
        job_group=j.job_group,
        expected_host=j.expected_host,
        wallclock=j.wallclock,
        max_retries=j.max_retries,
        retry=j.retry,
        listen_ports=list(j.listen_ports),
        forward_addresses=[ForwardAddress(**f) for f in j.forward_addresses],
        status=JobStatus(j.status),
        status_reason=j.status_reason,
        return_code=j.return_code,
        result=j.result_uid,
        host=j.host_uid,
        started=j.started,
        completed=j.completed,
        attempt=j.attempt_uid,
        memory=j.memory,
        cpu_seconds=j.cpu_seconds,
        max_rss=j.max_rss,
        proxy_addresses=proxy_addresses(j),
        net_in=j.net_in or 0,
        net_out=j.net_out or 0,
        validation=Validation(**policy) if policy else None,
        replicas=list(replicas),
        replica_of=getattr(j, "replica_of", None),
    )


def proxy_addresses(j: Job | Any) -> list[str]:
    """The relay addresses of a job's listen ports: ``job-<uid>-<port>`` while it runs, else none."""
    if j.status != JobStatus.RUNNING.value:
        return []
    return [tunnel_name(JOB_ADDRESS, j.uid, p) for p in j.listen_ports]
