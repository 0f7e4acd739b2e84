"""The async xwhep API: typed calls over one transport, used by the commands, the worker and tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from client.config import ClientConfig
from client.signin import CachedSignIn, not_signed_in
from client.tokencache import TokenCache
from client.transport import CHUNK, ApiRequest, ApiResponse, HttpTransport, Transport
from common.errors import NotFound, Unauthorized, ValidationFailed, XWError
from common.schemas import (
    AppIn,
    AppOut,
    Assignment,
    Assignments,
    CertificateOut,
    CertResponse,
    DataIn,
    DataOut,
    Enrolment,
    EventOut,
    Heartbeat,
    HeartbeatReply,
    HostIn,
    HostOut,
    HostRequestIn,
    HostRequestOut,
    HostRequestState,
    HostRequestTicket,
    Identities,
    IdentityIn,
    IdentityOut,
    InlineResult,
    JobIn,
    JobOut,
    JobReport,
    JobsIn,
    JobsOut,
    ObjectRef,
    OidcProviders,
    OidcTokenRequest,
    Page,
    Ping,
    ProxyOut,
    ResultsIn,
    ResultsReply,
    TokenResponse,
    TunnelTicket,
    UserGroupIn,
    UserGroupOut,
    UserIn,
    UserOut,
    UserPatch,
    Version,
)
from common.uri import XWUri, is_uid, parse_uri

M = TypeVar("M", bound=BaseModel)
SUBMIT_CHUNK = 5000  # jobs per POST /jobs/batch: ~1 MB of JSON, well under the server's 10,000
SUBMIT_IN_FLIGHT = 2  # batches at once: the server parses one while the database stores the other
Progress = Callable[[int], None]  # called with the number of bytes just moved
SHA256_HEADER = "X-Content-SHA256"  # the server's sha256 of a content it sends


@dataclass(frozen=True)
class Content:
    """A downloaded content: its data uid, size and sha256 (checked)."""

    uid: str
    size: int
    sha256: str


HOST_PROTOCOL = frozenset(
    {"work", "alive", "attempts", "results"}
)  # /hosts/<uid>/<these>...: spoken as the host
KIND_PATHS = {"app": "/apps", "data": "/data", "work": "/jobs", "user": "/users", "usergroup": "/usergroups"}


class XWClient:
    """An authenticated session with one server. Use as ``async with XWClient(cfg) as xw``.

    Requests go through ``transport``: by default ``HttpTransport(cfg)`` (HTTPS to the configured servers);
    tests pass a ``client.transport.MockTransport`` to answer in memory.
    """

    def __init__(
        self, cfg: ClientConfig, transport: Transport | None = None, *, tokens: TokenCache | None = None
    ) -> None:
        self.cfg = cfg
        self.transport: Transport = transport if transport is not None else HttpTransport(cfg)
        # without a password or a certificate: the sign-in xwlogin cached for this server (client/signin.py)
        self.tokens = tokens if tokens is not None else TokenCache.default()
        self.signin = CachedSignIn(self.tokens, (*cfg.servers, cfg.server)[0], self.oidc_token)
        self._token: str | None = None
        self._login_lock = asyncio.Lock()
        self._host_credentials: dict[str, str] = {}  # host uid -> that host's own credential

    async def __aenter__(self) -> XWClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.transport.aclose()

    def uri(self, uid: str) -> XWUri:
        return XWUri(self.cfg.host, uid)

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def _uses_signin(self) -> bool:
        """Neither a password nor a certificate is configured: the cached OIDC sign-in speaks for us."""
        return not (self.cfg.login and self.cfg.password) and not self.cfg.cert

    async def _auth_headers(self, refused: str | None = None) -> dict[str, str]:
        if self.cfg.login and self.cfg.password and not self.cfg.cert:
            async with self._login_lock:
                if self._token is None:
                    self._token = (await self.login(self.cfg.login, self.cfg.password)).access_token
            return {"Authorization": f"Bearer {self._token}"}
        if self._uses_signin:
            async with self._login_lock:  # one renewal at a time (the refresh token may rotate)
                token = await self.signin.token(refused=refused)
            return {"Authorization": f"Bearer {token}"} if token else {}
        return {}

    async def login(self, login: str, password: str) -> TokenResponse:
        """Exchange a password for a token (the library does this itself when configured)."""
        return await self._call(
            "POST", "/auth/token", TokenResponse, json={"login": login, "password": password}, auth=False
        )

    async def oidc_providers(self) -> OidcProviders:
        """The identity providers this server trusts for sign-in (xwlogin)."""
        return await self._call("GET", "/auth/oidc/providers", OidcProviders, auth=False)

    async def oidc_token(self, provider: str, id_token: str, nonce: str | None) -> TokenResponse:
        """Exchange a provider's ID token (single use) for an xwhep token."""
        body = OidcTokenRequest(provider=provider, id_token=id_token, nonce=nonce).model_dump(mode="json")
        return await self._call("POST", "/auth/oidc/token", TokenResponse, json=body, auth=False)

    def use_host(self, host_uid: str, credential: str) -> None:
        """Speak as host ``host_uid`` on its routes (``/hosts/<uid>/...``) from now on."""
        self._host_credentials[host_uid] = credential

    def host_credential(self, host_uid: str) -> str | None:
        return self._host_credentials.get(host_uid)

    def _host_of(self, path: str) -> str | None:
        """The host whose own credential a worker-protocol path needs, if we hold it."""
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "hosts" and parts[3] in HOST_PROTOCOL:
            return parts[2] if parts[2] in self._host_credentials else None
        return None

    async def open(self, req: ApiRequest, *, auth: bool = True) -> ApiResponse:
        """Send a request and return the open response, raising the server's problem as an XWError."""
        host = self._host_of(req.path) if auth else None
        if host is not None:
            auth = False  # a host speaks with its own credential, never with its account's
            req.headers["Authorization"] = f"Bearer {self._host_credentials[host]}"
        refused: str | None = None  # the cached sign-in's token the server just refused
        for attempt in (1, 2):
            sent: str | None = None
            if auth:
                headers = await self._auth_headers(refused)
                sent = headers.get("Authorization")
                req.headers.update(headers)
            resp = await self.transport.handle(req)
            try:
                await resp.raise_for_problem()
            except Unauthorized as err:
                # expired, or ended by a password/rights change: a configured password may still be good
                expired = "log in again" in err.reason and self._token is not None
                again = attempt == 1 and not isinstance(req.content, AsyncIterator)
                if again and expired:
                    self._token = None  # a long session outlived its token: log in once more
                    continue
                if auth and self._uses_signin:
                    if sent is None:
                        raise not_signed_in(self.signin.server) from None
                    if again:  # renew the cached sign-in at its provider once, and retry
                        refused = sent.removeprefix("Bearer ")
                        continue
                raise
            return resp
        raise AssertionError("unreachable")

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
    ) -> M:
        resp = await self.open(ApiRequest(method, path, params=params or {}, json=json), auth=auth)
        try:
            return model.model_validate(await resp.json())
        finally:
            await resp.aclose()

    async def _send(self, method: str, path: str) -> None:
        """A call whose answer has no body (DELETE)."""
        resp = await self.open(ApiRequest(method, path))
        await resp.aclose()

    async def _page(self, path: str, model: type[M], params: dict[str, str]) -> Page[M]:
        return await self._call("GET", path, Page[model], params=params)  # type: ignore[valid-type]

    async def iterate(
        self, path: str, model: type[M], params: dict[str, str] | None = None, page_size: int = 500
    ) -> AsyncIterator[M]:
        """Every item of a list, page after page."""
        offset = 0
        while True:
            page = await self._page(
                path, model, {**(params or {}), "offset": str(offset), "limit": str(page_size)}
            )
            for item in page.items:
                yield item
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    async def all(self, path: str, model: type[M], params: dict[str, str] | None = None) -> list[M]:
        return [item async for item in self.iterate(path, model, params)]

    # --- misc -------------------------------------------------------------------------------------

    async def version(self) -> Version:
        return await self._call("GET", "/version", Version, auth=False)

    async def ping(self) -> Ping:
        return await self._call("GET", "/ping", Ping)

    async def sign_csr(self, csr_pem: str) -> CertResponse:
        return await self._call("POST", "/auth/csr", CertResponse, json={"csr": csr_pem})

    async def resolve(self, kind: str, ref: str) -> str:
        """A uid from a uid, an xw:// URI, or a name unique among the objects we can see."""
        uri = parse_uri(ref)
        if uri is not None:
            return uri.uid
        if is_uid(ref.lower()):
            return ref.lower()
        key = {"app": "name", "data": "name", "user": "login", "work": "label"}.get(kind)
        if key is None:
            if kind == "usergroup":
                groups = [g for g in await self.all("/usergroups", UserGroupOut) if g.label == ref]
                return _one(kind, ref, [g.uid for g in groups])
            raise NotFound(f"{ref!r} is neither a uid nor an xw:// URI")
        model: Any = {"app": AppOut, "data": DataOut, "user": UserOut, "work": JobOut}[kind]
        page = await self._page(KIND_PATHS[kind], model, {key: ref, "limit": "2"})
        return _one(kind, ref, [str(item.uid) for item in page.items])

    async def find(self, ref: str) -> ObjectRef:
        """What kind of object a uid or URI names."""
        uri = parse_uri(ref)
        uid = uri.uid if uri else ref.lower()
        if not is_uid(uid):
            raise ValidationFailed(f"{ref!r} is not a uid or xw:// URI")
        return await self._call("GET", f"/objects/{uid}", ObjectRef)

    async def chmod(self, uid: str, mode: str) -> ObjectRef:
        return await self._call("POST", f"/objects/{uid}/chmod", ObjectRef, json={"mode": mode})

    async def remove(self, uid: str) -> None:
        await self._send("DELETE", f"/objects/{uid}")

    async def events(self, *, object_uid: str | None = None, after: int | None = None) -> list[EventOut]:
        params = {k: v for k, v in (("object", object_uid), ("after", str(after) if after else None)) if v}
        return await self.all("/events", EventOut, params)

    # --- users and groups -------------------------------------------------------------------------

    async def users(self, **filters: str) -> list[UserOut]:
        return await self.all("/users", UserOut, filters)

    async def identities(self, user: str | None = None) -> list[IdentityOut]:
        """Identities linked to users (administrators: anyone's; others: their own)."""
        params = {"user": user} if user else {}
        return (await self._call("GET", "/identities", Identities, params=params)).identities

    async def link_identity(self, link: IdentityIn) -> IdentityOut:
        return await self._call("POST", "/identities", IdentityOut, json=link.model_dump(mode="json"))

    async def unlink_identity(self, uid: str) -> None:
        await self._send("DELETE", f"/identities/{uid}")

    async def create_user(self, user: UserIn) -> UserOut:
        return await self._call("POST", "/users", UserOut, json=user.model_dump(mode="json"))

    async def patch_user(self, uid: str, patch: UserPatch) -> UserOut:
        return await self._call(
            "PATCH", f"/users/{uid}", UserOut, json=patch.model_dump(mode="json", exclude_none=True)
        )

    async def certificates(self, **filters: str) -> list[CertificateOut]:
        """Client certificates the grid CA issued: ours (everyone's for administrators, or ``user=``)."""
        return await self.all("/certificates", CertificateOut, filters)

    async def revoke_certificate(self, serial: str, reason: str = "") -> CertificateOut:
        return await self._call(
            "POST", f"/certificates/{serial}/revoke", CertificateOut, json={"reason": reason}
        )

    async def usergroups(self) -> list[UserGroupOut]:
        return await self.all("/usergroups", UserGroupOut)

    async def create_usergroup(self, group: UserGroupIn) -> UserGroupOut:
        return await self._call("POST", "/usergroups", UserGroupOut, json=group.model_dump(mode="json"))

    # --- apps -------------------------------------------------------------------------------------

    async def apps(self, **filters: str) -> list[AppOut]:
        return await self.all("/apps", AppOut, filters)

    async def get_app(self, uid: str) -> AppOut:
        return await self._call("GET", f"/apps/{uid}", AppOut)

    async def send_app(self, app: AppIn) -> AppOut:
        return await self._call("POST", "/apps", AppOut, json=app.model_dump(mode="json", exclude_none=True))

    # --- data -------------------------------------------------------------------------------------

    async def datas(self, **filters: str) -> list[DataOut]:
        return await self.all("/data", DataOut, filters)

    async def get_data(self, uid: str) -> DataOut:
        return await self._call("GET", f"/data/{uid}", DataOut)

    async def create_data(self, data: DataIn) -> DataOut:
        return await self._call(
            "POST", "/data", DataOut, json=data.model_dump(mode="json", exclude_none=True)
        )

    async def upload(self, uid: str, path: Path, progress: Progress | None = None) -> DataOut:
        """Stream a file as a data object's content."""
        resp = await self.open(
            ApiRequest(
                "PUT",
                f"/data/{uid}/content",
                content=_file_chunks(path, progress),
                headers={"Content-Type": "application/octet-stream"},
            )
        )
        try:
            return DataOut.model_validate(await resp.json())
        finally:
            await resp.aclose()

    async def send_file(
        self, path: Path, name: str | None = None, progress: Progress | None = None, **fields: Any
    ) -> DataOut:
        """Create a data object from a file (declaring size and sha256) and upload it; undo on failure."""
        digest, size = await asyncio.to_thread(file_sha256, path)
        data = await self.create_data(DataIn(name=name or path.name, size=size, sha256=digest, **fields))
        try:
            return await self.upload(data.uid, path, progress)
        except (XWError, OSError, asyncio.CancelledError):
            await asyncio.shield(self._forget(data.uid))
            raise

    async def _forget(self, uid: str) -> None:
        try:
            await self._send("DELETE", f"/data/{uid}")
        except XWError:
            pass

    async def download_content(
        self,
        uid: str,
        dest: Path,
        progress: Progress | None = None,
        sized: Callable[[int | None], None] | None = None,
    ) -> Content:
        """Stream a data object's content to ``dest`` atomically in one request (no metadata read first):
        the sha256 to check comes with the content (``X-Content-SHA256``), the size too (``sized`` hears it
        before the first byte, for a progress bar)."""
        resp = await self.open(ApiRequest("GET", f"/data/{uid}/content"))
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            expected = resp.headers.get(SHA256_HEADER)
            if expected is None:  # not one of ours: the metadata says what to expect
                expected = (await self.get_data(uid)).sha256
            if sized:
                length = resp.headers.get("Content-Length")
                sized(int(length) if length and length.isdigit() else None)
            with tmp.open("wb") as fh:
                async for chunk in resp.iter_chunks():
                    digest.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
            if digest.hexdigest() != expected:
                raise ValidationFailed(f"downloaded content of {uid} does not match its sha256")
            os.replace(tmp, dest)
        finally:
            await resp.aclose()
            tmp.unlink(missing_ok=True)
        return Content(uid, size, digest.hexdigest())

    async def download(self, uid: str, dest: Path, progress: Progress | None = None) -> DataOut:
        """Stream a data object's content to ``dest`` atomically, checking its sha256."""
        meta = await self.get_data(uid)
        resp = await self.open(ApiRequest("GET", f"/data/{uid}/content"))
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as fh:
                async for chunk in resp.iter_chunks():
                    digest.update(chunk)
                    fh.write(chunk)
                    if progress:
                        progress(len(chunk))
            if meta.sha256 and digest.hexdigest() != meta.sha256:
                raise ValidationFailed(f"downloaded content of {uid} does not match its sha256")
            os.replace(tmp, dest)
        finally:
            await resp.aclose()
            tmp.unlink(missing_ok=True)
        return meta

    # --- jobs -------------------------------------------------------------------------------------

    async def submit(self, job: JobIn) -> JobOut:
        return await self._call("POST", "/jobs", JobOut, json=job.model_dump(mode="json", exclude_none=True))

    async def submit_many(
        self, jobs: Sequence[JobIn], chunk: int | None = None, in_flight: int | None = None
    ) -> list[str]:
        """Submit jobs in batches (``POST /jobs/batch``: one request and one transaction per ``chunk``
        jobs, at most 10,000, ``in_flight`` requests at a time; by default ``SUBMIT_CHUNK`` and
        ``SUBMIT_IN_FLIGHT``); the new jobs' uids, in the order of ``jobs``.

        Within a batch the queue keeps the order of ``jobs`` (each job is created 1 µs after the one
        before); batches in flight together are queued in the order the server stores them.

        A refused batch stores none of its jobs; the first refusal's ``index`` (and its ``jobs[i]``
        prefix) then names the job among ``jobs``, and its ``submitted`` lists the uids that the other
        batches stored (in order; no new batch is sent after a refusal, those already sent finish).
        """
        chunk = chunk or SUBMIT_CHUNK
        starts = range(0, len(jobs), chunk)
        stored: dict[int, list[str]] = {}
        refused: dict[int, XWError] = {}
        pending = iter(starts)

        async def sender() -> None:
            for start in pending:
                if refused:
                    return
                # defaults left out (the server applies the same ones): a third of the bytes to send
                body = JobsIn(jobs=list(jobs[start : start + chunk])).model_dump_json(exclude_defaults=True)
                req = ApiRequest(
                    "POST", "/jobs/batch", content=body.encode(), headers={"Content-Type": "application/json"}
                )
                try:
                    resp = await self.open(req)
                    try:
                        stored[start] = JobsOut.model_validate(await resp.json()).uids
                    finally:
                        await resp.aclose()
                except XWError as err:
                    refused[start] = err

        await asyncio.gather(*(sender() for _ in range(max(1, in_flight or SUBMIT_IN_FLIGHT))))
        uids = [uid for start in starts if start in stored for uid in stored[start]]
        if refused:
            first = min(refused)
            err = refused[first]
            _renumber(err, first)
            err.extra["submitted"] = uids
            raise err
        return uids

    async def jobs(self, **filters: str) -> list[JobOut]:
        return await self.all("/jobs", JobOut, filters)

    async def get_job(self, uid: str) -> JobOut:
        return await self._call("GET", f"/jobs/{uid}", JobOut)

    async def resolve_job(self, ref: str) -> JobOut:
        """The job a uid, an xw:// URI or a label names, in one request (a label's lookup is the job)."""
        uri = parse_uri(ref)
        if uri is not None or is_uid(ref.lower()):
            return await self.get_job(uri.uid if uri is not None else ref.lower())
        page = await self._page(KIND_PATHS["work"], JobOut, {"label": ref, "limit": "2"})
        uid = _one("work", ref, [job.uid for job in page.items])
        return next(job for job in page.items if job.uid == uid)

    async def delete_job(self, uid: str) -> None:
        """Delete a job (``remove`` does the same for any kind, finding the kind first on the server)."""
        await self._send("DELETE", f"/jobs/{uid}")

    async def hold(self, uid: str, reason: str = "") -> JobOut:
        return await self._call("POST", f"/jobs/{uid}/hold", JobOut, json={"reason": reason})

    async def release(self, uid: str) -> JobOut:
        return await self._call("POST", f"/jobs/{uid}/release", JobOut)

    # --- tunnels (docs/RELAY.md) ------------------------------------------------------------------

    async def job_tunnel(self, job_uid: str, port: int) -> TunnelTicket:
        """A relay ticket to connect to listen port ``port`` of a running job."""
        return await self._call("POST", f"/jobs/{job_uid}/tunnel", TunnelTicket, params={"port": str(port)})

    async def proxies(self, **filters: str) -> list[ProxyOut]:
        """The proxies (published client ports) we may see."""
        return await self.all("/proxies", ProxyOut, filters)

    async def create_proxy(self, port: int) -> TunnelTicket:
        """Record a published client port (xwproxy) and get the ticket that publishes it."""
        return await self._call("POST", "/proxies", TunnelTicket, json={"port": port})  # server validates

    async def proxy_ticket(self, proxy_uid: str) -> TunnelTicket:
        """A fresh ticket that publishes one of our proxies again (to reconnect, or for a grant)."""
        return await self._call("POST", f"/proxies/{proxy_uid}/ticket", TunnelTicket)

    # --- workers ----------------------------------------------------------------------------------

    async def hosts(self, **filters: str) -> list[HostOut]:
        return await self.all("/hosts", HostOut, filters)

    async def enrol(self, host: HostIn, credential: str | None = None) -> Enrolment:
        """Enrol a new host with our account, or (with its ``credential``) the same host once more.

        Either way this client speaks as that host on its routes afterwards.
        """
        body = host.model_dump(mode="json", exclude_none=True)
        if credential is None:
            enrolment = await self._call("POST", "/hosts", Enrolment, json=body)
        else:
            req = ApiRequest("POST", "/hosts", json=body, headers={"Authorization": f"Bearer {credential}"})
            resp = await self.open(req, auth=False)
            try:
                enrolment = Enrolment.model_validate(await resp.json())
            finally:
                await resp.aclose()
        secret = enrolment.credential or credential
        if secret:
            self.use_host(enrolment.host.uid, secret)
        return enrolment

    async def revoke_host(self, host_uid: str, reason: str = "") -> HostOut:
        """Revoke a host's credential (its owner or an administrator)."""
        return await self._call("POST", f"/hosts/{host_uid}/revoke", HostOut, json={"reason": reason})

    # --- host requests (xwworker request; decided by administrators) -------------------------------

    async def request_host(self, host: HostRequestIn) -> HostRequestTicket:
        """Ask for a host credential without an account: the request's uid, secret and code."""
        body = host.model_dump(mode="json")
        return await self._call("POST", "/hosts/requests", HostRequestTicket, json=body, auth=False)

    async def poll_host_request(self, uid: str, secret: str) -> HostRequestState:
        """The decision on our request; once approved, the new host's uid and credential (answered once)."""
        path = f"/hosts/requests/{uid}/poll"
        return await self._call("POST", path, HostRequestState, json={"secret": secret}, auth=False)

    async def host_requests(self, status: str = "pending") -> list[HostRequestOut]:
        """Host requests by status (pending, approved, denied, delivered, expired, all)."""
        return await self.all("/hosts/requests", HostRequestOut, {"status": status})

    async def approve_host_request(self, uid: str, code: str, owner: str | None = None) -> HostRequestOut:
        """Approve a request with the code its volunteer read out, for ``owner`` (login or uid)."""
        body = {"code": code} | ({"owner": owner} if owner else {})
        return await self._call("POST", f"/hosts/requests/{uid}/approve", HostRequestOut, json=body)

    async def deny_host_request(self, uid: str, reason: str = "") -> HostRequestOut:
        """Deny a request (or withdraw an approval whose credential was not collected yet)."""
        path = f"/hosts/requests/{uid}/deny"
        return await self._call("POST", path, HostRequestOut, json={"reason": reason})

    async def claim_work(self, host_uid: str, wait: float, max_jobs: int = 1) -> list[Assignment]:
        """Long-poll for up to ``max_jobs`` jobs (one attempt each); [] when none came within ``wait`` s."""
        params = {"wait": f"{wait:g}", "max": str(max_jobs)}
        resp = await self.open(ApiRequest("POST", f"/hosts/{host_uid}/work", params=params))
        try:
            if resp.status == 204:
                return []
            return Assignments.model_validate(await resp.json()).items
        finally:
            await resp.aclose()

    async def request_work(self, host_uid: str, wait: float) -> Assignment | None:
        """Long-poll for one job; None when the server had none within ``wait`` seconds."""
        got = await self.claim_work(host_uid, wait, 1)
        return got[0] if got else None

    async def fetch_job_file(self, host_uid: str, attempt: str, data_uid: str, dest: Path) -> None:
        """Stream one file of an attempt this host runs into ``dest`` (the caller verifies it)."""
        resp = await self.open(ApiRequest("GET", f"/hosts/{host_uid}/attempts/{attempt}/files/{data_uid}"))
        try:
            with dest.open("wb") as fh:
                async for chunk in resp.iter_chunks():
                    await asyncio.to_thread(fh.write, chunk)
        finally:
            await resp.aclose()

    async def heartbeat(self, host_uid: str, beat: Heartbeat) -> HeartbeatReply:
        return await self._call(
            "POST", f"/hosts/{host_uid}/alive", HeartbeatReply, json=beat.model_dump(mode="json")
        )

    async def report(self, host_uid: str, attempt: str, report: JobReport) -> JobOut:
        return await self._call(
            "POST",
            f"/hosts/{host_uid}/attempts/{attempt}/report",
            JobOut,
            json=report.model_dump(mode="json"),
        )

    async def host_tunnels(self, host_uid: str, attempt: str) -> TunnelTicket:
        """The relay ticket of an attempt this host runs (its job's listen ports and forwards)."""
        return await self._call("POST", f"/hosts/{host_uid}/attempts/{attempt}/tunnels", TunnelTicket)

    async def send_results(self, host_uid: str, results: list[InlineResult]) -> ResultsReply:
        """Complete several attempts with small results inline (one request, one transaction)."""
        body = ResultsIn(results=results).model_dump(mode="json")
        return await self._call("POST", f"/hosts/{host_uid}/results", ResultsReply, json=body)

    async def upload_result(self, host_uid: str, attempt: str, path: Path, return_code: int) -> JobOut:
        """Stream an attempt's results zip and complete its job."""
        digest, _ = await asyncio.to_thread(file_sha256, path)
        req = ApiRequest(
            "PUT",
            f"/hosts/{host_uid}/attempts/{attempt}/result",
            params={"return_code": str(return_code)},
            content=_file_chunks(path, None),
            headers={"Content-Type": "application/zip", "X-Content-SHA256": digest},
        )
        resp = await self.open(req)
        try:
            return JobOut.model_validate(await resp.json())
        finally:
            await resp.aclose()


_JOB_INDEX = re.compile(r"\bjobs(\[|\.)(\d+)")  # "jobs[3]: ..." (refusals), "jobs.3.args: ..." (fields)


def _renumber(err: XWError, offset: int) -> None:
    """A batch's refusal of its job ``i`` as the refusal of job ``offset + i`` of the whole submission."""
    index = err.extra.get("index")
    if not isinstance(index, int) or not offset:
        return
    err.extra["index"] = offset + index
    err.reason = _JOB_INDEX.sub(lambda m: f"jobs{m[1]}{offset + int(m[2])}", err.reason)
    err.args = (err.reason,)


def _one(kind: str, ref: str, uids: list[str]) -> str:
    if not uids:
        raise NotFound(f"no {kind} named {ref!r} visible to you")
    if len(uids) > 1:
        if kind == "work":  # a label is unique among one owner's jobs only
            raise ValidationFailed(f"several owners have a job labelled {ref!r}; use a uid")
        raise ValidationFailed(f"several {kind}s are named {ref!r}; use a uid")
    return uids[0]


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK * 4):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def _file_chunks(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while True:
            chunk = await asyncio.to_thread(fh.read, CHUNK * 4)
            if not chunk:
                return
            if progress:
                progress(len(chunk))
            yield chunk
