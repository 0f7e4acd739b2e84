"""SQLAlchemy 2 typed models. Every owned object has uid, owner, group, access rights and times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(36)
LABELLED = "label IS NOT NULL AND label <> ''"  # the jobs whose labels must be unique per owner
# Replicas that ended (a result, or a failure) and that the validator has not judged yet.
UNJUDGED = "replica_of IS NOT NULL AND verdict IS NULL AND status IN ('COMPLETED', 'ERROR')"
NULLABLE_JSON = JSON(none_as_null=True)  # None is SQL NULL (testable with IS NULL), not JSON 'null'


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class OwnedMixin:
    """Columns every access-controlled object carries."""

    uid: Mapped[str] = mapped_column(UID, primary_key=True)
    owner_uid: Mapped[str | None] = mapped_column(UID, index=True)
    group_uid: Mapped[str | None] = mapped_column(UID, index=True)
    access_rights: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    modified: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UserGroup(OwnedMixin, Base):
    __tablename__ = "usergroups"

    label: Mapped[str] = mapped_column(String(128), unique=True)
    project: Mapped[bool] = mapped_column(Boolean, default=False)


class User(OwnedMixin, Base):
    __tablename__ = "users"

    login: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    email: Mapped[str] = mapped_column(String(254), default="")
    rights: Mapped[str] = mapped_column(String(16))
    usergroup_uid: Mapped[str | None] = mapped_column(ForeignKey("usergroups.uid", ondelete="RESTRICT"))
    cert_subject: Mapped[str | None] = mapped_column(String(1024), unique=True)
    # Bumped by a password, level or certificate change: tokens carry it and older ones stop working.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Blob(Base):
    """One stored content, shared by every data object with the same sha256."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    refcount: Mapped[int] = mapped_column(Integer, default=0)
    # Small contents (results of a few KiB) live in the row: no file, no fsync, one transaction.
    inline: Mapped[bytes | None] = mapped_column(LargeBinary)


class Data(OwnedMixin, Base):
    __tablename__ = "datas"

    name: Mapped[str] = mapped_column(String(128), index=True)
    type: Mapped[str] = mapped_column(String(32), default="BINARY")
    os: Mapped[str] = mapped_column(String(16))
    cpu: Mapped[str] = mapped_column(String(16))
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256", ondelete="RESTRICT"))
    declared_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))


class App(OwnedMixin, Base):
    __tablename__ = "apps"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    binaries: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    env_uid: Mapped[str | None] = mapped_column(UID)
    wallclock: Mapped[int | None] = mapped_column(Integer)
    min_memory: Mapped[int] = mapped_column(BigInteger, default=0)
    # common.schemas.Validation as a dict: how its jobs' results are validated (None: they are not)
    validation: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)


class Job(OwnedMixin, Base):
    __tablename__ = "jobs"

    app_uid: Mapped[str] = mapped_column(ForeignKey("apps.uid", ondelete="RESTRICT"), index=True)
    args: Mapped[str] = mapped_column(Text, default="")
    env: Mapped[list[str]] = mapped_column(JSON, default=list)
    stdin_uid: Mapped[str | None] = mapped_column(UID)
    inputs: Mapped[list[str]] = mapped_column(JSON, default=list)
    label: Mapped[str | None] = mapped_column(String(128), index=True)
    job_group: Mapped[str | None] = mapped_column(String(128), index=True)
    expected_host: Mapped[str | None] = mapped_column(String(255))
    wallclock: Mapped[int | None] = mapped_column(Integer)
    max_retries: Mapped[int] = mapped_column(Integer, default=10)
    retry: Mapped[int] = mapped_column(Integer, default=0)
    listen_ports: Mapped[list[int]] = mapped_column(JSON, default=list)
    forward_addresses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(String(1024))
    return_code: Mapped[int | None] = mapped_column(Integer)
    result_uid: Mapped[str | None] = mapped_column(UID)
    host_uid: Mapped[str | None] = mapped_column(UID, index=True)
    # The current run (server/scheduler): set by a claim, cleared when the job goes back to the queue.
    attempt_uid: Mapped[str | None] = mapped_column(UID, index=True)
    started: Mapped[datetime | None] = mapped_column()
    completed: Mapped[datetime | None] = mapped_column()
    # Platforms the job can run on: "*" (script app) or "|OS/CPU|OS/CPU|" from the app's binaries.
    platforms: Mapped[str] = mapped_column(String(1024), default="*")
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    max_rss: Mapped[int] = mapped_column(BigInteger, default=0)
    net_in: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes into the job through its tunnels
    net_out: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes out of it
    # Result validation (server/validation/). A validated job never runs itself: it is a parent whose
    # replicas (hidden jobs, replica_of = its uid) run on distinct hosts; ``policy`` is set on parents
    # only (the claim skips them), ``validation`` holds their effective common.schemas.Validation.
    policy: Mapped[str | None] = mapped_column(String(16))
    validation: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    replica_of: Mapped[str | None] = mapped_column(UID, index=True)
    digest: Mapped[str | None] = mapped_column(String(64))  # a replica's result: its canonical digest
    verdict: Mapped[str | None] = mapped_column(String(16))  # a replica's: valid, invalid, trusted...
    # Homogeneous redundancy: "" until the first replica is claimed, then that host's "OS/CPU".
    hr_class: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created"),
        Index("ix_jobs_unjudged", "replica_of", sqlite_where=text(UNJUDGED), postgresql_where=text(UNJUDGED)),
        Index("ix_jobs_created_uid", "created", "uid"),  # the dashboard's keyset pages (server/ui/queries.py)
        # A label names one job among its owner's existing jobs (xwresults LABEL, xwrm LABEL...); jobs
        # without one are unlimited. Deleted jobs are deleted rows, so a label is free again once its job is.
        Index(
            "ux_jobs_owner_label",
            "owner_uid",
            "label",
            unique=True,
            sqlite_where=text(LABELLED),
            postgresql_where=text(LABELLED),
        ),
    )


class Attempt(Base):
    """One run of a job on one host: a claim creates it; heartbeats, files, tunnels, kill orders and the
    result name it, so a late report of an old run can never touch the job's current one."""

    __tablename__ = "attempts"

    uid: Mapped[str] = mapped_column(UID, primary_key=True)
    job_uid: Mapped[str] = mapped_column(UID, index=True)
    host_uid: Mapped[str] = mapped_column(UID, index=True)
    # its host's owner when it was claimed: replicas of one job go to distinct owners, even once the
    # host is deleted (server/scheduler/matching.py, server/validation/)
    owner_uid: Mapped[str | None] = mapped_column(UID)
    state: Mapped[str] = mapped_column(String(16))  # common.enums.AttemptState
    started: Mapped[datetime] = mapped_column(default=utcnow)
    ended: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(1024))
    return_code: Mapped[int | None] = mapped_column(Integer)
    result_uid: Mapped[str | None] = mapped_column(UID)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    max_rss: Mapped[int] = mapped_column(BigInteger, default=0)
    net_in: Mapped[int] = mapped_column(BigInteger, default=0)
    net_out: Mapped[int] = mapped_column(BigInteger, default=0)


class JobRef(Base):
    """A data object a job reads (input, env or stdin): finds waiting jobs when data arrives."""

    __tablename__ = "job_refs"

    job_uid: Mapped[str] = mapped_column(ForeignKey("jobs.uid", ondelete="CASCADE"), primary_key=True)
    data_uid: Mapped[str] = mapped_column(UID, primary_key=True, index=True)


class Host(OwnedMixin, Base):
    """A worker host (filled in by the worker issue)."""

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(255), index=True)
    os: Mapped[str] = mapped_column(String(16))
    cpu: Mapped[str] = mapped_column(String(16))
    cores: Mapped[int] = mapped_column(Integer, default=1)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    disk: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    sandbox: Mapped[str] = mapped_column(String(64), default="")
    last_alive: Mapped[datetime | None] = mapped_column(index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    project_uid: Mapped[str | None] = mapped_column(UID)
    shared_apps: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Applications it may not run for now: app uid -> {"until": ISO time, "reason": text}
    # (server/validation/reliability.py keeps it; the claim reads it through HostView).
    quarantine: Mapped[dict[str, dict[str, str]]] = mapped_column(JSON, default=dict)
    # The host's own credential (server/hostcreds.py): only its SHA-256 is kept; None once revoked.
    credential_hash: Mapped[str | None] = mapped_column(String(64))
    credential_issued: Mapped[datetime | None] = mapped_column()
    revoked: Mapped[datetime | None] = mapped_column()
    revoke_reason: Mapped[str | None] = mapped_column(String(512))


class Certificate(Base):
    """A client certificate the grid CA issued: its serial binds it to one user, for life.

    mTLS with a certificate of our CA is accepted only if its serial is here, not revoked, and its user
    still exists; a re-created login has a new uid and never inherits an old certificate.
    """

    __tablename__ = "certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # lowercase hex
    user_uid: Mapped[str] = mapped_column(UID, index=True)
    subject: Mapped[str] = mapped_column(String(1024))
    issued: Mapped[datetime] = mapped_column(default=utcnow)
    not_after: Mapped[datetime] = mapped_column()
    revoked: Mapped[datetime | None] = mapped_column(index=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(512))


class Proxy(OwnedMixin, Base):
    """A port a client machine publishes through the relay (``xwproxy --xwlistenport``).

    Its address is ``proxy-<uid>-<port>``; jobs whose owner may read it may connect to it.
    """

    __tablename__ = "proxies"

    port: Mapped[int] = mapped_column(Integer)


class Event(Base):
    """One line of the event log: who did what to which object, and the state change."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_uid: Mapped[str | None] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(16))
    object_uid: Mapped[str] = mapped_column(UID, index=True)
    object_owner_uid: Mapped[str | None] = mapped_column(UID, index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(1024))


class Identity(Base):
    """A person at a trusted OpenID provider, (issuer, subject), linked to one user.

    People are known by their issuer's ``sub`` only: an email address can be reassigned or unverified,
    so it is kept for display and never matched.
    """

    __tablename__ = "identities"
    __table_args__ = (Index("ix_identities_issuer_subject", "issuer", "subject", unique=True),)

    uid: Mapped[str] = mapped_column(UID, primary_key=True)
    user_uid: Mapped[str] = mapped_column(ForeignKey("users.uid", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(1024))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(254))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_login: Mapped[datetime | None] = mapped_column()


class SpentIdToken(Base):
    """An ID token already exchanged for an xwhep token, kept until it expires: a replay is refused.

    In the database (not in memory) so that every server process sharing it refuses the replay.
    """

    __tablename__ = "spent_id_tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token, hex
    expires: Mapped[datetime] = mapped_column(index=True)


class UiSession(Base):
    """A signed-in dashboard browser (server/ui/sessions.py). The cookie holds a random id; only its
    SHA-256 is kept. In the database so that every server process sharing it knows the session and a
    sign-out ends it everywhere; ``token_version`` ends it with a password or rights change."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's id, hex
    user_uid: Mapped[str] = mapped_column(ForeignKey("users.uid", ondelete="CASCADE"), index=True)
    token_version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column(index=True)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


OWNED_MODELS: dict[str, type[OwnedMixin]] = {
    "user": User,
    "usergroup": UserGroup,
    "app": App,
    "data": Data,
    "work": Job,
    "host": Host,
    "proxy": Proxy,
}


def table_of(model: type[Base]) -> Table:
    """A model's Table, for Core statements (executemany UPDATEs keyed on other columns than the key)."""
    return cast(Table, model.__table__)


class HostRequest(OwnedMixin, Base):
    """A machine asking for a host credential without an account (``xwworker request``).

    An administrator approves (choosing the host's owner, recorded as this row's owner) or denies it;
    the requester then collects the decision by polling with its secret. Only hashes of the secret and of
    the code are kept, and no credential is: the host and its credential are made at that poll, once.
    """

    __tablename__ = "host_requests"
    __table_args__ = (Index("ix_host_requests_status_address", "status", "address"),)

    secret_hash: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))  # the requester's; pending ones are capped per address
    status: Mapped[str] = mapped_column(String(16))  # server.hostrequests.Status
    expires: Mapped[datetime] = mapped_column()
    name: Mapped[str] = mapped_column(String(255))
    os: Mapped[str] = mapped_column(String(16))
    cpu: Mapped[str] = mapped_column(String(16))
    cores: Mapped[int] = mapped_column(Integer, default=1)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    disk: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    sandbox: Mapped[str] = mapped_column(String(64), default="")
    decided: Mapped[datetime | None] = mapped_column()
    decided_by: Mapped[str | None] = mapped_column(UID)
    reason: Mapped[str | None] = mapped_column(String(512))
    host_uid: Mapped[str | None] = mapped_column(UID)  # the host made when the credential was collected


class HostReliability(Base):
    """How far one host is trusted for one application: results judged, consecutive valid ones, and a
    decaying error-rate estimate (server/validation/reliability.py)."""

    __tablename__ = "host_reliability"

    host_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    app_uid: Mapped[str] = mapped_column(UID, primary_key=True, index=True)
    results: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    valid_streak: Mapped[int] = mapped_column(Integer, default=0)
    error_rate: Mapped[float] = mapped_column(Float, default=0.1)
    trusted_since: Mapped[datetime | None] = mapped_column()
    quarantined_until: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(512))
    updated: Mapped[datetime] = mapped_column(default=utcnow)
