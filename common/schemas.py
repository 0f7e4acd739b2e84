"""Wire schemas: the JSON bodies of the REST API, shared by server and client."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, Literal, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from common.enums import CPU, OS, AppType, DataStatus, JobStatus, UserRights
from common.rights import parse_mode

MAX_NAME = 128
MAX_ARGS = 8192
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@=:-]*")
# The same rule for the OpenAPI document (no lookahead: "no '..'" is "each '.' is followed by another
# character, or ends the name"), so schema-driven clients generate names the server takes.
NAME_PATTERN = r"^[A-Za-z0-9_](?:\.?[A-Za-z0-9_+@=:-])*\.?$"
# Modes as parse_mode reads them, for the document: 755, 0755, 0o755, 0x755 (<= 1777), or u+x,go-w.
MODE_PATTERN = r"^(?:(?:0[xXoO]?)?[01]?[0-7]{1,3}|[ugoa]*[-+=][rwxt]*(?:,[ugoa]*[-+=][rwxt]*)*)$"
UID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# Every integer fits its column (Integer is int32, BigInteger int64) with room to spare.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_BYTES = 1 << 60  # 1 EiB: sizes, memory, disk, byte counters (doubled for rlimits, still < 2**63)
MAX_SECONDS = 1e12  # CPU or wall seconds: a year on 4096 cores is 1.3e11


def _check_name(v: str) -> str:
    if ".." in v or not _NAME_RE.fullmatch(v):
        raise ValueError(
            "must start with a letter, digit or '_' and hold only letters, digits and _.+@=:- "
            "(no '/', '\\\\', '..', spaces or control characters)"
        )
    return v


def _check_mode(v: str) -> str:
    parse_mode(v)
    return v


# Name and Mode keep their readable error messages (AfterValidator); the pattern is for the document.
Name = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME, json_schema_extra={"pattern": NAME_PATTERN}),
    AfterValidator(_check_name),
]
Mode = Annotated[
    str, Field(max_length=32, json_schema_extra={"pattern": MODE_PATTERN}), AfterValidator(_check_mode)
]
Uid = Annotated[str, Field(pattern=UID_PATTERN)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
ReturnCode = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]  # jobs.return_code is an Integer column


# Validation context for a JSON document whose raw bytes hold no ``\u0000`` escape: the only way to write
# U+0000 in JSON (raw control characters are malformed), so none of its strings can hold one.
NUL_FREE = {"nul_free": True}


def _has_nul(value: object) -> bool:
    # exact types, not isinstance: this runs for every model read from the wire
    if type(value) is str:
        return "\x00" in value
    if type(value) is list or type(value) is tuple or type(value) is set or type(value) is frozenset:
        return any(_has_nul(v) for v in value)
    if type(value) is dict:
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False  # numbers; enum values are fixed; nested models checked themselves


class Model(BaseModel):
    """Base: unknown fields are refused, so typos fail loudly; floats are finite; wire text has no NUL.

    NaN and infinities have no JSON spelling, and PostgreSQL stores a NaN that then breaks every reader.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _no_nul(self, info: ValidationInfo) -> Self:
        """Refuse U+0000 in any string of a document read from the wire (PostgreSQL cannot store it).

        Only JSON (and string) input is checked: models the server builds from its own rows are not,
        so that reading them stays cheap and a legacy row cannot turn a list into a 500. A reader that
        scanned the raw bytes passes ``context=NUL_FREE`` to skip the walk.
        """
        if info.mode == "python" or (isinstance(info.context, dict) and info.context.get("nul_free")):
            return self
        for name, value in self.__dict__.items():
            if _has_nul(value):
                raise ValueError(f"{name}: NUL characters (\\u0000) are not allowed")
        return self


class Owned(Model):
    """Fields every stored object carries."""

    uid: str
    owner: str | None = None
    group: str | None = None
    access_rights: str
    created: datetime
    modified: datetime


T = TypeVar("T")


class Page(Model, Generic[T]):
    """One page of a list."""

    items: list[T]
    total: int
    offset: int
    limit: int


# --- auth -----------------------------------------------------------------------------------------


class TokenRequest(Model):
    login: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class TokenResponse(Model):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class CsrRequest(Model):
    csr: Annotated[str, Field(min_length=1, max_length=16384)]


class CertResponse(Model):
    certificate: str
    ca: str
    subject: str
    serial: str | None = None


class Version(Model):
    version: str
    api: str = "v1"


class Ping(Model):
    pong: bool = True
    login: str
    rights: UserRights
    auth: str
    via: str | None = None  # the identity provider's issuer, for a login through OpenID Connect


# --- OpenID Connect -------------------------------------------------------------------------------

MAX_ID_TOKEN = 16384


class OidcProviderOut(Model):
    """A trusted identity provider, as a client needs it to sign in (no secret)."""

    name: str
    issuer: str
    client_id: str
    scopes: list[str]


class OidcProviders(Model):
    providers: list[OidcProviderOut]


class OidcTokenRequest(Model):
    """Exchange an ID token from a trusted provider for an xwhep token."""

    provider: Annotated[str, Field(min_length=1, max_length=1024)]  # its name, or its issuer URL
    id_token: Annotated[str, Field(min_length=1, max_length=MAX_ID_TOKEN)]
    nonce: Annotated[str | None, Field(max_length=512)] = None  # the one the login sent, if any


class IdentityIn(Model):
    """Link an identity (issuer, subject) to a user: only administrators."""

    user: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]  # login or uid
    issuer: Annotated[str, Field(min_length=1, max_length=1024)]
    subject: Annotated[str, Field(min_length=1, max_length=255)]


class IdentityOut(Model):
    uid: str
    user: str  # the user's uid
    login: str
    issuer: str
    subject: str
    email: str | None = None
    created: datetime
    last_login: datetime | None = None


class Identities(Model):
    identities: list[IdentityOut]


# --- users and groups -----------------------------------------------------------------------------


class UserIn(Model):
    login: Name
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    email: Annotated[str, Field(max_length=254)] = ""
    rights: UserRights = UserRights.STANDARD_USER
    usergroup: Annotated[str, Field(max_length=MAX_NAME)] | None = None  # uid or label
    cert_subject: Annotated[str, Field(max_length=1024)] | None = None


class UserPatch(Model):
    password: Annotated[str, Field(min_length=8, max_length=1024)] | None = None
    # required to change one's own password: a stolen token alone cannot take the account over
    current_password: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    email: Annotated[str, Field(max_length=254)] | None = None
    rights: UserRights | None = None
    cert_subject: Annotated[str, Field(max_length=1024)] | None = None


class UserOut(Owned):
    login: str
    email: str
    rights: UserRights
    usergroup: str | None
    cert_subject: str | None


class CertificateOut(Model):
    """A client certificate the grid CA issued (the registry behind revocation)."""

    serial: str
    user: str
    subject: str
    issued: datetime
    not_after: datetime
    revoked: datetime | None
    revoke_reason: str | None


class CertificateRevoke(Model):
    reason: Annotated[str, Field(max_length=512)] = ""


class UserGroupIn(Model):
    label: Name
    project: bool = False
    access_rights: Mode | None = None


class UserGroupOut(Owned):
    label: str
    project: bool


# --- apps and data --------------------------------------------------------------------------------


class Binary(Model):
    os: OS
    cpu: CPU
    data: Uid


# --- result validation (replication) ---------------------------------------------------------------

ValidationPolicy = Literal["none", "quorum", "adaptive"]
# Comparator names: bitwise, tolerance, or an operator's entry point (group "xwhep.comparators").
ComparatorName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")]


class Validation(Model):
    """How a job's result is validated: by nobody (none), by ``quorum`` agreeing results out of at most
    ``max_attempts`` runs on distinct hosts of distinct owners (``replicas`` started at once), or
    adaptively (one run on a host trusted for the app, spot-checked at rate ``spot_check``; two agreeing
    runs otherwise). ``comparator`` decides whether two results agree."""

    policy: ValidationPolicy = "none"
    quorum: Annotated[int, Field(ge=1, le=16)] = 2
    replicas: Annotated[int, Field(ge=1, le=16)] | None = None  # runs started at once (default: quorum)
    max_attempts: Annotated[int, Field(ge=1, le=32)] | None = None  # default: 2 * quorum + 1
    comparator: ComparatorName = "bitwise"
    rel_tol: Annotated[float, Field(ge=0, le=1)] = 1e-6  # tolerance comparator
    abs_tol: Annotated[float, Field(ge=0, le=1e300)] = 1e-9
    homogeneous: bool = False  # replicas only on hosts of the first one's OS/CPU
    spot_check: Annotated[float, Field(ge=0, le=1)] = 0.1  # adaptive: share of trusted results re-run
    trust_after: Annotated[int, Field(ge=1, le=1000)] = 10  # adaptive: agreeing results before trust

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.replicas is not None and self.replicas < self.quorum:
            raise ValueError(f"replicas ({self.replicas}) must be at least the quorum ({self.quorum})")
        if self.max_attempts is not None and self.max_attempts < max(self.quorum, self.replicas or 0):
            raise ValueError("max_attempts must be at least the quorum and the replicas")
        return self

    @classmethod
    def copies(cls, n: int) -> Validation:
        """XWHEP's ``--xwreplica N``: N runs at once, the result a majority of them agree on."""
        return cls(policy="quorum", quorum=n // 2 + 1, replicas=n, max_attempts=2 * n)

    @property
    def first_wave(self) -> int:
        """Runs started when the job is queued."""
        return 1 if self.policy == "adaptive" else max(self.quorum, self.replicas or 0)

    @property
    def attempts_cap(self) -> int:
        """Runs a job may take at most before it fails."""
        if self.max_attempts is not None:
            return self.max_attempts
        return 2 * (2 if self.policy == "adaptive" else self.quorum) + 1


class ReplicaOut(Model):
    """One run of a validated job (a replica job of its own, hidden from listings) and its verdict."""

    uid: str
    status: JobStatus
    host: str | None = None
    digest: str | None = None  # the canonical digest of its result's content (files, not zip bytes)
    verdict: str | None = None  # valid | invalid | inconclusive | trusted | cancelled | failed | None
    result: str | None = None  # its result data: kept for the owner whatever the verdict
    return_code: int | None = None


class ReliabilityOut(Model):
    """How far one host is trusted for one application."""

    app: str
    results: int
    valid_streak: int
    error_rate: float
    trusted: bool
    quarantined_until: datetime | None = None
    reason: str | None = None


class AppIn(Model):
    name: Name
    type: AppType = AppType.BINARY
    binaries: list[Binary] = Field(default_factory=list, max_length=32)
    env: Uid | None = None
    wallclock: Annotated[int, Field(ge=1, le=365 * 86400)] | None = None
    min_memory: Bytes = 0
    access_rights: Mode | None = None
    validation: Validation | None = None  # how its jobs' results are validated (default: not at all)


class AppOut(Owned):
    name: str
    type: AppType
    binaries: list[Binary]
    env: str | None
    wallclock: int | None
    min_memory: int
    validation: Validation | None = None


class DataIn(Model):
    name: Name
    type: Annotated[str, Field(max_length=32, pattern=r"^[A-Za-z0-9_]*$")] = "BINARY"
    os: OS = OS.ANY
    cpu: CPU = CPU.ANY
    size: Bytes | None = None
    sha256: Sha256 | None = None
    access_rights: Mode | None = None


class DataOut(Owned):
    name: str
    type: str
    os: OS
    cpu: CPU
    size: int | None
    sha256: str | None
    status: DataStatus


# --- jobs -----------------------------------------------------------------------------------------


class ForwardAddress(Model):
    address: Annotated[str, Field(min_length=1, max_length=512)]
    port: Port


class JobIn(Model):
    app: Uid
    args: Annotated[str, Field(max_length=MAX_ARGS)] = ""
    env: list[Uid] = Field(default_factory=list, max_length=64)
    stdin: Uid | None = None
    inputs: list[Uid] = Field(default_factory=list, max_length=1024)
    label: Name | None = None
    group: Name | None = None
    expected_host: Annotated[str, Field(max_length=255)] | None = None
    wallclock: Annotated[int, Field(ge=1, le=365 * 86400)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=1000)] = 10
    listen_ports: list[Port] = Field(default_factory=list, max_length=16)
    forward_addresses: list[ForwardAddress] = Field(default_factory=list, max_length=16)
    memory: Bytes | None = None  # default: the app's min_memory
    access_rights: Mode | None = None
    validation: Validation | None = None  # default: the app's


MAX_BATCH_JOBS = 10_000  # jobs per POST /jobs/batch: one transaction, a body of a few MiB


class JobsIn(Model):
    """Many jobs submitted at once (``POST /jobs/batch``): all are created, in one transaction, or none."""

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


class JobsOut(Model):
    """What a batch created: the new jobs' uids in the order of the request (not the whole jobs: a reply
    of 10,000 ``JobOut`` would be ~10 MiB), how many, and how many of them are PENDING (the others are
    UNAVAILABLE until their input data has content)."""

    count: int
    pending: int
    uids: list[str]


class JobOut(Owned):
    app: str
    args: str
    env: list[str]
    stdin: str | None
    inputs: list[str]
    label: str | None
    job_group: str | None
    expected_host: str | None
    wallclock: int | None
    max_retries: int
    retry: int
    listen_ports: list[int]
    forward_addresses: list[ForwardAddress]
    status: JobStatus
    status_reason: str | None
    return_code: int | None
    result: str | None
    host: str | None
    started: datetime | None
    completed: datetime | None
    attempt: str | None = None  # the current run (one per claim), while RUNNING or DATAREQUEST
    memory: int = 0
    cpu_seconds: float = 0.0
    max_rss: int = 0
    proxy_addresses: list[str] = Field(default_factory=list)  # job-<uid>-<port> while RUNNING
    net_in: int = 0  # bytes into the job through its tunnels
    net_out: int = 0  # bytes out of it
    validation: Validation | None = None  # how its result is validated (None: not validated)
    replicas: list[ReplicaOut] = Field(default_factory=list)  # its runs, when validated
    replica_of: str | None = None  # a replica: the job it is a run of


class ChmodIn(Model):
    mode: Mode


class ObjectRef(Model):
    uid: str
    kind: str
    access_rights: str


# --- events ---------------------------------------------------------------------------------------


class EventOut(Model):
    id: int
    at: datetime
    actor: str | None
    kind: str
    object: str
    action: str
    from_status: str | None
    to_status: str | None
    reason: str | None


# --- workers ----------------------------------------------------------------------------------------


class HostIn(Model):
    """What a worker tells the server about its machine when it enrols."""

    name: Name
    os: OS
    cpu: CPU
    cores: Annotated[int, Field(ge=1, le=4096)] = 1
    memory: Bytes = 0
    disk: Bytes = 0
    version: Annotated[str, Field(max_length=32)] = ""
    sandbox: Annotated[str, Field(max_length=64)] = ""
    project: Name | None = None  # usergroup label: run only that group's jobs
    shared_apps: list[Name] = Field(default_factory=list, max_length=64)


class HostOut(Owned):
    name: str
    os: OS
    cpu: CPU
    cores: int
    memory: int
    disk: int
    version: str
    sandbox: str
    project: str | None
    last_alive: datetime | None
    alive: bool
    running: int
    credential: Literal["active", "revoked"] = "active"  # the host's own credential
    credential_issued: datetime | None = None
    revoked: datetime | None = None
    revoke_reason: str | None = None
    reliability: list[ReliabilityOut] = Field(default_factory=list)  # per application it ran


class Enrolment(Model):
    """The server's answer to an enrolment: the host record, the heartbeat timing it wants and, for a new
    host, its own credential (shown once; the worker keeps it and speaks with it from then on)."""

    host: HostOut
    alive_period: float
    alive_timeout: float
    credential: str | None = None


class HostRevoke(Model):
    """Why a host's credential is revoked (shown on its record)."""

    reason: Annotated[str, Field(max_length=512)] = ""


class FileRef(Model):
    """A data object a worker must fetch for a job (by sha256, through the job-scoped route)."""

    uid: str
    name: str
    sha256: str
    size: int


class Assignment(Model):
    """A job claimed for a host — one attempt at it — with everything the worker needs to run it.

    Every later call about this run (files, heartbeats, tunnels, report, result) names ``attempt``."""

    attempt: str
    job: JobOut
    app_name: str
    app_type: AppType
    executable: FileRef
    inputs: list[FileRef]
    stdin: FileRef | None
    wallclock: int | None
    memory: int


class Assignments(Model):
    """What one work request claimed (at most the ``max`` it asked for)."""

    items: list[Assignment]


class JobUsage(Model):
    """One running attempt in a heartbeat."""

    attempt: Uid
    cpu_seconds: Seconds = 0.0
    max_rss: Bytes = 0
    wall_seconds: Seconds = 0.0
    net_in: Bytes = 0  # bytes into the job through its tunnels so far
    net_out: Bytes = 0  # bytes out of it so far


class Heartbeat(Model):
    running: list[JobUsage] = Field(default_factory=list, max_length=4096)


class HeartbeatReply(Model):
    alive_period: float
    kill: dict[str, str]  # attempt uid -> reason


INLINE_RESULT_BYTES = 64 * 1024  # results up to this size travel inline (base64) in a results report


class InlineResult(Model):
    """A finished attempt's results zip, small enough to travel in a JSON report."""

    attempt: Uid
    return_code: ReturnCode
    content: Annotated[str, Field(max_length=(INLINE_RESULT_BYTES * 4) // 3 + 4)]  # base64
    sha256: Sha256


class ResultsIn(Model):
    """Several finished attempts at once (one request, one transaction)."""

    results: list[InlineResult] = Field(min_length=1, max_length=64)


class ResultsReply(Model):
    """Which attempts' results were accepted, and why the others were refused (attempt -> reason)."""

    accepted: list[str]
    refused: dict[str, str]


class JobReport(Model):
    """A worker's report of a job that ends without results, or whose results are pending."""

    outcome: Literal["failed", "result_pending", "abort"]
    reason: Annotated[str, Field(max_length=1024)] = ""
    return_code: ReturnCode | None = None


class HoldIn(Model):
    reason: Annotated[str, Field(max_length=512)] = ""


# --- relay tunnels (docs/RELAY.md) ------------------------------------------------------------------

JOB_ADDRESS = "job"
PROXY_ADDRESS = "proxy"
_ADDRESS_RE = re.compile(
    r"(job|proxy)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-([1-9][0-9]{0,4})"
)


def tunnel_name(kind: str, uid: str, port: int) -> str:
    """A relay name/address: ``job-<uid>-<port>`` or ``proxy-<uid>-<port>`` (lowercase)."""
    return f"{kind}-{uid}-{port}".lower()


def parse_tunnel_name(text: str) -> tuple[str, str, int] | None:
    """``(kind, uid, port)`` of a relay address (case-insensitive), None if it is not one."""
    m = _ADDRESS_RE.fullmatch(text.strip().lower())
    if m is None or not 1 <= int(m.group(3)) <= 65535:
        return None
    return m.group(1), m.group(2), int(m.group(3))


class ProxyIn(Model):
    """A client-side port to publish through the relay (``xwproxy --xwlistenport PORT``)."""

    port: Port


class ProxyOut(Owned):
    port: int
    name: str  # proxy-<uid>-<port>: the address jobs forward to


class TunnelTicket(Model):
    """A relay ticket: where to connect, the relay's host key to pin, the signed JWT (password of user xw).

    ``name`` is the address the ticket is about (connect or publish), ``id`` the proxy's uid for a new
    proxy; ``refused`` lists forward addresses left out of a worker's ticket, each with its reason.
    """

    relay: str
    host_key: str | None
    ticket: str
    name: str | None = None
    id: str | None = None
    refused: list[str] = Field(default_factory=list)


# --- host requests (xwworker request: a credential without an account) -------------------------

RequestStatus = Literal["pending", "approved", "denied", "delivered", "expired"]


class HostRequestIn(Model):
    """What a machine without an account tells about itself when it asks for a host credential."""

    name: Name
    os: OS
    cpu: CPU
    cores: Annotated[int, Field(ge=1, le=4096)] = 1
    memory: Bytes = 0
    disk: Bytes = 0
    version: Annotated[str, Field(max_length=32)] = ""
    sandbox: Annotated[str, Field(max_length=64)] = ""


class HostRequestTicket(Model):
    """A request sent: its uid, the secret only the requester holds (it polls with it), the code its
    volunteer reads to the administrator, and when it lapses unless decided."""

    uid: str
    secret: str
    code: str
    expires: datetime


class HostRequestPoll(Model):
    secret: Annotated[str, Field(min_length=16, max_length=128)]


class HostRequestState(Model):
    """The requester's view: still pending, denied (with the reason), expired, or approved: then, once,
    the new host's uid and its own credential."""

    status: Literal["pending", "approved", "denied", "expired"]
    expires: datetime
    reason: str | None = None
    host: str | None = None
    owner: str | None = None  # the host owner's login
    credential: str | None = None


class HostRequestApprove(Model):
    code: Annotated[str, Field(min_length=1, max_length=32)]  # as the volunteer read it: K7QF-2M9D
    owner: Name | None = None  # login or uid (default: the shared worker account, else the approver)


class HostRequestDeny(Model):
    reason: Annotated[str, Field(max_length=512)] = ""


class HostRequestOut(Model):
    """A request as administrators list it (never its code: that comes from the volunteer)."""

    uid: str
    name: str
    os: OS
    cpu: CPU
    cores: int
    memory: int
    disk: int
    version: str
    sandbox: str
    address: str
    status: RequestStatus
    created: datetime
    expires: datetime
    owner: str | None = None  # login of the owner an approval chose
    decided: datetime | None = None
    decided_by: str | None = None  # login
    reason: str | None = None
    host: str | None = None  # uid of the host made when the requester collected its credential
